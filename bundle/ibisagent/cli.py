"""The `ibis` command: segment, segment-dicom, segment-volume, demo, evaluate, evaluate-volumes, export-onnx, serve,
bench, train-tool, MLLM training.

Every expected failure (bad input, unknown policy, unreachable server) ends
with one line `ibis: error: ...` and exit status 2, and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["main"]

DEMO_QUERY = "Segment the liver."


class CommandError(Exception):
    """A failure to report in one line."""


def _turn_limit(value: str) -> int:
    """--max-turns: a whole number from 1 to the agent's TURN_LIMIT."""
    from .agent import TURN_LIMIT

    try:
        turns = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if not 1 <= turns <= TURN_LIMIT:
        raise argparse.ArgumentTypeError(f"{turns} is out of range: give 1 to {TURN_LIMIT}")
    return turns


def _policy_options(args: argparse.Namespace, ground_truth: np.ndarray | None, name: str | None = None) -> dict:
    from .policies import LITE_POLICY_NAMES

    name = name or args.policy
    if name in LITE_POLICY_NAMES:
        return {"backend": args.backend, **({"checkpoint": args.checkpoint} if args.checkpoint else {})}
    if name == "oracle":
        return {"ground_truth": ground_truth, "target_iou": args.target_iou}
    if name == "scripted":
        if not args.responses:
            raise CommandError("the scripted policy needs --responses FILE (one answer per line)")
        lines = Path(args.responses).read_text().splitlines()
        return {"responses": [line.replace("\\n", "\n") for line in lines if line.strip()]}
    if name == "hf":
        if not args.model_path:
            raise CommandError("the hf policy needs --model-path DIR")
        return {"model_path": args.model_path}
    if name == "openai":
        if not (args.base_url and args.model):
            raise CommandError("the openai policy needs --base-url URL and --model NAME")
        return {"base_url": args.base_url, "model": args.model, "timeout": args.timeout}
    if name == "triton":
        if not args.server:
            raise CommandError("the triton policy needs --server HOST:PORT (Triton's gRPC port)")
        return {"server": args.server, "model": args.model or "ibis_mllm", "timeout": args.timeout}
    return {}


def _print_turn(turn, mask) -> None:
    """The progress line of one turn."""
    action = turn.action or f"unparseable ({turn.issues[0] if turn.issues else 'no action'})"
    shown = f"-> mask {turn.mask_area} px, predicted IoU {turn.predicted_iou:.3f}" if turn.mask_area is not None else ""
    print(f"turn {turn.index + 1:2d}: {action} {shown} (policy {turn.policy_seconds:.2f} s, tool {turn.tool_seconds:.2f} s)",
          flush=True)


def _report_confidence(result) -> None:
    """The final mask's confidence; an unreliable result also warns on stderr (the outputs carry the flag)."""
    if result.confidence is None:
        return
    print(f"confidence {result.confidence.value:.2f} ({result.confidence.source}; unreliable below "
          f"{result.confidence.threshold:.2f})", flush=True)
    if result.unreliable:
        print(f"ibis: warning: {result.confidence.warning()}", file=sys.stderr, flush=True)


def _segment(args: argparse.Namespace) -> int:
    from .agent import Agent
    from .imaging.io import read_image, read_mask
    from .metrics import iou
    from .outputs import check_run_folder, write_run
    from .policies import build_policy
    from .prompting import clean_query, load_prompts
    from .tools.factory import build_tool, parse_tool_spec

    clean_query(args.query)  # refused before any model loads
    tool_config = parse_tool_spec(args.tool)  # cheap checks before any model loads
    check_run_folder(args.out)
    loaded = read_image(args.image, args.slice, args.window)
    if loaded.display_note:
        print(loaded.display_note, flush=True)
    ground_truth = read_mask(args.ground_truth, loaded.rgb.shape[:2], loaded.display) if args.ground_truth else None
    prompts = load_prompts(args.prompts)
    policy = build_policy(args.policy, **_policy_options(args, ground_truth))
    tool = build_tool(tool_config, args.backend)
    agent = Agent(tool, policy, prompts, max_turns=args.max_turns, history=args.history)

    turn_masks: list[np.ndarray] = []

    def report(turn, mask) -> None:
        turn_masks.append(mask)
        _print_turn(turn, mask)

    result = agent.run(loaded.rgb, args.query, on_turn=report)
    if not result.status.completed:
        raise CommandError(f"run ended with {result.status.value}: {result.error or 'the policy gave no usable answer'}; nothing written")
    metadata = {
        "input": Path(args.image).name, "input_kind": loaded.kind, "slice": loaded.slice_index, "window": loaded.window,
        "query": args.query, "policy": args.policy, "tool": tool.name, "prompts": prompts.source,
        "display": loaded.display_note or "as stored",
    }
    scored = ""
    if ground_truth is not None:
        metadata["reference_iou"] = round(iou(result.mask, ground_truth), 4)
        scored = f", IoU {metadata['reference_iou']:.3f} against the reference"
    written = write_run(args.out, loaded.rgb, result, turn_masks, metadata, loaded.display, loaded.nifti)
    print(f"{result.status.value} after {len(result.turns)} turn(s), {len(result.clicks)} click(s); "
          f"mask {int(result.mask.sum())} px{scored} -> {Path(args.out) / 'mask.png'} ({len(written)} files)")
    _report_confidence(result)
    return 0


def _label_line(choice, code) -> str:
    """How the segment is labelled and coded, in one line."""
    if not code.known:
        return (f"{choice.describe()}; the segment {choice.segment_label!r} gets the generic code Tissue "
                "(--label with a known target gives a precise one)")
    side = f" ({code.modifier.meaning})" if code.modifier else ""
    return f"{choice.describe()}, coded {code.type.meaning}{side}"


