"""Keep patient data out of logs and warnings while pydicom and highdicom read or write.

Both libraries quote offending element values (a patient's name included) in
their warnings and log records; every reader and writer here wraps them in
`values_withheld`.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

__all__ = ["shown_value", "values_withheld"]

log = logging.getLogger(__name__)


_NUMERIC = re.compile(r"[0-9.+\-eE ]{0,128}")


def shown_value(value: object) -> str:
    """A header value for an error message: quoted when it is numbers (a UID, a count), else only its length.

    A damaged element can hold any bytes of the file, a patient's name among them.
    """
    text = str(value)
    return repr(text) if _NUMERIC.fullmatch(text) else f"(a value of {len(text)} characters, not shown)"


class _WithholdValues(logging.Filter):
    """Drops library log records that quote element values ("Invalid value for VR PN: '...'")."""

    def __init__(self, values: Sequence[str]):
        super().__init__()
        self.values = [v for v in values if len(v) >= 3]
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "value" in message.lower() or "patient" in message.lower() or any(v in message for v in self.values):
            self.dropped += 1
            return False
        return True


@contextmanager
def values_withheld(values: Sequence[str] = ()) -> Iterator[list[warnings.WarningMessage]]:
    """Record warnings and drop pydicom/highdicom log records that may quote patient data.

    pydicom and highdicom put offending values (a patient's name included) in
    their warnings and log lines; callers get the recorded warnings and decide
    what to re-emit. Filters only act on the logger that emits, so every
    pydicom/highdicom logger gets one.
    """
    guard = _WithholdValues(values)
    names = ["pydicom"] + [n for n in logging.root.manager.loggerDict if n.startswith(("pydicom.", "highdicom"))]
    loggers = [logging.getLogger(n) for n in names]
    for logger in loggers:
        logger.addFilter(guard)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        for logger in loggers:
            logger.removeFilter(guard)
        if guard.dropped:
            log.debug("%d library log record(s) withheld: they may quote patient data", guard.dropped)
