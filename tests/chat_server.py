"""A small OpenAI-compatible chat-completions server, run as its own process by the tests.

It answers in the IBISAgent protocol from a fixed script and checks what a
real endpoint would need: a model name, messages, and every image as a
decodable base64 PNG data URL. Requests are logged (without image bytes) to
a JSON-lines file so the test can see what the client sent.

    python chat_server.py PORT LOG_FILE
"""

import base64
import io
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

SCRIPT = [
    "<think>The liver is the large organ on the left of the image.</think><action>Positive Point (0.2304, 0.4550)</action>",
    "<think>Good enough.</think><action>Terminate</action><answer>liver</answer>",
]


class Handler(BaseHTTPRequestHandler):
    turn = 0

    def log_message(self, *args):
        pass

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            return self._reply(404, {"error": {"message": f"no route {self.path}"}})
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        sizes = []
        for message in request.get("messages", []):
            for part in message["content"] if isinstance(message["content"], list) else []:
                if part["type"] == "image_url":
                    header, payload = part["image_url"]["url"].split(",", 1)
                    assert header == "data:image/png;base64"
                    sizes.append(Image.open(io.BytesIO(base64.b64decode(payload))).size)
        with open(sys.argv[2], "a") as log:
            log.write(json.dumps({"model": request.get("model"), "roles": [m["role"] for m in request["messages"]],
                                  "image_sizes": sizes}) + "\n")
        text = SCRIPT[min(Handler.turn, len(SCRIPT) - 1)]
        Handler.turn += 1
        self._reply(200, {
            "id": f"chatcmpl-{Handler.turn}", "object": "chat.completion", "created": 0, "model": request.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
