"""MONAI Label's web app with two guards, served by `monailabel start_server --uvicorn_app` (ibis label-serve).

MONAI Label answers a `params` field that is not JSON with a server error and
reads request bodies of any size; here the first is a 400 and bodies above a
bound are refused (413) before they are read. Runs in the MONAI Label process.
"""

from __future__ import annotations

import json
import os

from fastapi.responses import JSONResponse
from monailabel.app import app

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


app.add_exception_handler(json.JSONDecodeError, _not_json)
app.add_middleware(BodyLimit)
