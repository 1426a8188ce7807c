"""The MONAI Label app: what `monailabel start_server --app DIR` loads (DIR/main.py imports `IbisAgentApp`).

This module runs inside the MONAI Label process, in its own environment
(`.venv-label`, pydicom<3): it imports monailabel and the standard library,
never the agent. The `ibisagent` infer task forwards each request to the
agent's worker process (`label/worker.py`, the agent's environment), turns
its refusals into HTTP answers, and stores the SEG it wrote back to the PACS
when the datastore is DICOMweb. A local studies folder is MONAI Label's own
datastore, except that image ids and label tags naming a path are refused:
MONAI Label joins them to the folder as given, so an upload could be written
anywhere the server may write.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Tuple

from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from .worker import AgentWorker, WorkerError

__all__ = ["AGENT_PYTHON_VARIABLE", "ConfinedDatastore", "IbisAgentApp", "IbisAgentInfer"]

log = logging.getLogger(__name__)

AGENT_PYTHON_VARIABLE = "IBIS_AGENT_PYTHON"  # the agent's interpreter (set by `ibis label-serve`)
TASK_NAME = "ibisagent"
# What a request may carry to the worker: the clients' fields and the task's config keys.
_FORWARDED = ("foreground", "background", "slice", "client_id", "reset_state", "prompt", "label", "policy",
              "max_turns", "agent_turns_after_user", "store_seg")
_IMAGE_ID = re.compile(r"^[\w][\w.\-]{0,254}$")


def _plain_name(what: str, name: str) -> None:
    """Refuse an id or tag that is not one plain file name (no separators, not hidden, not '..')."""
    if not isinstance(name, str) or not _IMAGE_ID.match(name):
        raise HTTPException(status_code=400, detail=f"{what} may hold letters, digits, '_', '-' and '.' (not first), "
                                                    f"at most 255: {str(name)[:100]!r}")


class ConfinedDatastore(LocalDatastore):
    """MONAI Label's local datastore whose uploads stay in the studies folder."""

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        _plain_name("image id", image_id or self._to_id(os.path.basename(image_filename))[0])
        return super().add_image(image_id, image_filename, image_info)

    def remove_image(self, image_id: str) -> None:
        _plain_name("image id", image_id)
        super().remove_image(image_id)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        _plain_name("image id", image_id)
        _plain_name("label tag", label_tag)
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        _plain_name("label id", label_id)
        _plain_name("label tag", label_tag)
        super().remove_label(label_id, label_tag)


class IbisAgentInfer(InferTask):
    """Infer task `ibisagent` (deepgrow type, so both clients' point tools offer it)."""

    def __init__(self, worker: AgentWorker, config: Dict[str, Any], labels: list, store):
        # dimension 3: Slicer then sends every point (with 2 it drops those off the current slice, which the
        # volume session would read as removed, and refuses a request without points: no prompt-only pass)
        # and replaces the whole segment with our label; OHIF replaces the whole volume (docs/monailabel.md).
        super().__init__(type=InferType.DEEPGROW, labels=labels, dimension=3,
                         description="IBISAgent: a text request segments the slice; your clicks join the agent's",
                         config=config)
        self.worker = worker
        self._store = store  # stores a SEG file to the PACS, or None without a DICOMweb datastore

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
        params = {key: request[key] for key in _FORWARDED if key in request}
        try:
            answer = self.worker.call({"op": "infer", "image": request.get("image") or "",
                                       "image_id": request.get("image_id") or "", "params": params})
        except WorkerError as error:
            raise HTTPException(status_code=503, detail=str(error)) from None
        if not answer.get("ok"):
            raise HTTPException(status_code=int(answer.get("status", 500)), detail=answer.get("error", "failed"))
        result = answer["result"]
        seg_file = result.pop("seg_file", None)
        if seg_file:
            try:
                if self._store is None:
                    raise HTTPException(status_code=422, detail="store_seg needs a DICOMweb datastore")
                self._store(seg_file)
                result["seg"]["stored"] = True
            finally:
                shutil.rmtree(Path(seg_file).parent, ignore_errors=True)
        return answer["label"], result


