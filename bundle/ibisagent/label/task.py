"""The `ibisagent` infer task: the agent's text-driven pass and the person's clicks in one session.

A request carries what MONAI Label clients send (`foreground`, `background`
as voxel points, resent in full on every click; `slice`, `client_id`,
`reset_state`) and the task's config (`prompt`, `label`, `policy`,
`max_turns`, `agent_turns_after_user`, `store_seg`). On a slice it has not
seen, the task encodes the slice once and, given a prompt, lets the agent
segment it. Points the session does not hold yet are the person's new
clicks: each joins the session's clicks (origin recorded) and the tool
updates the mask from all clicks and its previous logits; then the agent may
continue for `agent_turns_after_user` turns. Points the client no longer
sends were removed by the person: the slice is replayed without them. No
click re-encodes the image. A NIfTI or npz volume, or a DICOM series that
forms a volume, goes through the volume room's `VolumeSession` instead
(`label/volumes.py`): the agent's key slice is propagated through the volume,
the person's points correct any slice, and the SEG covers the whole series.

Every input problem is a `LabelRequestError` with an HTTP status and a
message that names the field; the MONAI Label process turns it into the
HTTP answer.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..agent import Agent, StartState
from ..labels import LabelChoice, choose_label
from ..policies.base import Policy
from ..prompting import PromptSet, load_prompts
from ..protocol import Action
from ..tools.base import Click, ImageEmbedding, SegmentationTool
from .images import LabelImage, LabelImageError, open_label_image
from .sessions import BoundedCache, LabelSession, SessionKey, SliceState

__all__ = ["AgentLabelTask", "LabelRequestError", "TaskLimits", "TASK_CONFIG"]

# The task's config: each becomes a control in Slicer and OHIF (bool: checkbox, list: dropdown, else text).
TASK_CONFIG: dict[str, Any] = {
    "prompt": "",
    "label": "",
    "policy": ["lite", "lite-one-click", "lite-no-confidence-stop"],
    "max_turns": 10,
    "agent_turns_after_user": 0,
    "store_seg": False,
}
_LABEL_PATTERN = re.compile(r"^[\w][\w \-.,()/]*$")
SERIES_IMAGES_KEPT = 8  # series NRRDs for download kept on disk (each about the size of its series)


class LabelRequestError(ValueError):
    """A request the task refuses: `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TaskLimits:
    """Bounds on what one request may ask for (a client cannot make the server do unbounded work)."""

    max_points: int = 200
    max_prompt_chars: int = 1000
    max_turns: int = 30
    max_id_chars: int = 128


@dataclass
class _Request:
    prompt: str | None
    label: str
    label_choice: LabelChoice
    policy: str
    max_turns: int
    turns_after_user: int
    client_id: str
    slice: int | None
    reset: bool
    store_seg: bool
    foreground: list
    background: list


def _integer(params: dict, name: str, default: int, low: int, high: int) -> int:
    value = params.get(name, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)  # text-box controls send strings
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LabelRequestError(f"{name} must be an integer in {low}..{high}, got {value!r}"[:200])
    return value


def _boolean(params: dict, name: str) -> bool:
    value = params.get(name, False)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", ""):
        return value.lower() in ("true", "1")
    if not isinstance(value, bool):
        raise LabelRequestError(f"{name} must be true or false, got {value!r}"[:200])
    return value


def _text(params: dict, name: str, limit: int) -> str:
    value = params.get(name) or ""
    if not isinstance(value, str):
        raise LabelRequestError(f"{name} must be text, got {type(value).__name__}")
    if len(value) > limit:
        raise LabelRequestError(f"{name} is longer than {limit} characters", 413)
    return value.strip()


class AgentLabelTask:
    """The task's logic, independent of the MONAI Label process (which reaches it through `worker`)."""

    def __init__(self, tool: SegmentationTool, build_policy: Callable[[str], Policy], policies: list[str],
                 roots: list[str | Path], *, prompts: PromptSet | None = None, limits: TaskLimits = TaskLimits(),
                 session_bytes: int = 512 << 20, embedding_bytes: int = 1 << 30, expiry_seconds: float = 3600.0,
                 query_encoder: Callable[[], Callable[[list[str]], np.ndarray]] | None = None):
        """`roots`: the folders images may come from (the datastore's); any other path is an unknown image.

        `query_encoder` gives the text encoder `labels.choose_label` falls back on
        when a prompt names no known target (without it only named targets count).
        """
        if not roots:
            raise ValueError("name the folders images may come from")
        self.roots = [Path(root).resolve() for root in roots]
        self.tool = tool
        self.policy_names = list(policies)
        self._build_policy = build_policy
        self._policies: dict[str, Policy] = {}
        self.prompts = prompts or load_prompts()
        self.limits = limits
        self.query_encoder = query_encoder
        self.sessions: BoundedCache[SessionKey, LabelSession] = BoundedCache(session_bytes, expiry_seconds)
        self.embeddings: BoundedCache[tuple, ImageEmbedding] = BoundedCache(embedding_bytes, expiry_seconds)
        self.images: BoundedCache[tuple, LabelImage] = BoundedCache(embedding_bytes, expiry_seconds)
        self.volumes: BoundedCache[tuple, Any] = BoundedCache(embedding_bytes, expiry_seconds)  # SliceEncoders

    # ------------------------------------------------------------------ request reading

    def _read(self, params: dict) -> _Request:
        if not isinstance(params, dict):
            raise LabelRequestError("params must be a JSON object")
        limits = self.limits
        prompt = _text(params, "prompt", limits.max_prompt_chars) or None
        given = _text(params, "label", 64)
        if given and not _LABEL_PATTERN.match(given):
            raise LabelRequestError("label may hold letters, digits, spaces and - . , ( ) / only")
        # No label given: the one the prompt asks for names the session and codes the SEG's segment.
        choice = (choose_label(given, prompt, self.query_encoder) if given or prompt
                  else LabelChoice(None, "no match", note="neither a label nor a prompt was given"))
        label = choice.segment_label
        policy = params.get("policy") or self.policy_names[0]
        if isinstance(policy, list):  # a client that echoes the dropdown's choices
            policy = policy[0] if policy else self.policy_names[0]
        if policy not in self.policy_names:
            raise LabelRequestError(f"unknown policy {policy!r}; choose one of {', '.join(self.policy_names)}"[:300])
        client_id = _text(params, "client_id", limits.max_id_chars) or "anonymous"
        points = {}
        for name in ("foreground", "background"):
            value = params.get(name) or []
            if not isinstance(value, list):
                raise LabelRequestError(f"{name} must be a list of points [x, y(, z)]")
            points[name] = value
        if len(points["foreground"]) + len(points["background"]) > limits.max_points:
            raise LabelRequestError(f"at most {limits.max_points} points per request", 413)
        slice_index = params.get("slice")
        if slice_index is not None:
            slice_index = _integer(params, "slice", 0, 0, 1 << 20)
        return _Request(prompt, label, choice, str(policy), _integer(params, "max_turns", 10, 1, limits.max_turns),
                        _integer(params, "agent_turns_after_user", 0, 0, limits.max_turns), client_id, slice_index,
                        _boolean(params, "reset_state"), _boolean(params, "store_seg"), points["foreground"],
                        points["background"])

    def _image(self, path: Path) -> LabelImage:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        image = self.images.get(key)
        if image is None:
            try:
                image = open_label_image(path)
            except LabelImageError as error:
                raise LabelRequestError(str(error), 422) from None
            self.images.put(key, image, 1 << 20)
        return image

    def _policy(self, name: str) -> Policy:
        if name not in self._policies:
            self._policies[name] = self._build_policy(name)
        return self._policies[name]

    # ------------------------------------------------------------------ downloads

    def series_image(self, image_path: str | Path, image_id: str, out_root: Path) -> Path:
        """The NRRD image of a DICOM series folder of the datastore (made once per folder state; the most recent
        `SERIES_IMAGES_KEPT` are kept on disk)."""
        import hashlib

        from .images import write_series_image_nrrd

        path = Path(image_path).resolve() if str(image_path) else None
        if path is None or not path.is_dir() or not any(path.is_relative_to(root) for root in self.roots) \
                or not any(path.iterdir()):
            raise LabelRequestError(f"unknown series {image_id!r}"[:200], 404)
        state = sorted((item.name, item.stat().st_size, item.stat().st_mtime_ns) for item in path.iterdir())
        key = hashlib.sha256(repr((str(path), state)).encode()).hexdigest()[:24]
        out_dir = out_root / "series-images"
        out_dir.mkdir(exist_ok=True)
        out_path = out_dir / f"{key}.nrrd"
        if not out_path.is_file():
            try:
                write_series_image_nrrd(path, out_path)
            except ValueError as error:  # DicomSeriesError, LabelImageError: the series cannot be one image
                raise LabelRequestError(str(error)[:300], 422) from None
            kept = sorted(out_dir.glob("*.nrrd"), key=lambda item: item.stat().st_mtime_ns, reverse=True)
            for old in kept[SERIES_IMAGES_KEPT:]:  # a download still reading one keeps its open file
                old.unlink(missing_ok=True)
        return out_path

    # ------------------------------------------------------------------ one request

    def infer(self, image_path: str | Path, image_id: str, params: dict, out_dir: str | Path) -> tuple[Path, dict]:
        """Run the request; write the label file into `out_dir`; return its path and the result JSON."""
        started = time.perf_counter()
        request = self._read(params)
        path = Path(image_path).resolve() if str(image_path) else None
        if path is None or not path.exists() or not any(path.is_relative_to(root) for root in self.roots):
            raise LabelRequestError(f"unknown image {image_id!r}"[:200], 404)
        volume_note = None
        if path.is_dir() or path.name.lower().endswith((".nii", ".nii.gz", ".npz")):
            from .volumes import is_volume_file

            if path.is_dir() or is_volume_file(path):
                encoder_key, encoder = self._volume_encoder(path)
                if not isinstance(encoder, str):
                    return self._infer_volume(path, image_id, request, Path(out_dir), started, encoder_key, encoder)
                volume_note = f"served slice by slice, not as a volume: {encoder}"[:300]
        image = self._image(path)
        by_slice = self._points_by_slice(image, request)
        target = self._target_slice(image, request, by_slice)

        key = SessionKey(request.client_id, image_id, request.label)
        session = None if request.reset else self.sessions.get(key)
        session = session or LabelSession(key)
        session.requests += 1
        encoded = False
        encode_seconds = 0.0
        status = None
        for index in sorted(set(by_slice) | {target}):
            view = image.view(index)
            embedding, fresh, seconds = self._embedding(image, path, index)
            encoded, encode_seconds = encoded or fresh, encode_seconds + seconds
            state = session.slices.get(index)
            if state is None:
                state = SliceState(np.zeros(view.rgb.shape[:2], bool))
                session.slices[index] = state
                if request.prompt and index == target:
                    status = self._agent_turns(session, state, index, view.rgb, embedding, request, request.max_turns)
            self._person_clicks(session, state, index, embedding, by_slice.get(index, []))
            if by_slice.get(index) and request.prompt and request.turns_after_user and index == target:
                status = self._agent_turns(session, state, index, view.rgb, embedding, request,
                                           request.turns_after_user)
        self.sessions.put(key, session, session.nbytes)

        out_dir = Path(out_dir)
        label_path = image.write_label({i: s.mask for i, s in session.slices.items()},
                                       out_dir / f"label{image.label_suffix}")
        state = session.slices[target]
        result = self._result(session, image, target, state, request, encoded, encode_seconds, status)
        if volume_note:
            result["volume_note"] = volume_note
        if request.store_seg:
            result["seg_file"] = str(self._write_seg(image, target, state, request, result, out_dir))
        result["latency_ms"] = round(1000 * (time.perf_counter() - started), 2)
        return label_path, result

    # ------------------------------------------------------------------ 3D (label/volumes.py)

    def _volume_encoder(self, path: Path) -> tuple[tuple, Any]:
        """The volume's `SliceEncoder`, shared by every client: each slice is encoded once.

        For a DICOM folder that is no volume (one slice, no geometry, a gap
        between slices) the reason, as text: such a series is served slice
        by slice. A volume file that cannot be read is a 422.
        """
        from ..volume.slices import SliceEncoder
        from .volumes import open_volume

        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size, self.tool.encoder_key)
        encoder = self.volumes.get(key)
        if encoder is None:
            try:
                encoder = SliceEncoder(self.tool, open_volume(path))
            except ValueError as error:
                if not path.is_dir():
                    raise LabelRequestError(str(error), 422) from None
                encoder = str(error)
                self.volumes.put(key, encoder, 1 << 10)
        return key, encoder

    def _infer_volume(self, path: Path, image_id: str, request: _Request, out_dir: Path, started: float,
                      encoder_key: tuple, encoder) -> tuple[Path, dict]:
        from ..volume.key_slice import choose_key_slice
        from ..volume.readers import DicomSource
        from ..volume.session import SEED_AUTHOR, VolumeSession
        from .volumes import PERSON, VolumeLabelSession, VolumePoints, encoder_bytes, write_volume_label

        volume = encoder.volume
        if request.store_seg and not isinstance(volume.source, DicomSource):
            raise LabelRequestError("store_seg needs a DICOM series; this image is a volume file, with no instances "
                                    "to reference", 422)
        if request.slice is not None and not 0 <= request.slice < volume.slice_count:
            raise LabelRequestError(f"slice {request.slice} is outside the volume (0..{volume.slice_count - 1})")
        grid = VolumePoints(volume)
        voxels = []
        for name, positive in (("foreground", True), ("background", False)):
            for point in getattr(request, name):
                try:
                    voxels.append(((positive, *[int(round(v)) for v in point]), grid.to_voxel(point), positive))
                except ValueError as error:
                    raise LabelRequestError(f"{name}: {error}") from None

        key = SessionKey(request.client_id, image_id, request.label)
        held = None if request.reset else self.sessions.get(key)
        held = held if isinstance(held, VolumeLabelSession) else None
        if held is None and not request.prompt and not voxels:
            raise LabelRequestError("nothing to do: give a prompt (the text request) or points")
        encoded_before, seconds_before = len(encoder.encoded), encoder.encode_seconds
        fresh = held is None
        if fresh:
            held = VolumeLabelSession(key, VolumeSession(self.tool, volume, encoder=encoder), request.prompt,
                                      request.policy, request.max_turns)
        before = held.session.mask()
        status, key_choice = None, None

        def agent_pass() -> str | None:
            nonlocal key_choice
            if not held.prompt:
                return None
            policy = self._policy(held.policy)
            if held.key_slice is None:
                if request.slice is not None:
                    held.key_slice = request.slice
                else:
                    key_choice = choose_key_slice(encoder, policy, held.prompt, self.prompts)
                    held.key_slice = key_choice.index
            outcome = held.agent_pass(policy, self.prompts, held.key_slice)
            if not outcome.completed:
                raise LabelRequestError(f"the agent's run on slice {held.key_slice} ended with {outcome.value}", 500)
            return outcome.value

        def rebuild() -> None:
            held.session = VolumeSession(self.tool, volume, encoder=encoder)
            agent_pass()

        held.requests += 1
        if fresh:
            status = agent_pass()
        sent = [(point, index, held.session.click_at(index, row, column, positive))
                for point, (index, row, column), positive in voxels]
        after = self._policy(held.policy) if held.prompt else None  # also replays earlier groups' turns
        clicked = held.person_points(sent, rebuild, agent_turns=request.turns_after_user, policy=after,
                                     prompts=self.prompts)
        mask = held.session.mask()
        self.sessions.put(key, held, held.nbytes)
        self.volumes.put(encoder_key, encoder, encoder_bytes(encoder))

        label_path = write_volume_label(volume, mask, out_dir)
        changed = [int(i) for i in np.nonzero((mask != before).any(axis=(1, 2)))[0]]
        clicks = [{"slice": index, "x": round(c.click.x, 4), "y": round(c.click.y, 4), "positive": c.click.positive,
                   "author": c.author, "origin": c.author if c.author in (PERSON, SEED_AUTHOR) else "agent"}
                  for index in held.session.reached for c in held.session.states[index].clicks]
        result = {
            "ibisagent": __version__, "model": "ibisagent", "label_names": {request.label: 1},
            "label_choice": request.label_choice.to_dict(), "dimension": 3, "image_kind": "volume",
            "volume_source": type(volume.source).__name__.removesuffix("Source").lower(),
            "session": {**asdict(key), "requests": held.requests, "slices": held.session.reached},
            "key_slice": held.key_slice, "key_slice_choice": key_choice.record() if key_choice else None,
            "encoded": len(encoder.encoded) > encoded_before, "encoded_slices": encoder.encoded[encoded_before:],
            "encode_seconds": round(encoder.encode_seconds - seconds_before, 4),
            "clicked_slices": clicked, "changed_slices": changed, "agent_status": status,
            "algorithm_type": "SEMIAUTOMATIC" if held.person_clicked else "AUTOMATIC",
            "mask_voxels": int(mask.sum()), "clicks": clicks,
            "agent_turns_after_user": request.turns_after_user,
            "trajectory": held.events, "volume_session": held.session.trajectory(),
        }
        if request.store_seg:
            result["seg_file"] = str(self._write_volume_seg(volume, mask, held.person_clicked, request, result,
                                                            out_dir))
        result["latency_ms"] = round(1000 * (time.perf_counter() - started), 2)
        return label_path, result

    def _points_by_slice(self, image: LabelImage, request: _Request) -> dict[int, list[tuple[tuple, Click]]]:
        by_slice: dict[int, list] = {}
        for name, positive in (("foreground", True), ("background", False)):
            for point in getattr(request, name):
                try:
                    index, click = image.point_to_click(point, positive)
                except LabelImageError as error:
                    raise LabelRequestError(f"{name}: {error}") from None
                by_slice.setdefault(index, []).append(((positive, *[int(round(v)) for v in point]), click))
        return by_slice

    def _target_slice(self, image: LabelImage, request: _Request, by_slice: dict) -> int:
        """The slice this request is about: the client's `slice`, else the points', else the only one."""
        if request.slice is not None:
            if not 0 <= request.slice < image.slice_count:
                raise LabelRequestError(f"slice {request.slice} is outside the image (0..{image.slice_count - 1})")
            return request.slice
        if by_slice:
            return max(by_slice, key=lambda i: len(by_slice[i]))
        if not request.prompt:
            raise LabelRequestError("nothing to do: give a prompt (the text request) or points")
        if image.slice_count == 1:
            return 0
        raise LabelRequestError(f"the image has {image.slice_count} slices: say which with `slice`, or click on one")

    def _embedding(self, image: LabelImage, path: Path, index: int) -> tuple[ImageEmbedding, bool, float]:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, index, self.tool.encoder_key)
        embedding = self.embeddings.get(key)
        if embedding is not None:
            return embedding, False, 0.0
        started = time.perf_counter()
        embedding = self.tool.encode(image.view(index).rgb)
        seconds = time.perf_counter() - started
        self.embeddings.put(key, embedding, int(np.asarray(embedding.features).nbytes) + (1 << 16))
        return embedding, True, seconds

    def _agent_turns(self, session: LabelSession, state: SliceState, index: int, rgb: np.ndarray,
                     embedding: ImageEmbedding, request: _Request, turns: int) -> str:
        """The agent continues from the slice's state for up to `turns` turns; its clicks join the session."""
        agent = Agent(self.tool, self._policy(request.policy), self.prompts, max_turns=turns)
        start = None if not state.clicks else StartState(tuple(state.clicks), state.mask, state.low_res,
                                                         tuple(state.predicted_ious), state.steps)
        result = agent.run(rgb, request.prompt, embedding=embedding, start=start)
        if not result.status.completed:
            raise LabelRequestError(f"the agent's run ended with {result.status.value}: {result.error}"[:300], 500)
        new_clicks = result.clicks[len(state.clicks):]
        state.clicks, state.mask, state.low_res = list(result.clicks), result.mask, result.low_res_logits
        state.origins += ["agent"] * len(new_clicks)
        for turn in result.turns:
            if turn.predicted_iou is not None:
                state.predicted_ious.append(turn.predicted_iou)
            session.events.append({"by": "agent", "slice": index, "turn": turn.index, "action": turn.action,
                                   "think": turn.think, "predicted_iou": turn.predicted_iou,
                                   "mask_area": turn.mask_area, "issues": turn.issues,
                                   "policy": request.policy, "prompt": request.prompt})
        state.steps += len(result.turns)
        return result.status.value

    def _person_clicks(self, session: LabelSession, state: SliceState, index: int, embedding: ImageEmbedding,
                       points: list[tuple[tuple, Click]]) -> None:
        """Join the person's new points; replay the slice when the person removed some."""
        sent = Counter(point for point, _ in points)
        held = Counter(state.person_points)
        if held - sent:  # the client no longer sends some points: the person removed them
            self._replay(session, state, index, embedding, held - sent)
            held = Counter(state.person_points)
        remaining = held.copy()
        for point, click in points:
            if remaining[point] > 0:
                remaining[point] -= 1
                continue
            state.clicks.append(click)
            state.origins.append("person")
            state.person_points.append(point)
            output = self.tool.predict(embedding, state.clicks, state.low_res)
            state.mask, state.low_res = output.mask, output.low_res_logits
            state.predicted_ious.append(round(output.iou, 4))
            state.steps += 1
            action = (Action.positive if click.positive else Action.negative)(click.x, click.y)
            session.events.append({"by": "person", "slice": index, "turn": state.steps - 1, "action": action.to_text(),
                                   "point": list(point[1:]), "predicted_iou": round(output.iou, 4),
                                   "mask_area": int(output.mask.sum())})

    def _replay(self, session: LabelSession, state: SliceState, index: int, embedding: ImageEmbedding,
                removed: Counter) -> None:
        """Rebuild the slice's mask from its clicks without the removed ones, in their order (no encoding)."""
        removed = removed.copy()
        kept: list[tuple[Click, str, tuple | None]] = []
        people = iter(state.person_points)
        for click, origin in zip(state.clicks, state.origins, strict=True):
            point = next(people) if origin == "person" else None
            if point is not None and removed[point] > 0:
                removed[point] -= 1
                continue
            kept.append((click, origin, point))
        state.clicks, state.origins = [c for c, _, _ in kept], [o for _, o, _ in kept]
        state.person_points = [p for _, o, p in kept if o == "person"]
        state.mask, state.low_res, state.predicted_ious = np.zeros_like(state.mask), None, []
        for count in range(1, len(state.clicks) + 1):
            output = self.tool.predict(embedding, state.clicks[:count], state.low_res)
            state.mask, state.low_res = output.mask, output.low_res_logits
            state.predicted_ious.append(round(output.iou, 4))
        session.events.append({"by": "person", "slice": index, "action": "remove points",
                               "kept_clicks": len(state.clicks), "mask_area": int(state.mask.sum())})

    # ------------------------------------------------------------------ outputs

    def _result(self, session: LabelSession, image: LabelImage, target: int, state: SliceState, request: _Request,
                encoded: bool, encode_seconds: float, status: str | None) -> dict:
        clicks = [{"point": image.click_to_point(target, click), "x": round(click.x, 4), "y": round(click.y, 4),
                   "positive": click.positive, "origin": origin}
                  for click, origin in zip(state.clicks, state.origins, strict=True)]
        return {
            "ibisagent": __version__, "model": "ibisagent", "label_names": {request.label: 1},
            "label_choice": request.label_choice.to_dict(),
            "session": {**asdict(session.key), "requests": session.requests,
                        "slices": sorted(session.slices)},
            "encoded": encoded, "encode_seconds": round(encode_seconds, 4), "slice": target,
            "image_kind": image.kind, "agent_status": status,
            "algorithm_type": "SEMIAUTOMATIC" if state.person_clicked else "AUTOMATIC",
            "predicted_iou": state.predicted_ious[-1] if state.predicted_ious else None,
            "mask_area": int(state.mask.sum()), "clicks": clicks,
            "trajectory": [event for event in session.events if event.get("slice") == target],
        }

    def _write_seg(self, image: LabelImage, target: int, state: SliceState, request: _Request, result: dict,
                   out_dir: Path) -> Path:
        from ..dicom.seg_writer import SegWriteError, write_segmentation

        view = image.view(target)
        if view.source is None:
            raise LabelRequestError(f"store_seg needs a DICOM image; this one is {image.kind}", 422)
        trajectory = {key: result[key] for key in ("session", "slice", "clicks", "trajectory", "algorithm_type")}
        trajectory["prompt"] = request.prompt
        trajectory["label_choice"] = request.label_choice.to_dict()
        try:
            written = write_segmentation(out_dir / "seg.dcm", view.source, view.display.to_stored(state.mask),
                                         request.label, frame_index=view.frame_index,
                                         human_clicked=state.person_clicked, trajectory=trajectory)
        except SegWriteError as error:
            raise LabelRequestError(f"the SEG could not be written: {error}", 422) from None
        result["seg"] = _seg_record(written)
        return written.path

    def _write_volume_seg(self, volume, mask: np.ndarray, human_clicked: bool, request: _Request, result: dict,
                          out_dir: Path) -> Path:
        """The SEG over the whole series: a frame on every source slice the structure reaches."""
        from ..dicom.seg_writer import SegWriteError
        from .volumes import write_volume_seg

        trajectory = {key: result[key] for key in ("session", "key_slice", "clicks", "trajectory", "algorithm_type",
                                                   "volume_session")}
        trajectory["prompt"] = request.prompt
        trajectory["label_choice"] = request.label_choice.to_dict()
        try:
            written = write_volume_seg(volume, mask, request.label, human_clicked, trajectory, out_dir)
        except SegWriteError as error:
            raise LabelRequestError(f"the SEG could not be written: {error}", 422) from None
        result["seg"] = _seg_record(written)
        return written.path


def _seg_record(written) -> dict:
    """What the result JSON says about a SEG written (the app adds `stored` once the PACS took it)."""
    return {"sop_instance_uid": written.sop_instance_uid, "series_instance_uid": written.series_instance_uid,
            "codes": [f"{c.type.scheme_designator} {c.type.value} {c.type.meaning}" for c in written.codes]}
