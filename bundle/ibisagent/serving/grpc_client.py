"""One gRPC call to a Triton model, with a deadline, bounded retries and errors that name server and model.

The segmentation tool and the MLLM policy both talk through this, so a dead
server, an unknown model or a model that is not ready read the same way:
`Triton at HOST:PORT, model NAME: reason`. Payload bytes are counted for the
bench (tensor bytes each way; gRPC framing adds a few hundred bytes).
"""

from __future__ import annotations

import threading
import time
from typing import Mapping, Sequence

import numpy as np

from .environment import ServerError

__all__ = ["TritonCaller", "ServerError", "parse_server"]

# gRPC status codes worth another try: the server is (re)starting or overloaded.
_RETRYABLE = ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED")
_NUMPY_TO_TRITON = {np.dtype(np.float32): "FP32", np.dtype(np.object_): "BYTES", np.dtype(np.bool_): "BOOL"}


def parse_server(address: str) -> str:
    """`HOST:PORT` (gRPC) -> the same, checked; a ValueError names what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"server address {address!r}: expected HOST:PORT (the gRPC port, e.g. 127.0.0.1:8001)")
    return address


def _nbytes(array: np.ndarray) -> int:
    if array.dtype == np.object_:
        return sum(len(item) for item in array.reshape(-1))
    return int(array.nbytes)


class TritonCaller:
    """A gRPC client for one server; thread-safe, as the tritonclient stub it wraps."""

    def __init__(self, server: str, timeout: float = 30.0, retries: int = 2, backoff: float = 0.5):
        import tritonclient.grpc as grpcclient

        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be > 0 and retries >= 0")
        self.server = parse_server(server)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(self.server)
        self._lock = threading.Lock()
        self.bytes_sent = 0
        self.bytes_received = 0

    def error(self, model: str, reason: object) -> ServerError:
        text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
        return ServerError(f"Triton at {self.server}, model {model}: {text}")

    def _retrying(self, model: str, call):
        for attempt in range(self.retries + 1):
            try:
                return call()
            except self._grpc.InferenceServerException as error:
                retryable = any(code in str(error.status()) for code in _RETRYABLE)
                if not retryable or attempt == self.retries:
                    raise self.error(model, error.message() or error) from None
                time.sleep(self.backoff * 2 ** attempt)

    def model_config(self, model: str) -> dict:
        """The model's configuration; raises ServerError when the server or the model is not ready."""
        def fetch() -> dict:
            if not self.client.is_model_ready(model, client_timeout=self.timeout):
                raise self.error(model, "not ready (not loaded, or failed to load)")
            return self.client.get_model_config(model, as_json=True, client_timeout=self.timeout)["config"]

        return self._retrying(model, fetch)

    def _tensors(self, inputs: Mapping[str, np.ndarray]) -> list:
        tensors = []
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            tensor = self._grpc.InferInput(name, list(array.shape), _NUMPY_TO_TRITON[array.dtype])
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return tensors

    def _outputs(self, model: str, result, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        try:
            arrays = {name: result.as_numpy(name) for name in outputs}
        except ValueError as error:  # data shorter than its shape: what a python backend under numpy 2 sends
            raise self.error(model, f"malformed response ({error}); is the server's python backend on numpy<2? "
                                    "(`ibis serve --setup`)") from None
        missing = [name for name, array in arrays.items() if array is None]
        if missing:
            raise self.error(model, f"response lacks {', '.join(missing)}")
        return arrays

    def _count(self, inputs: Mapping[str, np.ndarray], received: Sequence[dict[str, np.ndarray]]) -> None:
        with self._lock:
            self.bytes_sent += sum(_nbytes(np.asarray(array)) for array in inputs.values())
            self.bytes_received += sum(_nbytes(array) for arrays in received for array in arrays.values())

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Run `model` once; every named output comes back or ServerError is raised (no partial results)."""
        tensors = self._tensors(inputs)
        requested = [self._grpc.InferRequestedOutput(name) for name in outputs]

        def call():
            return self.client.infer(model, tensors, outputs=requested, client_timeout=self.timeout)

        arrays = self._outputs(model, self._retrying(model, call), outputs)
        self._count(inputs, [arrays])
        return arrays

    def infer_decoupled(self, model: str, inputs: Mapping[str, np.ndarray],
                        outputs: Sequence[str]) -> list[dict[str, np.ndarray]]:
        """One request to a decoupled model (the vLLM backend's kind): all its responses, once the last came.

        A stream of its own per call, so calls from several threads do not mix.
        """
        tensors = self._tensors(inputs)
        requested = [self._grpc.InferRequestedOutput(name) for name in outputs]

        def call() -> list[dict[str, np.ndarray]]:
            client = self._grpc.InferenceServerClient(self.server)
            done, responses, errors = threading.Event(), [], []

            def on_response(result, error) -> None:
                if error is not None:
                    errors.append(error)
                    done.set()
                    return
                response = result.get_response()
                if response.outputs:
                    responses.append(result)
                final = response.parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    done.set()

            try:
                client.start_stream(callback=on_response, stream_timeout=self.timeout)
                client.async_stream_infer(model, tensors, outputs=requested, enable_empty_final_response=True)
                if not done.wait(self.timeout):
                    raise self._grpc.InferenceServerException(f"no answer within {self.timeout:g} s",
                                                              status="StatusCode.DEADLINE_EXCEEDED")
                if errors:
                    raise errors[0]
            finally:
                client.stop_stream(cancel_requests=True)
                client.close()
            return [self._outputs(model, result, outputs) for result in responses]

        received = self._retrying(model, call)
        if not received:
            raise self.error(model, "the stream ended without a response")
        self._count(inputs, received)
        return received

    def close(self) -> None:
        self.client.close()
