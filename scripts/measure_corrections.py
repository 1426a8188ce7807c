"""One corrective click on every propagated slice, each measured alone: what each correction rule does to it.

    python scripts/measure_corrections.py --split train --split val [--tool SPEC ...] [--cache-dir runs/emb]

For each (volume, label) row of the split(s): the oracle's 5 turns on the
reference's largest slice, propagation both ways, then on every propagated
slice with at least 20 wrong pixels the oracle's next click
(`clicks.next_click`), asked of the tool once per rule from the same state
(no chaining, so one correction's luck does not decide the next). Rules:
`click` (the click and the slice's logits, the rule before 2026-12-03),
`seed` (a `propagation.seed_click` first), and each of them with
`propagation.without_refused_blobs` emptying a slice that holds no positive
click (`+empty`; `seed+empty` is the session's rule). Prints the mean
change of the slice's Dice for slices holding the structure, and the
fraction of the false area removed on slices past its end.
"""

import argparse
from collections import defaultdict

import numpy as np
from scipy import ndimage

from ibisagent.clicks import next_click, normalised_to_pixel
from ibisagent.metrics import dice
from ibisagent.policies import build_policy
from ibisagent.tools.base import Click
from ibisagent.tools.factory import build_tool
from ibisagent.volume.evaluation import read_volume_manifest, reference_key_slice
from ibisagent.volume.propagation import seed_click, without_refused_blobs
from ibisagent.volume.readers import read_label_map, read_volume
from ibisagent.volume.session import VolumeSession
from ibisagent.volume.slices import SliceEncoder

RULES = ("click", "click+empty", "seed", "seed+empty")


def refused_blobs_only(mask: np.ndarray, clicks: tuple[Click, ...]) -> np.ndarray:
    """The rule before 2026-12-03: blobs holding a negative and no positive click go; with no positive, the rest stays."""
    if any(click.positive for click in clicks):
        return without_refused_blobs(mask, clicks)
    components, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    refused = {int(components[normalised_to_pixel(c.x, c.y, mask.shape)]) for c in clicks} - {0}
    return mask & ~np.isin(components, list(refused))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", default="../shared/data/volumes/manifest.csv")
    parser.add_argument("--split", action="append", required=True)
    parser.add_argument("--tool", action="append", default=None, help="tool specs (default: lite-medsam)")
    parser.add_argument("--cache-dir", default="runs/emb")
    args = parser.parse_args()
    gains: dict[tuple, list[float]] = defaultdict(list)
    for spec in args.tool or ["lite-medsam"]:
        tool = build_tool(spec)
        for split in args.split:
            for item in read_volume_manifest(args.manifest, split):
                volume = read_volume(item.file, modality=item.modality)
                encoder = SliceEncoder(tool, volume, args.cache_dir)
                labels = read_label_map(volume)
                for label_id in item.labels:
                    target = labels.mask(label_id)
                    if not target.any():
                        continue
                    key = reference_key_slice(target)
                    session = VolumeSession(tool, volume, encoder=encoder)
                    oracle = build_policy("oracle", ground_truth=volume.to_display(target[key]), target_iou=0.9)
                    session.run_agent(oracle, "Segment the structure.", key, max_turns=5)
                    for index in session.reached:
                        state = session.states[index]
                        reference = volume.to_display(target[index])
                        if state.clicks or (state.mask ^ reference).sum() < 20:
                            continue
                        click, _ = next_click(state.mask, reference)
                        seed = seed_click(state.mask, (click,))
                        kind = ("positive" if click.positive else "negative") + ("" if reference.any() else
                                                                                 ", past the structure")
                        for rule in RULES:
                            clicks = ((seed,) if rule.startswith("seed") and seed else ()) + (click,)
                            output = session.tool.predict(encoder.embedding(index), list(clicks), state.logits)
                            keep = without_refused_blobs if rule.endswith("+empty") else refused_blobs_only
                            mask = keep(output.mask, clicks)
                            gain = (dice(mask, reference) - dice(state.mask, reference) if reference.any()
                                    else 1.0 - mask.sum() / state.mask.sum())
                            gains[(spec, item.source, kind, rule)].append(gain)
                print(f"{spec} {split} {item.file.name} done", flush=True)
    print("\ntool | source | click | n | " + " | ".join(RULES))
    for group in sorted({key[:3] for key in gains}):
        cells = " | ".join(f"{np.mean(gains[group + (rule,)]):+.3f}" for rule in RULES)
        print(f"{group[0]} | {group[1]} | {group[2]} | {len(gains[group + ('click',)])} | {cells}")


if __name__ == "__main__":
    main()
