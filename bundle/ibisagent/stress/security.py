"""Security checks on real processes and real outputs: loopback binding, remote refusal, patient data leaks."""

from __future__ import annotations

import importlib.util
import ipaddress
import socket
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from .processes import group_members, listening_addresses

__all__ = ["CANARY", "CANARY_TEXTS", "CanaryRun", "bounded_requests", "canary_run", "exposed_addresses", "leaks",
           "non_loopback_address", "reachable_from"]


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback (what another machine would connect to), if any."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not ipaddress.ip_address(address.address).is_loopback:
                return address.address
    return None


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, an IPv6 socket bound to IPv4 loopback
    return (mapped or address).is_loopback


def exposed_addresses(pgid: int) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """(every listening address of the process group, those not on loopback)."""
    found = listening_addresses(group_members(pgid))
    return found, {(ip, port) for ip, port in found if not _is_loopback(ip)}


def reachable_from(address: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to (address, port) is accepted."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as stream:
        head = stream.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def leaks(values: Iterable[str], folders: Iterable[Path], texts: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Where any of `values` appears: in a file under `folders` (DICOM objects excepted: they carry the patient by
    design) or in one of the (name, text) pairs (a log, stdout). Each finding says where and which value."""
    wanted = [value for value in values if value]
    found = []
    for folder in folders:
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            if _is_dicom(path):
                continue
            data = path.read_bytes()
            found += [f"{path.name}: {value}" for value in wanted if value.encode() in data]
    for name, text in texts:
        found += [f"{name}: {value}" for value in wanted if value in text]
    return found


# ----------------------------------------------------------------------------------------- request bounds

def bounded_requests(grpc_url: str) -> list[tuple[str, str, bool]]:
    """Requests beyond the sam models' bounds, each: (what was sent, what came back, refused as it should be);
    the last row is an ordinary request after them, which must be answered."""
    import numpy as np

    from ..serving.grpc_client import ServerError, TritonCaller

    caller = TritonCaller(grpc_url, timeout=60, retries=0)
    embedding = np.zeros((1, 256, 64, 64), np.float32)
    key = np.array([[b"k" * 1000]], dtype=np.object_)
    cases = [
        ("sam_decoder, 257 points", "sam_decoder", "at most 256 points",
         {"image_embedding": embedding, "point_coords": np.zeros((1, 257, 2), np.float32),
          "point_labels": np.ones((1, 257), np.float32)}, ["iou_predictions"]),
        ("sam_decoder, points without labels", "sam_decoder", "send point_labels",
         {"image_embedding": embedding, "point_coords": np.zeros((1, 2, 2), np.float32)}, ["iou_predictions"]),
        ("sam_decoder, a 1000-byte image_key", "sam_decoder", "at most 64", {"image_key": key,
                                                                           "image_embedding": embedding},
         ["iou_predictions"]),
        ("sam_encoder, a 1000-byte image_key", "sam_encoder", "at most 64 bytes",
         {"image": np.zeros((1, 3, 256, 256), np.float32), "image_key": key}, ["embedding_key"]),
        ("sam_encoder, 9 images (max batch 8)", "sam_encoder", "",
         {"image": np.zeros((9, 3, 256, 256), np.float32)}, ["image_embedding"]),
    ]
    rows = []
    try:
        for what, model, expected, inputs, outputs in cases:
            try:
                caller.infer(model, inputs, outputs)
                rows.append((what, "answered", False))
            except ServerError as error:
                message = str(error).split(": ", 1)[-1]
                rows.append((what, message[:140], expected in message))
        few = {"image_embedding": embedding, "point_coords": np.zeros((1, 2, 2), np.float32),
               "point_labels": np.ones((1, 2), np.float32)}
        answered = caller.infer("sam_decoder", few, ["iou_predictions"])["iou_predictions"].shape == (1, 4)
        rows.append(("then an ordinary request", "answered" if answered else "not answered", answered))
    finally:
        caller.close()
    return rows


# ----------------------------------------------------------------------------------------- patient data

CANARY = {"PatientName": "CANARY^PHILEAK^RUN", "PatientID": "CANARYID5150", "PatientBirthDate": "19020304",
          "AccessionNumber": "CANARYACC51", "OtherPatientIDs": "CANARYOTHER51", "PatientAddress": "CANARYSTREET 7"}
CANARY_TEXTS = (*CANARY.values(), "PHILEAK")  # each value, and the name's distinctive component


def _run_logged(arguments: list[str], log_file: Path) -> subprocess.CompletedProcess:
    """`ibis ...` with Python logging at DEBUG into `log_file` (every library's records, not only ours)."""
    code = ("import logging, sys; logging.basicConfig(level=logging.DEBUG, filename=sys.argv[1]); "
            "from ibisagent.cli import main; raise SystemExit(main(sys.argv[2:]))")
    return subprocess.run([sys.executable, "-c", code, str(log_file), *arguments], capture_output=True, text=True,
                          timeout=1800)


@dataclass(frozen=True)
class CanaryRun:
    commands: tuple[str, ...]  # what ran on the canary series
    files_scanned: int  # outputs other than DICOM objects, plus logs and console output
    log_records: int
    seg_keeps_patient: bool  # the SEG itself carries the patient, as it must
    leaks: tuple[str, ...]


def canary_run(series: Path, work: Path, tool: str | None = None) -> CanaryRun:
    """A real series given the canary patient, then `ibis segment-dicom`, `ibis segment FILE.dcm` and (where the
    MONAI Deploy SDK is installed) `ibis deploy` on it with logging at DEBUG; every output but the DICOM objects
    (the SEG and SR carry the patient by design), every log record and the console output are scanned."""
    import pydicom

    copy = work / "series"
    copy.mkdir(parents=True)
    for path in sorted(p for p in series.iterdir() if p.is_file()):
        dataset = pydicom.dcmread(path)
        for keyword, value in CANARY.items():
            setattr(dataset, keyword, value)
        dataset.save_as(copy / path.name)
    middle = sorted(copy.iterdir())[len(list(copy.iterdir())) // 2]
    extra = ["--tool", tool] if tool else []
    runs = {"ibis segment-dicom": ["segment-dicom", str(copy), "--slice", "1", "--label", "liver", "--query",
                                   "Segment the liver.", "--max-turns", "4", "--out", str(work / "seg_out"), *extra],
            "ibis segment": ["segment", str(middle), "--query", "Segment the liver.", "--max-turns", "4",
                             "--out", str(work / "run_out"), *extra]}
    if importlib.util.find_spec("monai.deploy") is not None:  # the MONAI Deploy app: SEG, SR and run.json
        runs["ibis deploy"] = ["deploy", "-i", str(copy), "-o", str(work / "deploy_out"), "--max-turns", "4", *extra]
    texts = []
    for name, arguments in runs.items():
        log = work / f"{name.split()[-1]}.log"
        finished = _run_logged(arguments, log)
        if finished.returncode != 0:
            raise RuntimeError(f"{name} failed on the canary series: {finished.stderr.strip()[-300:]}")
        texts += [(f"{name} stdout", finished.stdout), (f"{name} stderr", finished.stderr),
                  (f"{name} log", log.read_text())]
    outputs = [work / "seg_out", work / "run_out", *([work / "deploy_out"] if "ibis deploy" in runs else [])]
    scanned = sum(1 for folder in outputs for p in folder.rglob("*") if p.is_file() and p.suffix != ".dcm")
    records = sum(text.count("\n") for name, text in texts if name.endswith("log"))
    seg = pydicom.dcmread(work / "seg_out" / "seg.dcm")
    return CanaryRun(tuple(runs), scanned + len(texts), records, "PHILEAK" in str(seg.PatientName),
                     tuple(leaks(CANARY_TEXTS, outputs, texts)))