class IbisAgentApp(MONAILabelApp):
    """One infer task, `ibisagent`; the agent runs in its worker process."""

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]):
        self._dicomweb = studies.startswith(("http://", "https://"))
        self._cache = os.path.join(app_dir, "dicom-cache")
        root = self._cache if self._dicomweb else os.path.realpath(studies)
        python = os.environ.get(AGENT_PYTHON_VARIABLE)
        if not python:
            raise RuntimeError(f"set {AGENT_PYTHON_VARIABLE} to the agent's python (ibis label-serve does)")
        arguments = ["--root", root, "--tool", conf.get("tool", "lite-medsam")]
        for key in ("session_mb", "embedding_mb", "expiry"):
            if key in conf:
                arguments += [f"--{key.replace('_', '-')}", str(conf[key])]
        self.worker = AgentWorker(python, arguments)
        self.agent = self.worker.start()
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="ibisagent",
                         description="IBISAgent: agentic segmentation from a text request, with your clicks",
                         version=self.agent["version"], labels=self.agent["labels"])

    def init_datastore(self):
        """A local studies folder: MONAI Label's datastore, confined to it (`ConfinedDatastore`)."""
        from monailabel.config import settings

        if self._dicomweb:
            return super().init_datastore()
        return ConfinedDatastore(self.studies, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
                                 auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                 read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def init_remote_datastore(self):
        """MONAI Label's DICOMweb datastore, series kept as DICOM (our SEG references the instances)."""
        from monailabel.config import settings
        from monailabel.datastore.dicom import DICOMWebDatastore, DICOMwebClientX

        if not self._dicomweb:
            return super().init_remote_datastore()
        client = DICOMwebClientX(url=self.studies, qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                                 wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                                 stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)
        return DICOMWebDatastore(client=client, search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
                                 cache_path=self._cache, fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
                                 convert_to_nifti=False)

    def _store_seg(self, path: str) -> None:
        from monailabel.datastore.utils.dicom import dicom_web_upload_dcm

        try:
            dicom_web_upload_dcm(path, self.datastore()._client)
        except Exception as error:  # the PACS refused or is unreachable: the client is told, the mask stays
            raise HTTPException(status_code=502, detail=f"the PACS did not store the SEG: {type(error).__name__}")

    def series_image(self, image_id: str) -> str | None:
        """With a DICOMweb datastore, the series as one NRRD file (what `GET /datastore/image` serves); else None.

        The datastore keeps a series as its DICOM folder (our SEG references the
        instances), which MONAI Label's download cannot serve: Slicer's Next
        Sample got a 404. The worker converts the folder once (`label/images.py`).
        """
        if not self._dicomweb:
            return None
        if not isinstance(image_id, str) or not _IMAGE_ID.match(image_id):
            raise HTTPException(status_code=404, detail=f"unknown image {str(image_id)[:100]!r}")
        try:
            folder = self.datastore().get_image_uri(image_id)
        except Exception:  # the PACS has no such series (MONAI Label raises an IndexError)
            folder = ""
        if not folder:
            raise HTTPException(status_code=404, detail=f"unknown image {image_id!r}")
        try:
            answer = self.worker.call({"op": "series_image", "image": folder, "image_id": image_id})
        except WorkerError as error:
            raise HTTPException(status_code=503, detail=str(error)) from None
        if not answer.get("ok"):
            raise HTTPException(status_code=int(answer.get("status", 500)), detail=answer.get("error", "failed"))
        return answer["path"]

    def next_sample(self, request):
        """MONAI Label's next sample; with a DICOMweb datastore its `path` and `name` are the series' NRRD file,
        so Slicer loads (or downloads under that name) a file it can read."""
        sample = super().next_sample(request)
        if self._dicomweb and sample.get("id"):
            path = self.series_image(sample["id"])
            sample = {**sample, "path": path, "name": f"{sample['id']}.nrrd"}
        return sample

    def init_infers(self) -> Dict[str, InferTask]:
        labels = list(self.agent["labels"])
        store = self._store_seg if self._dicomweb else None
        return {TASK_NAME: IbisAgentInfer(self.worker, dict(self.agent["config"]), labels, store)}

    def infer(self, request, datastore=None):
        """Check the image id before MONAI Label resolves it: unknown ids get a 404, not a server error."""
        image = request.get("image")
        if request.get("model") == TASK_NAME:
            if not isinstance(image, str) or not _IMAGE_ID.match(image):
                raise HTTPException(status_code=404, detail=f"unknown image {str(image)[:100]!r}")
            try:
                uri = (datastore or self.datastore()).get_image_uri(image)
            except Exception:  # the PACS has no such series (MONAI Label raises an IndexError)
                uri = ""
            if not uri:
                raise HTTPException(status_code=404, detail=f"unknown image {image!r}")
            request = {**request, "image_id": image}
        return super().infer(request, datastore)
