"""MONAI Deploy SDK operators: the agent on the selected series, and the SEG + SR writer.

They sit after the SDK's own `DICOMDataLoaderOperator` and
`DICOMSeriesSelectorOperator` (see `app.py`) and hand the work to
`study.py`, so the operators only move data between ports.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from ..policies.base import Policy
from ..prompting import PromptSet
from ..tools.base import SegmentationTool
from .config import Target
from .study import DeployError, segment_series, write_study

__all__ = ["AgentOperator", "StudyWriterOperator"]

log = logging.getLogger(__name__)


def _describe(study_list) -> str:
    """The series the input holds (number, description, modality, size): what the rules did not match."""
    lines = []
    for study in study_list or []:
        for series in study.get_all_series():
            lines.append(f"series {getattr(series, 'SeriesNumber', '?')} "
                         f"{getattr(series, 'SeriesDescription', '') or '(no description)'!r} "
                         f"{getattr(series, 'Modality', '?')}: {len(series.get_sop_instances())} object(s)")
    return "; ".join(lines) or "no DICOM series at all"


class AgentOperator(Operator):
    """Inputs `dicom_study_list` (to name what did not match) and `study_selected_series_list`;
    output `study_result`: the agent's run for each target on the first selected series."""

    def __init__(self, fragment: Fragment, *args, targets: Sequence[Target], tool: SegmentationTool, policy: Policy,
                 prompts: PromptSet | None = None, max_turns: int = 20, rules_name: str = "the rules",
                 algorithm_parameters: Mapping[str, str] | None = None, **kwargs):
        self.targets, self.tool, self.policy, self.prompts = list(targets), tool, policy, prompts
        self.max_turns, self.rules_name = max_turns, rules_name
        self.algorithm_parameters = dict(algorithm_parameters or {})
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("dicom_study_list")
        spec.input("study_selected_series_list")
        spec.output("study_result")

    def compute(self, op_input, op_output, context):
        studies = op_input.receive("dicom_study_list")
        selected = op_input.receive("study_selected_series_list") or []
        chosen = [item.series for study in selected for item in study.selected_series]
        if not chosen:
            raise DeployError(f"no series in the input matches {self.rules_name}; the input holds: "
                              f"{_describe(studies)}")
        series = chosen[0]
        if len(chosen) > 1:
            log.info("%d series match the rules; the first (SeriesInstanceUID %s) is segmented", len(chosen),
                     series.SeriesInstanceUID)
        files = [Path(sop.get_native_sop_instance().filename) for sop in series.get_sop_instances()]
        result = segment_series(files, self.targets, self.tool, self.policy, self.prompts, self.max_turns,
                                self.algorithm_parameters)
        op_output.emit(result, "study_result")


class StudyWriterOperator(Operator):
    """Input `study_result`; writes seg.dcm, sr.dcm and run.json into the output folder, all or none."""

    def __init__(self, fragment: Fragment, *args, output_folder: Path, **kwargs):
        self.output_folder = Path(output_folder)
        self.written: list[Path] = []
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("study_result")

    def compute(self, op_input, op_output, context):
        self.written = write_study(self.output_folder, op_input.receive("study_result"))
