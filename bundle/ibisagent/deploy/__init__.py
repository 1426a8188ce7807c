"""The MONAI Deploy application and its parts: targets and rules, the study core, SDK operators, provenance.

Only `config` and `study` are imported here; `operators` and `app` need the
MONAI Deploy App SDK (holoscan), imported when the application runs.
"""

from .config import DEFAULT_RULES, DEFAULT_TARGETS, DeployConfigError, Target, load_rules, load_targets
from .study import OUTPUT_NAMES, DeployError, StudyResult, TargetResult, segment_series, write_study

__all__ = ["DEFAULT_RULES", "DEFAULT_TARGETS", "OUTPUT_NAMES", "DeployConfigError", "DeployError", "StudyResult",
           "Target", "TargetResult", "load_rules", "load_targets", "segment_series", "write_study"]