def _segment_dicom(args: argparse.Namespace) -> int:
    from .dicom.codes import UnknownLabelWarning, code_for_label
    from .dicom.pipeline import segment_dicom
    from .dicom.series import read_series
    from .imaging.io import read_mask
    from .labels import choose_label
    from .outputs import check_output_dir
    from .policies import build_policy
    from .policies.query_encoder import shared_query_encoder
    from .prompting import clean_query, load_prompts
    from .tools.factory import build_tool, parse_tool_spec

    clean_query(args.query)  # refused before any model loads
    if args.whole_series:
        from .volume.readers import read_volume

        if args.slice is not None:
            raise CommandError("--whole-series segments every slice: give the slice to start from as --key-slice")
        args.input = args.series_dir
        volume = read_volume(args.series_dir, window=args.window, series_uid=args.series_uid,
                             allow_uneven_spacing=args.allow_uneven_spacing)
        return _volume_run(args, volume, args.label)
    tool_config = parse_tool_spec(args.tool)
    check_output_dir(args.out)
    series = read_series(args.series_dir, args.slice, args.series_uid, args.window)  # input errors before models load
    ground_truth = read_mask(args.ground_truth, series.rgb.shape[:2], series.display) if args.ground_truth else None
    prompts = load_prompts(args.prompts)
    policy = build_policy(args.policy, **_policy_options(args, ground_truth))
    tool = build_tool(tool_config, args.backend)
    print(f"series: {series.slice_count} slice(s), {series.modality or 'unknown modality'}, slice {series.index}",
          flush=True)
    if series.display_note:
        print(series.display_note, flush=True)
    choice = choose_label(args.label, args.query, shared_query_encoder)
    with warnings.catch_warnings():  # the line below says it once, in words
        warnings.simplefilter("ignore", UnknownLabelWarning)
        code = code_for_label(choice.segment_label)
        print(_label_line(choice, code), flush=True)
        run = segment_dicom(args.series_dir, args.query, args.out, tool, policy, label=choice, prompts=prompts,
                            max_turns=args.max_turns, series=series, on_turn=_print_turn, tool_name=tool.name,
                            policy_name=args.policy)
    if not run.completed:
        result = run.result
        raise CommandError(f"run ended with {result.status.value}: {result.error or 'the policy gave no usable answer'}; "
                           "nothing written")
    print(f"{run.result.status.value} after {len(run.result.turns)} turn(s); segment {run.label!r}, "
          f"{int(run.result.mask.sum())} px -> {run.written.path} (+ {Path(run.written.sidecar).name}, "
          f"{run.overlay.name})")
    _report_confidence(run.result)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    """The MONAI Deploy application on a study folder: a DICOM-SEG and a DICOM SR (docs/deploy.md)."""
    import os

    from .deploy import load_rules, load_targets
    from .deploy.app import check_folders, run_deploy
    from .deploy.provenance import algorithm_parameters
    from .policies import build_policy
    from .prompting import load_prompts
    from .tools.factory import build_tool, parse_tool_spec

    input_dir = args.input or os.environ.get("HOLOSCAN_INPUT_PATH")
    output_dir = args.output or os.environ.get("HOLOSCAN_OUTPUT_PATH")
    if not input_dir or not output_dir:
        raise CommandError("give -i INPUT and -o OUTPUT (or set HOLOSCAN_INPUT_PATH and HOLOSCAN_OUTPUT_PATH)")
    targets, rules = load_targets(args.targets), load_rules(args.rules)  # checked before any model loads
    tool_config = parse_tool_spec(args.tool)
    check_folders(input_dir, output_dir)
    prompts = load_prompts(args.prompts)
    policy = build_policy(args.policy, **_policy_options(args, None))
    tool = build_tool(tool_config, args.backend)
    rules_name = f"the rules in {Path(args.rules).name}" if args.rules else "the default rules (rules.json)"
    written = run_deploy(input_dir, output_dir, targets, rules, tool, policy, prompts=prompts,
                         max_turns=args.max_turns, rules_name=rules_name,
                         algorithm_parameters=algorithm_parameters(args.tool, args.policy, policy))
    print(f"wrote {', '.join(str(path) for path in written)}")
    return 0


def _print_slice(state, index, ended) -> None:
    """The progress line of one slice propagation reached."""
    if state is None:
        print(f"slice {index:3d}: structure ended ({ended})", flush=True)
    else:
        origin = f"from slice {state.prompted_by}" if state.prompted_by is not None else state.origin
        print(f"slice {index:3d}: {state.area} px, predicted IoU {state.predicted_iou:.3f} ({origin})", flush=True)


def _volume_run(args: argparse.Namespace, volume, label: str | None) -> int:
    """What segment-volume and segment-dicom --whole-series share: reference, policy, key slice, run, report."""
    from .dicom.codes import UnknownLabelWarning, code_for_label
    from .labels import choose_label
    from .policies import build_policy
    from .policies.query_encoder import shared_query_encoder
    from .prompting import clean_query, load_prompts
    from .tools.factory import build_tool, parse_tool_spec
    from .volume.key_slice import reference_key_slice
    from .volume.pipeline import check_volume_folder, segment_volume
    from .volume.readers import read_label_map

    clean_query(args.query)  # refused before any model loads
    tool_config = parse_tool_spec(args.tool)
    check_volume_folder(args.out)
    if args.key_slice is not None:
        volume.check_slice(args.key_slice)
    reference = None
    if args.ground_truth or args.policy == "oracle":
        which = args.reference_label or label
        if which is None:
            raise CommandError("a reference needs --reference-label ID|NAME (or --label): which label to take")
        reference = read_label_map(volume, args.ground_truth).mask(which)
        if not reference.any():
            raise CommandError(f"label {which!r} is absent from the reference")
    print(volume.describe(), flush=True)
    for note in volume.notes:
        print(f"note: {note}", flush=True)
    key, key_from = args.key_slice, "given"
    if args.policy == "oracle":
        key = reference_key_slice(reference) if key is None else key
        key_from = key_from if args.key_slice is not None else "the reference's largest slice (oracle)"
        policy = build_policy("oracle", ground_truth=volume.to_display(reference[key]), target_iou=args.target_iou)
    else:
        policy = build_policy(args.policy, **_policy_options(args, None))
    tool = build_tool(tool_config, args.backend)
    choice = choose_label(label, args.query, shared_query_encoder)
    with warnings.catch_warnings():  # the line below says it once, in words
        warnings.simplefilter("ignore", UnknownLabelWarning)
        print(_label_line(choice, code_for_label(choice.segment_label)), flush=True)
        run = segment_volume(volume, args.query, args.out, tool, policy, key_slice=key, key_from=key_from,
                             label=choice, reference=reference, prompts=load_prompts(args.prompts),
                             max_turns=args.max_turns, cache_dir=args.cache_dir, on_turn=_print_turn,
                             on_slice=_print_slice, on_key=lambda index, how: print(f"key slice {index} ({how})",
                                                                                    flush=True),
                             metadata={"input": Path(args.input).name, "policy": args.policy, "tool": tool.name})
    if not run.completed:
        result = run.result
        raise CommandError(f"run ended with {result.status.value}: {result.error or 'the policy gave no usable answer'}; "
                           "nothing written")
    scored = f", 3D Dice {run.reference_dice:.3f} against the reference" if run.reference_dice is not None else ""
    slices = int(run.mask.any(axis=(1, 2)).sum())
    print(f"{run.result.status.value} on key slice {run.session.key_slice}; mask {int(run.mask.sum())} voxels on "
          f"{slices} slice(s){scored} -> {', '.join(p.name for p in run.written)} in {args.out}")
    return 0


