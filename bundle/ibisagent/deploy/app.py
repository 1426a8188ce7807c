"""The MONAI Deploy application: a DICOM study folder in, a DICOM-SEG and a DICOM SR out.

    DICOMDataLoaderOperator -> DICOMSeriesSelectorOperator (rules.json) -> AgentOperator (targets.yaml)
    -> StudyWriterOperator (seg.dcm + sr.dcm + run.json)

`ibis deploy -i INPUT -o OUTPUT` (and the MAP's entry point, `python -m
ibisagent.deploy`) builds the tool and policy, then calls `run_deploy`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..policies.base import Policy
from ..prompting import PromptSet
from ..tools.base import SegmentationTool
from .config import Target
from .study import DeployError

__all__ = ["check_folders", "run_deploy", "sdk_dicom_operators"]

log = logging.getLogger(__name__)


def sdk_dicom_operators() -> tuple[type, type]:
    """The SDK's `DICOMDataLoaderOperator` and `DICOMSeriesSelectorOperator`, without torch.

    The SDK's `monai.deploy.operators` package imports every operator it has
    on import, and some (the MONAI Bundle and segmentation inference
    operators) need MONAI core, which needs torch: the MAP's runtime has
    neither. The two operators used here need only holoscan and pydicom, so
    the package is registered without running its `__init__`, the two modules
    are imported, and the bare package is forgotten again (a later full
    import in the same process runs the real `__init__`). The same path runs
    on a host with MONAI core (where `import monai` itself imports torch).
    """
    package = "monai.deploy.operators"
    bare = package not in sys.modules
    if bare:
        spec = importlib.util.find_spec(package)
        if spec is None:
            raise ImportError("the MONAI Deploy App SDK is not installed: pip install monai-deploy-app-sdk")
        sys.modules[package] = importlib.util.module_from_spec(spec)
    try:
        loader = importlib.import_module(f"{package}.dicom_data_loader_operator")
        selector = importlib.import_module(f"{package}.dicom_series_selector_operator")
    finally:
        if bare:
            del sys.modules[package]
    return loader.DICOMDataLoaderOperator, selector.DICOMSeriesSelectorOperator


def check_folders(input_dir: str | Path, output_dir: str | Path) -> None:
    """Fail before any model loads: the input must be a folder, the output one we can write into."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise DeployError(f"input folder {input_dir} does not exist or is not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise DeployError(f"cannot write to the output folder {output_dir}: {error.strerror or error}") from None


def run_deploy(input_dir: str | Path, output_dir: str | Path, targets: Sequence[Target], rules: str,
               tool: SegmentationTool, policy: Policy, *, prompts: PromptSet | None = None, max_turns: int = 20,
               rules_name: str = "the rules", algorithm_parameters: Mapping[str, str] | None = None) -> list[Path]:
    """Run the application once on `input_dir`; returns the files written into `output_dir`.

    Errors inside an operator (no matching series, a failed run, an unwritable
    folder) end the graph and are raised here, with nothing written.
    """
    from monai.deploy.conditions import CountCondition
    from monai.deploy.core import Application

    DICOMDataLoaderOperator, DICOMSeriesSelectorOperator = sdk_dicom_operators()
    from .operators import AgentOperator, StudyWriterOperator

    class IbisDeployApp(Application):
        def compose(self):
            loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=Path(input_dir).absolute(),
                                             name="study_loader")
            selector = DICOMSeriesSelectorOperator(self, rules=rules, name="series_selector")
            agent = AgentOperator(self, targets=targets, tool=tool, policy=policy, prompts=prompts,
                                  max_turns=max_turns, rules_name=rules_name,
                                  algorithm_parameters=algorithm_parameters, name="ibisagent")
            self.writer = StudyWriterOperator(self, output_folder=Path(output_dir).absolute(), name="seg_sr_writer")
            self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
            self.add_flow(loader, agent, {("dicom_study_list", "dicom_study_list")})
            self.add_flow(selector, agent, {("study_selected_series_list", "study_selected_series_list")})
            self.add_flow(agent, self.writer, {("study_result", "study_result")})

    check_folders(input_dir, output_dir)
    app = IbisDeployApp([sys.argv[0]])  # our options are parsed already; holoscan must not read them
    app.run()
    if not app.writer.written:
        raise DeployError("the application ended without writing its outputs (see the log above)")
    return app.writer.written
