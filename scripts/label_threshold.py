"""Choose the label finder's similarity threshold on validation questions; report it on the test questions.

    python scripts/label_threshold.py [--test ../shared/data/med2d/queries.json]

Validation: scripts/label_questions_val.yaml (our own questions, with targets we know and targets we do not).
A question costs 1 when the finder gives no label for a target we know, 2 when it gives a wrong label (a
wrong code misleads a viewer, the generic code is only vague). The similarity threshold
printed is the middle of the range that costs least on validation; the test questions (the evaluation's
reasoning questions) are only scored with them, never used to choose them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from ibisagent.labels import label_from_query
from ibisagent.policies.query_encoder import shared_query_encoder

HERE = Path(__file__).resolve().parent


def _score(cases: list[tuple[str, str | None]], threshold: float) -> tuple[int, float, list[str]]:
    """(cost, accuracy, misses) of the finder on (question, expected label or None) cases."""
    cost, wrong = 0, []
    for question, expected in cases:
        choice = label_from_query(question, shared_query_encoder, threshold)
        if choice.label != expected:
            cost += 1 if choice.label is None else 2
            wrong.append(f"{question!r}: expected {expected}, got {choice.label} ({choice.how}, "
                         f"similarity {choice.similarity})")
    return cost, 1 - len(wrong) / len(cases), wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val", default=str(HERE / "label_questions_val.yaml"))
    parser.add_argument("--test", default=str(HERE.parents[1] / "shared" / "data" / "med2d" / "queries.json"))
    args = parser.parse_args()
    val = yaml.safe_load(Path(args.val).read_text())
    cases = [(q, label) for label, questions in val["targets"].items() for q in questions]
    cases += [(q, None) for q in val["none"]]
    thresholds = [float(t) for t in np.round(np.arange(0.30, 0.81, 0.01), 2)]
    costs = {t: _score(cases, t)[0] for t in thresholds}
    least = min(costs.values())
    best = [t for t in thresholds if costs[t] == least]
    threshold = best[len(best) // 2]
    cost, accuracy, wrong = _score(cases, threshold)
    print(f"validation: {len(cases)} questions; least cost {least} for thresholds {best[0]:.2f}..{best[-1]:.2f}; "
          f"chosen {threshold:.2f}: accuracy {accuracy:.3f}")
    for line in wrong:
        print(f"  val miss: {line}")
    if Path(args.test).is_file():
        reasoning = json.loads(Path(args.test).read_text())["reasoning"]
        test = [(q, label) for label, questions in reasoning.items() for q in questions]
        cost, accuracy, wrong = _score(test, threshold)
        labelled = sum(1 for q, _ in test if label_from_query(q, shared_query_encoder, threshold).label)
        print(f"test ({args.test}): {len(test)} reasoning questions at the chosen settings: accuracy {accuracy:.3f}, "
              f"a label for {labelled}, {sum(1 for w in wrong if 'got None' not in w)} of them wrong")
        for line in wrong:
            print(f"  test miss: {line}")


if __name__ == "__main__":
    main()
