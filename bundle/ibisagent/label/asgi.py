"""MONAI Label's web app with two guards and one download, served by `monailabel start_server --uvicorn_app`.

MONAI Label answers a `params` field that is not JSON with a server error and
reads request bodies of any size; here the first is a 400 and bodies above a
bound are refused (413) before they are read. `GET /datastore/image` of a
DICOMweb datastore serves the series as one NRRD file (`IbisAgentApp.series_image`),
where MONAI Label's own answers 404 for a series kept as DICOM; every other
image is MONAI Label's answer. Runs in the MONAI Label process (ibis label-serve).
"""

from __future__ import annotations

import json
import os

from fastapi import Depends
from fastapi.responses import FileResponse, JSONResponse
from monailabel.app import app
from monailabel.config import settings
from monailabel.endpoints.datastore import download_image
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

__all__ = ["app"]

INFER_BODY_LIMIT = int(os.environ.get("IBIS_LABEL_INFER_BODY_BYTES", 16 << 20))  # points, params, a label upload
BODY_LIMIT = int(os.environ.get("IBIS_LABEL_BODY_BYTES", 2 << 30))  # image uploads to the datastore


async def _not_json(request, error: json.JSONDecodeError) -> JSONResponse:
    return JSONResponse({"detail": f"params is not valid JSON: {error.msg} at character {error.pos}"}, 400)


class BodyLimit:
    """Refuse requests whose declared body exceeds the bound for their path, or that declare none for a body."""

    def __init__(self, asgi):
        self.asgi = asgi

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT"):
            limit = INFER_BODY_LIMIT if scope["path"].startswith("/infer") else BODY_LIMIT
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            if length is None or not length.isdigit() or int(length) > limit:
                reason = "a Content-Length is required" if length is None or not length.isdigit() else \
                    f"the body is larger than {limit} bytes"
                await JSONResponse({"detail": reason}, 411 if length is None else 413)(scope, receive, send)
                return
        await self.asgi(scope, receive, send)


def _download_image(image: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    # not async: FastAPI runs it in its thread pool, so waiting for the worker (busy with another request's
    # inference) or converting the series never blocks the server's event loop
    series_image = getattr(app_instance(), "series_image", None)
    path = series_image(image) if series_image else None
    if path is None:
        return download_image(image)
    return FileResponse(path, media_type="application/octet-stream", filename=f"{image}.nrrd")


app.add_api_route(f"{settings.MONAI_LABEL_API_STR}/datastore/image", _download_image, methods=["GET"],
                  summary="Download Image (a DICOMweb series as NRRD)")
app.router.routes.insert(0, app.router.routes.pop())  # before MONAI Label's own route for the path
app.add_exception_handler(json.JSONDecodeError, _not_json)
app.add_middleware(BodyLimit)
