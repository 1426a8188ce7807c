"""A small MONAI Label REST client (standard library only) that sends what Slicer and OHIF send.

The tests and `ibis stress`'s load on a MONAI Label server use it; it is not
a client for people (they have Slicer and OHIF).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid

__all__ = ["Answer", "get", "infer", "put_image", "put_label"]


class Answer:
    def __init__(self, status: int, content_type: str, body: bytes):
        self.status, self.content_type, self.body = status, content_type, body

    def json(self):
        return json.loads(self.body)

    def parts(self) -> dict[str, bytes]:
        """A multipart answer (output=all) by part name: `params` (JSON) and `image` (the label file)."""
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {self.content_type}\r\n\r\n".encode() + self.body)
        parts = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            parts[name] = part.get_payload(decode=True)
        return parts


def _send(request: urllib.request.Request, timeout: float) -> Answer:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, response.headers.get("content-type", ""), response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers.get("content-type", ""), error.read())


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks = []
    for name, value in fields.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                      f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def infer(url: str, image: str, params: dict | str, output: str = "all", model: str = "ibisagent",
          timeout: float = 600) -> Answer:
    query = urllib.parse.urlencode({"image": image, "output": output})
    text = params if isinstance(params, str) else json.dumps(params)
    body, content_type = _multipart({"params": text}, {})
    request = urllib.request.Request(f"{url}/infer/{model}?{query}", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    return _send(request, timeout)


def get(url: str, path: str, timeout: float = 60) -> Answer:
    return _send(urllib.request.Request(f"{url}{path}"), timeout)


def next_sample(url: str, strategy: str = "random", timeout: float = 300) -> Answer:
    """Slicer's *Next Sample*: the active-learning strategy's pick (`id`, `path`, `name`)."""
    request = urllib.request.Request(f"{url}/activelearning/{urllib.parse.quote(strategy)}", data=b"{}",
                                     method="POST", headers={"Content-Type": "application/json"})
    return _send(request, timeout)


def put_label(url: str, image: str, label: bytes, filename: str, tag: str = "final", timeout: float = 60) -> Answer:
    query = urllib.parse.urlencode({"image": image, "tag": tag})
    body, content_type = _multipart({"params": "{}"}, {"label": (filename, label)})
    request = urllib.request.Request(f"{url}/datastore/label?{query}", data=body, method="PUT",
                                     headers={"Content-Type": content_type})
    return _send(request, timeout)


def put_image(url: str, image: str, data: bytes, filename: str, timeout: float = 60) -> Answer:
    """Upload an image to MONAI Label's datastore (`image` empty: the id comes from the file name)."""
    query = f"?{urllib.parse.urlencode({'image': image})}" if image else ""
    body, content_type = _multipart({"params": "{}"}, {"file": (filename, data)})
    request = urllib.request.Request(f"{url}/datastore/{query}", data=body, method="PUT",
                                     headers={"Content-Type": content_type})
    return _send(request, timeout)
