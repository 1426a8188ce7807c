"""Per source: how the trajectories of a file ended (reached the target IoU after k clicks, or the step limit).

    python scripts/trajectory_stats.py runs/lite/trajectories_train.jsonl
"""

import sys
from collections import Counter, defaultdict

from ibisagent.training.trajectories import read_trajectories

endings: dict[str, Counter] = defaultdict(Counter)
for record in read_trajectories(sys.argv[1]):
    ending = f"target after {len(record['steps'])}" if record["stop"] == "target_iou" else record["stop"]
    endings[record["source"]][(record["image"], record["label"], ending)] += 1
for source, seen in sorted(endings.items()):
    counts = Counter(ending for (_, _, ending) in seen)  # one simulation per pair, whatever its query kinds
    total = sum(counts.values())
    shares = ", ".join(f"{ending}: {n / total:.0%}" for ending, n in counts.most_common(4))
    print(f"{source}: {total} pairs; {shares}")