def _segment_volume(args: argparse.Namespace) -> int:
    from .volume.readers import read_volume

    volume = read_volume(args.input, window=args.window, series_uid=args.series_uid,
                         allow_uneven_spacing=args.allow_uneven_spacing)  # input errors before models load
    return _volume_run(args, volume, args.label)


def _evaluate_volumes(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .evaluation import load_queries
    from .outputs import write_json_atomic
    from .policies import build_policy
    from .prompting import load_prompts
    from .tools.factory import build_tool
    from .volume.evaluation import evaluate_volumes, markdown_tables, read_volume_manifest, summarise_volumes
    from .volume.propagation import PropagationSettings

    items = read_volume_manifest(args.manifest, args.split, args.source)
    names = list(dict.fromkeys([args.policy, *(args.compare or [])]))
    shared = {name: build_policy(name.partition("=")[0], **_policy_options(args, None, name.partition("=")[0]))
              for name in names if name != "oracle"}

    def policy_maker(name: str):
        if name in shared:
            return lambda reference: shared[name]
        return lambda reference: build_policy("oracle", ground_truth=reference, target_iou=args.target_iou)

    def progress(done, total, record):
        shown = (f"Dice@1 {record['dice_at']['1']:.3f} @5 {record['dice_at']['5']:.3f}, forward "
                 f"{record['forward']['dice']:.3f}, {record['seconds']:.0f} s" if "dice_at" in record
                 else record.get("skipped", ""))
        print(f"[{done}/{total}] {record['policy']} {record['file']} {record['label']}: {shown}", file=sys.stderr,
              flush=True)

    chosen = {"prompt": args.propagation_prompt, "min_predicted_iou": args.min_predicted_iou}
    settings = PropagationSettings(**{key: value for key, value in chosen.items() if value is not None})
    tool = build_tool(args.tool, args.backend)
    records = evaluate_volumes(items, tool, {name: policy_maker(name) for name in names},
                               queries=load_queries(args.queries), query_kind=args.query_kind, settings=settings,
                               prompts=load_prompts(args.prompts), max_turns=args.max_turns,
                               agent_key={name: shared[name] for name in shared} if not args.no_agent_key else None,
                               cache_dir=args.cache_dir, records_path=args.records, limit=args.limit,
                               tool_name=tool.name, progress=progress)
    runs = []
    for name, rows in records.items():
        runs.append({"policy": name, **summarise_volumes(rows), "rows": rows})
        print(f"\n{tool.name} ({args.tool}), policy {name}, split {args.split}, {args.query_kind} queries\n")
        print(markdown_tables(runs[-1]))
    report = {"command": " ".join(["ibis", *sys.argv[1:]]), "split": args.split, "tool": tool.name,
              "tool_spec": args.tool, "query_kind": args.query_kind, "settings": asdict(settings), "runs": runs}
    if args.json:
        write_json_atomic(args.json, report)
    return 0


def _demo(args: argparse.Namespace) -> int:
    """The README's main job: the shipped abdominal MR, the liver, the default policy and tool."""
    from pydicom.data import get_testdata_file

    from .demo import DEMO_REFERENCE

    args.image = get_testdata_file("examples_overlay.dcm")
    args.query = DEMO_QUERY
    args.ground_truth = str(DEMO_REFERENCE)
    print(f"demo: {Path(args.image).name} (pydicom's abdominal MR), query {args.query!r}, policy {args.policy}")
    return _segment(args)


def _compared_policy(value: str) -> str:
    from .policies import POLICY_NAMES

    if value.partition("=")[0] not in POLICY_NAMES:
        raise argparse.ArgumentTypeError(f"unknown policy {value!r}; choose one of {', '.join(POLICY_NAMES)}")
    return value


def _trajectories(args: argparse.Namespace) -> int:
    from .evaluation import load_queries, read_manifest, select_pairs
    from .outputs import check_output_file
    from .tools.factory import build_tool
    from .training.embedding_cache import EmbeddingCache
    from .training.trajectories import TrajectoryConfig, write_trajectories

    check_output_file(args.out)
    config = TrajectoryConfig(args.target_iou, args.max_steps, tuple(args.query_kind))
    pairs = select_pairs(read_manifest(args.manifest, args.split), args.per_source, args.limit)
    if not pairs:
        raise CommandError(f"no pairs in split {args.split!r} of {args.manifest}")
    tool = build_tool(args.tool)
    cache = EmbeddingCache(args.cache_dir, tool) if args.cache_dir else None
    counts = write_trajectories(pairs, tool, args.out, load_queries(args.queries), config, cache)
    print(json.dumps({"out": args.out, **counts}))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import (calibration_line, evaluate_policies, load_queries, markdown_table, read_manifest,
                             select_pairs, summarise)
    from .outputs import check_output_file, write_json_atomic
    from .policies import LITE_POLICY_NAMES, build_policy
    from .prompting import load_prompts
    from .tools.factory import build_tool

    if args.json:
        check_output_file(args.json)
    pairs = select_pairs(read_manifest(args.manifest, args.split), args.per_source, args.limit)
    queries = load_queries(args.queries)
    prompts = load_prompts(args.prompts)
    names = list(dict.fromkeys([args.policy, *(args.compare or [])]))

    def build_shared(name: str):
        kind, _, checkpoint = name.partition("=")  # `lite=PATH`: the lite policy with another checkpoint
        if checkpoint and kind not in LITE_POLICY_NAMES:
            raise CommandError(f"--compare {name!r}: only lite policies take a checkpoint (lite=PATH)")
        options = _policy_options(args, None, kind)
        return build_policy(kind, **(options | {"checkpoint": checkpoint} if checkpoint else options))

    shared = {name: build_shared(name) for name in names if name != "oracle"}

    def policy_maker(name: str):
        def make_policy(ground_truth):
            if name in shared:
                return shared[name]
            return build_policy("oracle", ground_truth=ground_truth, target_iou=args.target_iou)
        return make_policy

    def progress(done, total, record):
        print(f"[{done}/{total}] {record['policy']} {record['source']} {record['label']}: IoU {record['iou']:.3f} "
              f"({record['clicks']} clicks, {record['status']})", file=sys.stderr, flush=True)

    runs = []
    for spec in args.tool or ["lite-medsam"]:
        tool = build_tool(spec, args.backend)
        cache = None
        if args.cache_dir:
            from .training.embedding_cache import EmbeddingCache

            cache = EmbeddingCache(args.cache_dir, tool)
        by_policy = evaluate_policies(pairs, tool, {name: policy_maker(name) for name in names}, queries,
                                      args.query_kind, prompts, args.max_turns, progress, cache)
        for name, records in by_policy.items():
            runs.append({"tool": tool.name, "tool_spec": spec, "policy": name, **summarise(records), "pairs": records})
            print(f"\n{tool.name} ({spec}), policy {name}, split {args.split}, {args.query_kind} queries\n")
            print(markdown_table(runs[-1]))
            print(f"\n{calibration_line(runs[-1])}")
    report = {"command": " ".join(["ibis", *sys.argv[1:]]), "policy": args.policy, "split": args.split,
              "query_kind": args.query_kind, **{k: runs[0][k] for k in ("tool", "by_source", "overall")},
              "runs": runs}
    if args.json:
        write_json_atomic(args.json, report)
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from .tools.factory import build_tool
    from .tools.onnx_export import export_onnx
    from .tools.torch_tool import TorchSamTool

    tool = build_tool(args.tool, backend="torch")
    if not isinstance(tool, TorchSamTool):
        raise CommandError(f"export-onnx needs a tool built from torch weights, got {tool.name}")
    out = export_onnx(tool.parts, tool.transform, args.out)
    print(f"exported {tool.name} -> {out}/encoder.onnx, decoder.onnx, tool.json")
    return 0


def _export_graphs(args: argparse.Namespace) -> int:
    """Export the default models' onnxruntime graphs into the cache (where torch is installed), e.g. for an image
    that will run without torch."""
    from .graph_cache import cache_root
    from .policies.lite import LitePolicy
    from .tools.factory import build_tool

    tool = build_tool(args.tool, backend="onnxruntime")
    LitePolicy(args.checkpoint, backend="onnxruntime")  # its network and the query encoder
    print(f"graphs for {tool.name} and IBIS-lite ({args.checkpoint or 'shipped'}) with its query encoder are in "
          f"{cache_root()}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.server:
        from .serving.bench import run_serving_bench

        print(run_serving_bench(args.server, args.tool, args.sessions, args.clicks, args.image))
        return 0
    if args.label:
        from .label.bench import run_label_bench

        print(run_label_bench(args.tool, args.clicks + 1, args.label_sessions))
        return 0
    if args.volume:
        from .volume.bench import run_volume_bench

        path = None if args.volume == "default" else args.volume
        print(run_volume_bench(path, args.volume_label, args.tool, args.volume_runs))
        return 0
    if args.agent:
        from .agent_bench import run_agent_bench

        print(run_agent_bench(args.agent, args.tool, args.manifest, args.images, args.max_turns))
        return 0
    from .bench import run_bench

    print(run_bench(args.tool, args.runs, args.warmup, args.image, args.cold_runs))
    return 0


def _run_bundle_config(config: str, overrides: dict[str, object]) -> None:
    """Run a bundle config's `run` with the command line's overrides (None = keep the config's value).

    MONAI wraps what the recipe raised in RuntimeErrors; a ValueError or
    OSError underneath is re-raised so the CLI reports it in one line.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config)
    for key, value in overrides.items():
        if value is not None:
            parser[key] = value
    try:
        parser.get_parsed_content("run")
    except RuntimeError as error:
        cause = error.__cause__
        while isinstance(cause, RuntimeError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, (ValueError, OSError)):
            raise cause from None
        raise


def _train_tool(args: argparse.Namespace) -> int:
    _run_bundle_config(args.config, {
        "manifest": args.manifest, "click_tuning#out_dir": args.out, "click_tuning#epochs": args.epochs,
        "click_tuning#limit_train": args.limit_train, "click_tuning#limit_val": args.limit_val,
        "click_tuning#resume": True if args.resume else None})
    return 0


def _train_lite(args: argparse.Namespace) -> int:
    _run_bundle_config(args.config, {
        "manifest": args.manifest, "lite_training#out_dir": args.out, "lite_training#stages": args.stages,
        "lite_training#resume": True if args.resume else None})
    return 0


def _export_mllm(args: argparse.Namespace) -> int:
    from .prompting import load_prompts
    from .training.mllm.export import Teacher, export_mllm

    teacher = None
    if args.teacher_url or args.teacher_model:
        if not (args.teacher_url and args.teacher_model):
            raise CommandError("a teacher needs both --teacher-url URL and --teacher-model NAME")
        import os

        teacher = Teacher(args.teacher_url, args.teacher_model, api_key=os.environ.get(args.teacher_key_env, "EMPTY"),
                          timeout=args.timeout)
    counts = export_mllm(args.trajectories, args.out, args.kind, load_prompts(args.prompts), teacher, args.limit)
    print(f"{args.kind} dataset in {args.out}: " + ", ".join(f"{key} {value}" for key, value in counts.items()))
    return 0


def _train_mllm(args: argparse.Namespace) -> int:
    """train-sft / train-grpo: run the bundle config with the command line's overrides."""
    section = "sft" if args.command == "train-sft" else "grpo"
    overrides = {"model": args.model, "dataset": args.dataset, "out_dir": args.out, "merged_dir": args.merged,
                 "max_steps": args.max_steps, "resume": True if args.resume else None,
                 "use_cpu": True if args.cpu else None}
    _run_bundle_config(args.config, {f"{section}#{key}": value for key, value in overrides.items()})
    return 0


def _merge_lora(args: argparse.Namespace) -> int:
    from .training.mllm.model import merge_adapter

    print(f"merged checkpoint: {merge_adapter(args.adapter, args.out, args.base)}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Start Triton on the model repository, print one ready line, serve until SIGINT/SIGTERM/SIGHUP."""
    from .serving.environment import ServerError, find_triton, setup_server_env
    from .serving.lifetime import serve_until_stopped, stop_signals_interrupt
    from .serving.repository import MLLM_MODEL, SAM_MODELS, prepare_repository
    from .serving.server import TritonServer

    models = args.model or [*SAM_MODELS, *([MLLM_MODEL] if args.mllm_path else [])]
    if args.setup:
        print(f"server environment: {setup_server_env(args.server_env)}", flush=True)
    if set(SAM_MODELS) & set(models) and prepare_repository(args.repository, args.tool, force=args.export):
        print(f"exported {args.tool} into {args.repository}", flush=True)
    if args.setup:
        return 0
    env = {"IBIS_MLLM_PATH": str(Path(args.mllm_path).absolute())} if args.mllm_path else {}
    server = TritonServer(args.repository, models, host=args.host, grpc_port=args.grpc_port,
                          http_port=args.http_port, metrics_port=args.metrics_port,
                          install=find_triton(args.server_env), env=env)
    with stop_signals_interrupt():  # systemd, docker stop and a closed terminal stop it as Ctrl-C does
        try:
            server.start(args.start_timeout)
        except KeyboardInterrupt:
            return 130
        code = serve_until_stopped(server, lambda: print(
            f"ready: Triton at {server.grpc_url} (gRPC), models {', '.join(models)}; use --server {server.grpc_url}",
            flush=True))
    if code is not None:
        raise ServerError(f"tritonserver on {server.grpc_url} exited with status {code}: {server.last_error()}")
    return 0


def _label_serve(args: argparse.Namespace) -> int:
    """Start MONAI Label with the ibisagent app, print one ready line, serve until SIGINT/SIGTERM/SIGHUP."""
    from .label.environment import setup_label_env
    from .label.server import LabelServer, write_app_folder
    from .serving.lifetime import serve_until_stopped, stop_signals_interrupt

    if args.setup:
        print(f"MONAI Label environment: {setup_label_env(args.label_env)}", flush=True)
        print(f"app folder: {write_app_folder(args.app_dir)}", flush=True)
        return 0
    if not args.studies:
        raise CommandError("--studies DIR or a DICOMweb URL is required")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: MONAI Label binds {args.host}: reachable from other machines, without authentication",
              file=sys.stderr, flush=True)
    server = LabelServer(args.studies, args.app_dir, host=args.host, port=args.port, label_env=args.label_env,
                         conf={"tool": args.tool})
    with stop_signals_interrupt():  # systemd, docker stop and a closed terminal stop it as Ctrl-C does
        try:
            server.start(args.start_timeout)
        except KeyboardInterrupt:
            return 130
        code = serve_until_stopped(server, lambda: print(
            f"ready: MONAI Label at {server.url}, infer task ibisagent (studies {args.studies})", flush=True))
    if code is not None:
        raise CommandError(f"monailabel exited with status {code}: {server.last_error()}")
    return 0


def _stress(args: argparse.Namespace) -> int:
    """The long reliability run, section by section into --results (resumable); its figures into --out."""
    from .outputs import check_output_dir, check_output_file
    from .stress.report import write_figures
    from .stress.run import SECTIONS, StressSettings, run_stress

    unknown = sorted(set(args.section or []) - set(SECTIONS))
    if unknown:
        raise CommandError(f"unknown section {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    check_output_file(args.out)
    results = check_output_dir(args.results)
    settings = StressSettings(
        seed=args.seed, protocol_examples=args.protocol_examples, dicom_cases=args.dicom_cases,
        load_sessions=args.load_sessions, load_seconds=args.load_seconds, load_images=args.load_images,
        kill_trials=args.kill_trials, repository=Path(args.repository), shared_data=Path(args.shared_data),
        server_env=Path(args.server_env) if args.server_env else None,
        label_env=Path(args.label_env) if args.label_env else None,
        sections=tuple(args.section or SECTIONS))
    command = " ".join(["ibis", *sys.argv[1:]])  # recorded with each section's figures
    run_stress(settings, results, command, again=args.again, progress=lambda line: print(line, flush=True))
    write_figures(Path(args.out), results)
    print(f"figures -> {args.out} (from {results})")
    return 0


def _add_input_options(parser: argparse.ArgumentParser, slice_help: str) -> None:
    """What `segment` and `segment-dicom` share: the query, the output and how the slice is shown."""
    parser.add_argument("--query", required=True)
    parser.add_argument("--out", default="out")
    parser.add_argument("--slice", type=int, help=slice_help)
    parser.add_argument("--window", help="abdomen | lung | bone | brain | percentile | file (DICOM: its own "
                                         "WindowCenter/Width or VOI LUT) (default: abdomen for CT, NIfTI in "
                                         "Hounsfield units included; percentiles otherwise)")
    parser.add_argument("--ground-truth", help="oracle: the reference mask of the image or slice (PNG); "
                        "segment-dicom --whole-series: a label map on the series' grid (NIfTI or npz)")


def _add_volume_options(parser: argparse.ArgumentParser) -> None:
    """What segment-volume and segment-dicom --whole-series share."""
    parser.add_argument("--key-slice", type=int, help="the slice the agent segments first (default: the agent's "
                        "sweep chooses; the oracle takes the reference's largest slice)")
    parser.add_argument("--reference-label", help="the reference's label, by id or name (default: --label)")
    parser.add_argument("--allow-uneven-spacing", action="store_true", help="DICOM: segment a stack with a gap or "
                        "uneven spacing as it is (the SEG is exact; no mask.nii.gz)")
    parser.add_argument("--cache-dir", help="keep slice embeddings here for later runs on the same volume")


def _add_run_options(parser: argparse.ArgumentParser, policy_default: str, tool_repeats: bool = False) -> None:
    from .agent import TURN_LIMIT
    from .policies import POLICY_NAMES

    parser.add_argument("--policy", default=policy_default, choices=POLICY_NAMES)
    parser.add_argument("--checkpoint", help="lite: a policy checkpoint (default: the shipped IBIS-lite)")
    tool_help = ("lite-medsam | lite-medsam-base | lite-medsam-tuned | lite-medsam-decoder:DECODER | onnx:DIR | "
                 "sam:vit_b:CKPT | medsam:CKPT | triton:HOST:PORT (default: lite-medsam, or triton:SERVER with --server)")
    if tool_repeats:
        parser.add_argument("--tool", action="append", help=tool_help + " (repeat to compare tools in one run)")
    else:
        parser.add_argument("--tool", help=tool_help)
    parser.add_argument("--server", help="a Triton server (HOST:PORT, gRPC; see `ibis serve`): the default tool, "
                        "and the triton policy's server")
    parser.set_defaults(tool_repeats=tool_repeats)
    parser.add_argument("--backend", choices=("onnxruntime", "torch"),
                        help="where the embedded models run (LiteMedSAM, IBIS-lite, its query encoder): onnxruntime "
                             "(default; graphs exported from the weights on first use and cached) or torch")
    parser.add_argument("--prompts", help="YAML prompt file (default: the packaged wording)")
    parser.add_argument("--max-turns", type=_turn_limit, default=20, help=f"turn limit, 1 to {TURN_LIMIT} (default 20)")
    parser.add_argument("--target-iou", type=float, default=0.9, help="oracle: stop at this IoU")
    parser.add_argument("--responses", help="scripted: a file with one answer per line (\\n for newlines)")
    parser.add_argument("--model-path", help="hf: a local Qwen2.5-VL / Qwen2-VL checkpoint folder")
    parser.add_argument("--base-url", help="openai: the endpoint, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", help="openai: the served model name; triton: default ibis_mllm")
    parser.add_argument("--timeout", type=float, default=60.0, help="openai, triton: seconds per request")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ibis", description="Agentic medical image segmentation (IBISAgent).")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment one image")
    segment.add_argument("image", help="PNG/JPEG, a DICOM file or a NIfTI volume")
    _add_input_options(segment, "slice index for multi-slice inputs")
    segment.add_argument("--history", action="store_true", help="send the whole chat, not only the current turn")
    _add_run_options(segment, "lite")
    segment.set_defaults(handler=_segment)

    dicom = commands.add_parser("segment-dicom", help="segment one slice of a DICOM series; write a DICOM-SEG")
    dicom.add_argument("series_dir", help="a folder holding one DICOM series (or choose one with --series-uid)")
    _add_input_options(dicom, "slice index (0 = lowest along the slice normal)")
    dicom.add_argument("--label", help="the target's label for the SEG's codes, e.g. liver (default: the target the "
                       "query names or describes, else 'target' with the generic code)")
    dicom.add_argument("--series-uid", help="pick one series when the folder holds several")
    dicom.add_argument("--whole-series", action="store_true", help="segment the structure through every slice "
                       "(a multi-frame SEG, mask.nii.gz, trajectory.json, montage.png; see segment-volume)")
    _add_volume_options(dicom)
    _add_run_options(dicom, "lite")
    dicom.set_defaults(handler=_segment_dicom)

    deploy = commands.add_parser("deploy", help="the MONAI Deploy app: a DICOM study folder -> DICOM-SEG + DICOM SR")
    deploy.add_argument("-i", "--input", help="the study folder (default $HOLOSCAN_INPUT_PATH)")
    deploy.add_argument("-o", "--output", help="the output folder (default $HOLOSCAN_OUTPUT_PATH)")
    deploy.add_argument("--targets", help="YAML: targets: [{label, query}, ...] (default: the packaged targets.yaml)")
    deploy.add_argument("--rules", help="series selection rules, the SDK's JSON (default: the packaged rules.json)")
    _add_run_options(deploy, "lite")
    deploy.set_defaults(handler=_deploy)
    volume = commands.add_parser("segment-volume", help="segment a structure through a whole volume (DICOM series, "
                                 "NIfTI or npz): mask.nii.gz, seg.dcm, trajectory.json, montage.png")
    volume.add_argument("input", help="a DICOM series folder, a NIfTI file (.nii, .nii.gz) or an .npz volume")
    volume.add_argument("--query", required=True)
    volume.add_argument("--out", default="out")
    volume.add_argument("--label", help="the target's label: the SEG's codes, and the reference's label by name")
    volume.add_argument("--series-uid", help="DICOM: pick one series when the folder holds several")
    volume.add_argument("--window", help="abdomen | lung | bone | brain | percentile (default: abdomen for CT, "
                        "percentiles of the whole volume otherwise, uint8 MR included; a uint8 CT as stored)")
    volume.add_argument("--ground-truth", help="a label map on the input's grid (NIfTI or npz; an npz input's own "
                        "labels by default): the oracle's reference, and the score")
    _add_volume_options(volume)
    _add_run_options(volume, "lite")
    volume.set_defaults(handler=_segment_volume)

    volumes = commands.add_parser("evaluate-volumes", help="3D evaluation over a volumes manifest split: "
                                  "forward only, both ways, corrections (Dice@1/3/5)")
    volumes.add_argument("--manifest", required=True)
    volumes.add_argument("--split", default="test")
    volumes.add_argument("--source", action="append", help="only this source (repeatable)")
    volumes.add_argument("--queries", help="queries.json with referring templates and reasoning questions")
    volumes.add_argument("--query-kind", choices=("referring", "reasoning"), default="referring")
    volumes.add_argument("--limit", type=int, help="at most N (volume, label) rows")
    volumes.add_argument("--json", help="write the full report here")
    volumes.add_argument("--records", help="JSON lines written as rows finish; rows already there are not run "
                         "again (resume)")
    volumes.add_argument("--compare", action="append", type=_compared_policy,
                         help="also run this policy on the same rows and embeddings (repeatable)")
    volumes.add_argument("--no-agent-key", action="store_true", help="skip the runs with the agent-chosen key slice")
    volumes.add_argument("--propagation-prompt", choices=("box", "box+mask", "click+mask", "box+click+mask"),
                         help="how a slice prompts its neighbour (default: PropagationSettings', docs/volumes.md)")
    volumes.add_argument("--min-predicted-iou", type=float,
                         help="propagation stops where the tool's predicted IoU falls below this (default: "
                         "PropagationSettings')")
    volumes.add_argument("--cache-dir", default="~/.cache/ibisagent/slice-embeddings",
                         help="slice embeddings kept here, keyed by pixels and encoder")
    _add_run_options(volumes, "oracle")
    volumes.set_defaults(handler=_evaluate_volumes)

    demo = commands.add_parser("demo", help="the main job on pydicom's shipped abdominal MR")
    demo.add_argument("--out", default="demo_out")
    _add_run_options(demo, "lite")
    # The demo's reference is itself approximate (see ibisagent/demo.py): it scores the answer, and the oracle
    # (--policy oracle) stops at 0.85 against it.
    demo.set_defaults(handler=_demo, slice=None, window=None, history=False, target_iou=0.85)

    evaluate = commands.add_parser("evaluate", help="evaluate over a manifest split")
    evaluate.add_argument("--manifest", required=True)
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--queries", help="queries.json with referring templates and reasoning questions")
    evaluate.add_argument("--query-kind", choices=("referring", "reasoning"), default="referring")
    evaluate.add_argument("--limit", type=int, help="at most N pairs")
    evaluate.add_argument("--per-source", type=int, help="at most N pairs per source")
    evaluate.add_argument("--json", help="write the full report here")
    evaluate.add_argument("--cache-dir", help="read image embeddings from (and add them to) this cache, as training "
                          "does (float16 on disk); without it every image is encoded afresh")
    evaluate.add_argument("--compare", action="append", type=_compared_policy,
                          help="also run this policy on the same pairs and embeddings (repeatable): a policy name, "
                               "or lite=CHECKPOINT for another IBIS-lite checkpoint")
    _add_run_options(evaluate, "oracle", tool_repeats=True)
    evaluate.set_defaults(handler=_evaluate)

    trajectories = commands.add_parser("trajectories", help="simulated click trajectories (policy training data)")
    trajectories.add_argument("--manifest", required=True)
    trajectories.add_argument("--split", default="train")
    trajectories.add_argument("--out", required=True, help="JSON-lines file to write")
    trajectories.add_argument("--queries", help="queries.json (default: 'Segment the {label}.' only)")
    trajectories.add_argument("--query-kind", nargs="+", choices=("referring", "reasoning"),
                              default=["referring", "reasoning"], help="one record per pair and kind")
    trajectories.add_argument("--tool", default="lite-medsam")
    trajectories.add_argument("--target-iou", type=float, default=0.9, help="stop a trajectory at this IoU")
    trajectories.add_argument("--max-steps", type=int, default=10)
    trajectories.add_argument("--per-source", type=int, help="at most N pairs per source")
    trajectories.add_argument("--limit", type=int, help="at most N pairs")
    trajectories.add_argument("--cache-dir", help="reuse image embeddings cached here (see train-tool)")
    trajectories.set_defaults(handler=_trajectories)

    export = commands.add_parser("export-onnx", help="export the tool to ONNX")
    export.add_argument("--tool", default="lite-medsam")
    export.add_argument("--out", required=True)
    export.set_defaults(handler=_export_onnx)

    graphs = commands.add_parser("export-graphs", help="export the default models' onnxruntime graphs into the cache "
                                 "($IBISAGENT_CACHE/graphs or ~/.cache/ibisagent/graphs)")
    graphs.add_argument("--tool", default="lite-medsam", help="a LiteMedSAM or sam: tool spec")
    graphs.add_argument("--checkpoint", help="an IBIS-lite checkpoint (default: the shipped one)")
    graphs.set_defaults(handler=_export_graphs)

    train = commands.add_parser("train-tool", help="fine-tune LiteMedSAM's decoder for clicks")
    train.add_argument("--config", default="configs/train_tool.yaml")
    train.add_argument("--manifest", help="override the config's manifest")
    train.add_argument("--out", help="override the output folder")
    train.add_argument("--epochs", type=int)
    train.add_argument("--limit-train", type=int)
    train.add_argument("--limit-val", type=int)
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    train.set_defaults(handler=_train_tool)

    serve = commands.add_parser("serve", help="serve the tool (and an MLLM policy) on Triton Inference Server")
    serve.add_argument("--repository", default="triton_models", help="the Triton model repository")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--model", action="append", help="load only these models (repeat); default: the sam "
                       "models, and ibis_mllm with --mllm-path")
    serve.add_argument("--mllm-path", help="a local Qwen2.5-VL checkpoint for ibis_mllm ($IBIS_MLLM_PATH)")
    serve.add_argument("--tool", default="lite-medsam", help="whose graphs go into the repository when its ONNX "
                       "graphs are absent or from other weights: a LiteMedSAM or sam: spec (its cached graphs), or "
                       "onnx:DIR")
    serve.add_argument("--export", action="store_true", help="copy the graphs again, even when they match")
    serve.add_argument("--server-env", help="the server's Python environment (default $IBIS_TRITON_ENV or .venv-triton)")
    serve.add_argument("--setup", action="store_true", help="create the server environment and the graphs, then exit")
    serve.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for readiness")
    serve.set_defaults(handler=_serve)

    label = commands.add_parser("label-serve", help="MONAI Label with the ibisagent app (3D Slicer, OHIF)")
    label.add_argument("--studies", help="the datastore: a folder of images, or a DICOMweb URL (a PACS)")
    label.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    label.add_argument("--port", type=int, default=8000)
    label.add_argument("--tool", default="lite-medsam", help="the agent's segmentation tool")
    label.add_argument("--app-dir", default="monailabel_app", help="the app folder MONAI Label loads (and logs to)")
    label.add_argument("--label-env", help="MONAI Label's environment (default $IBIS_LABEL_ENV or .venv-label)")
    label.add_argument("--setup", action="store_true", help="create MONAI Label's environment and the app folder")
    label.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for readiness")
    label.set_defaults(handler=_label_serve)

    stress = commands.add_parser("stress", help="the long fuzzing, load, fault and security run; figures into "
                                 "docs/reliability.md")
    stress.add_argument("--out", default="docs/reliability.md", help="the page whose figures block is rewritten")
    stress.add_argument("--results", default="runs/stress", help="one JSON file per section; a section whose "
                        "file is there is not run again (a stopped run resumes)")
    stress.add_argument("--again", action="store_true", help="run the sections asked for even when done")
    stress.add_argument("--section", action="append", help="run only these sections (repeat): protocol, dicom, "
                        "load, label_load, signals, kills, training, disk, sessions, security")
    stress.add_argument("--seed", type=int, default=22)
    stress.add_argument("--protocol-examples", type=int, default=2000, help="generated inputs per property")
    stress.add_argument("--dicom-cases", type=int, default=2000, help="mutated DICOM inputs")
    stress.add_argument("--load-sessions", type=int, default=8)
    stress.add_argument("--load-seconds", type=float, default=180.0)
    stress.add_argument("--load-images", type=int, default=80, help="real test images the sessions go round")
    stress.add_argument("--kill-trials", type=int, default=30, help="SIGKILLs per kind of output")
    stress.add_argument("--repository", default="triton_models", help="the model repository to copy")
    stress.add_argument("--shared-data", default="../shared/data")
    stress.add_argument("--server-env", help="Triton's environment (default $IBIS_TRITON_ENV or .venv-triton)")
    stress.add_argument("--label-env", help="MONAI Label's environment (default $IBIS_LABEL_ENV or .venv-label)")
    stress.set_defaults(handler=_stress)

    lite = commands.add_parser("train-lite", help="train the IBIS-lite policy (SFT, then GRPO)")
    lite.add_argument("--config", default="configs/train_lite.yaml")
    lite.add_argument("--manifest", help="override the config's manifest")
    lite.add_argument("--out", help="override the output folder")
    lite.add_argument("--stages", nargs="+", choices=("sft", "grpo"), help="run only these stages")
    lite.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    lite.set_defaults(handler=_train_lite)

    export_mllm = commands.add_parser("export-mllm", help="trajectories -> an SFT or GRPO dataset for the MLLM policy")
    export_mllm.add_argument("--kind", choices=("sft", "grpo"), required=True)
    export_mllm.add_argument("--trajectories", nargs="+", required=True, help="files written by ibis trajectories")
    export_mllm.add_argument("--out", required=True, help="dataset folder (replaced whole when complete)")
    export_mllm.add_argument("--prompts", help="prompt wording file (default: the packaged wording)")
    export_mllm.add_argument("--teacher-url", help="sft: rationales from this OpenAI-compatible endpoint")
    export_mllm.add_argument("--teacher-model", help="sft: the teacher's served model name")
    export_mllm.add_argument("--teacher-key-env", default="OPENAI_API_KEY", help="environment variable with its key")
    export_mllm.add_argument("--timeout", type=float, default=60.0, help="teacher: seconds per request")
    export_mllm.add_argument("--limit", type=int, help="at most N trajectory records")
    export_mllm.set_defaults(handler=_export_mllm)

    for name, config, what in (("train-sft", "configs/train_sft.yaml", "SFT (TRL, LoRA) of the MLLM policy"),
                               ("train-grpo", "configs/train_grpo.yaml", "GRPO of the MLLM policy, tool in the loop")):
        train_mllm = commands.add_parser(name, help=what)
        train_mllm.add_argument("--config", default=config)
        train_mllm.add_argument("--model", help="override the starting checkpoint folder")
        train_mllm.add_argument("--dataset", help="override the dataset folder")
        train_mllm.add_argument("--out", help="override the output folder")
        train_mllm.add_argument("--merged", help="override where the merged checkpoint goes")
        train_mllm.add_argument("--max-steps", type=int, help="stop after N optimiser steps")
        train_mllm.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT")
        train_mllm.add_argument("--cpu", action="store_true", help="train on the CPU in fp32 (a smoke test)")
        train_mllm.set_defaults(handler=_train_mllm)

    merge = commands.add_parser("merge-lora", help="fold a LoRA adapter into its base; a checkpoint the hf policy loads")
    merge.add_argument("--adapter", required=True, help="adapter folder (OUT/final of train-sft or train-grpo)")
    merge.add_argument("--out", required=True)
    merge.add_argument("--base", help="base checkpoint (default: the one the adapter records)")
    merge.set_defaults(handler=_merge_lora)

    bench = commands.add_parser("bench", help="torch vs onnxruntime: tool, policy and query encoder latency, and the "
                                "cold start of ibis segment; with --server, Triton vs in-process")
    bench.add_argument("--tool", default="lite-medsam")
    bench.add_argument("--runs", type=int, default=20)
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--image", help="image to time (default: pydicom's abdominal MR)")
    bench.add_argument("--cold-runs", type=int, default=3, help="fresh `ibis segment` processes per backend")
    bench.add_argument("--server", help="a Triton server (HOST:PORT, gRPC): compare it with the tool in process, "
                       "at several sessions at once")
    bench.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 16], help="--server: sessions at once")
    bench.add_argument("--clicks", type=int, default=5,
                       help="--server: clicks per session; --label: clicks after the first")
    bench.add_argument("--agent", action="append", choices=("lite", "lite-one-click"),
                       help="time the whole agent per image with this policy (repeatable), torch vs onnxruntime tool")
    bench.add_argument("--label", action="store_true", help="ms per click in a MONAI Label task session vs "
                       "re-encoding every click (MONAI Label's SAM2 pattern), same tool, one run")
    bench.add_argument("--label-sessions", type=int, default=3, help="--label: sessions of --clicks + 1 clicks")
    bench.add_argument("--manifest", help="--agent: also time test-split images of this manifest")
    bench.add_argument("--images", type=int, default=12, help="--agent: images to time")
    bench.add_argument("--max-turns", type=_turn_limit, default=10, help="--agent: turn limit")
    bench.add_argument("--volume", nargs="?", const="default", help="time whole volumes (an npz with labels; "
                       "default: the msd-spleen CT of ../shared/data/volumes), torch vs onnxruntime")
    bench.add_argument("--volume-label", help="--volume: the label to segment (id or name; default: the first)")
    bench.add_argument("--volume-runs", type=int, default=3, help="--volume: cold runs per backend")
    bench.set_defaults(handler=_bench)
    return parser


def _default_tool(args: argparse.Namespace) -> None:
    """No --tool: the Triton-served tool when --server is given, else lite-medsam."""
    if "tool_repeats" in args and not args.tool:
        tool = f"triton:{args.server}" if args.server else "lite-medsam"
        args.tool = [tool] if args.tool_repeats else tool


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _default_tool(args)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from .imaging.io import ImageReadError
    from .policies import PolicyError
    from .serving.environment import ServerError

    try:
        return args.handler(args)
    except (CommandError, ImageReadError, PolicyError, ServerError, ValueError, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"ibis: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
