"""Fit IBIS-lite's confidence on validation runs and write its calibration beside the checkpoint.

    ibis evaluate --split val --policy lite --query-kind referring --cache-dir ~/.cache/ibisagent/embeddings --json V1
    ibis evaluate --split val --policy lite --query-kind reasoning --cache-dir ~/.cache/ibisagent/embeddings --json V2
    python scripts/calibrate_confidence.py V1 V2 [--checkpoint models/lite_policy.pt] [--write]

A run failed when its IoU is below --failure-iou (0.5). For the tool's
predicted IoU alone and for logistic models over IBIS-lite's features (see
`ibisagent.confidence`) it prints the AUROC of the estimate for failure and
the threshold of largest Youden J (share of failures flagged minus share of
good runs flagged), with what flagging below it does. Beside each
model's AUROC fitted on all runs, the leave-one-source-out AUROC (each
source scored by a model fitted on the others: how it carries to a source it
was not fitted on). --write stores the chosen model (CHOSEN), fitted on all
the runs given, as `<checkpoint stem>.confidence.json`.
Everything here is chosen on validation; docs/lite.md ("Confidence") records the figures.
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from ibisagent.confidence import ConfidenceModel, calibration_path, transformed
from ibisagent.metrics import auroc
from ibisagent.outputs import write_json_atomic
from ibisagent.policies.lite import shipped_lite_policy

FEATURES = {"tool_iou": "identity", "belief_inside": "logit", "stop_probability": "logit", "mask_fraction": "log"}
CANDIDATES = {"tool_iou": ("tool_iou",), "tool_iou + belief_inside": ("tool_iou", "belief_inside"),
              "tool_iou + belief_inside + stop_probability": ("tool_iou", "belief_inside", "stop_probability"),
              "all four": tuple(FEATURES)}
CHOSEN = "tool_iou + belief_inside"  # the best leave-one-source-out AUROC on validation (docs/lite.md, Confidence)

parser = argparse.ArgumentParser()
parser.add_argument("reports", nargs="+")
parser.add_argument("--policy", default="lite")
parser.add_argument("--checkpoint", default=str(shipped_lite_policy()))
parser.add_argument("--failure-iou", type=float, default=0.5)
parser.add_argument("--write", action="store_true", help=f"write the {CHOSEN} model beside the checkpoint")
args = parser.parse_args()

records = [record for path in args.reports for run in json.loads(Path(path).read_text())["runs"]
           if run["policy"] == args.policy for record in run["pairs"] if record.get("confidence_features")]
if not records:
    sys.exit(f"no runs of policy {args.policy!r} with confidence features in {args.reports}")
iou = np.array([r["iou"] for r in records])
good = iou >= args.failure_iou
sources = np.array([r["source"] for r in records])


def design(names):
    return np.array([[transformed(float(r["confidence_features"][n]), FEATURES[n]) for n in names] for r in records])


def fit(x, y, l2=1e-2):
    """L2-regularised logistic regression on standardised columns; coefficients for the raw columns."""
    mean, scale = x.mean(0), x.std(0) + 1e-9
    z = (x - mean) / scale

    def loss(w):
        s = z @ w[1:] + w[0]
        return np.mean(np.logaddexp(0, s) - y * s) + l2 * np.sum(w[1:] ** 2)

    w = minimize(loss, np.zeros(x.shape[1] + 1), method="L-BFGS-B").x
    coefficients = w[1:] / scale
    return coefficients, float(w[0] - np.sum(coefficients * mean))


def held_out_auroc(x):
    """AUROC of scores each source gets from a model fitted on the other sources."""
    scores = np.zeros(len(x))
    for source in np.unique(sources):
        held = sources == source
        coefficients, intercept = fit(x[~held], good[~held].astype(float))
        scores[held] = x[held] @ coefficients + intercept
    return auroc(-scores, ~good)


def youden(value):
    thresholds = np.round(np.arange(0.02, 0.99, 0.01), 2)
    j = [(value[~good] < t).mean() - (value[good] < t).mean() for t in thresholds]
    return float(thresholds[int(np.argmax(j))])


def row(name, value, held_out=float("nan")):
    threshold = youden(value)
    flagged = value < threshold
    print(f"| {name} | {auroc(-value, ~good):.3f} | {held_out:.3f} | {threshold:.2f} | {int(flagged.sum())}/{len(value)} | "
          f"{int((flagged & ~good).sum())}/{int((~good).sum())} | {int((flagged & good).sum())}/{int(good.sum())} | "
          f"{iou[~flagged].mean():.3f} | {iou.mean():.3f} |")
    return threshold


print(f"{len(records)} runs of {args.policy} in {len(args.reports)} report(s), {int((~good).sum())} with IoU < "
      f"{args.failure_iou}")
print("| estimate | AUROC (IoU < 0.5) | leave-one-source-out AUROC | threshold (max Youden J) | flagged | "
      "failures flagged | good runs flagged | IoU unflagged | IoU all |")
print("|---|---|---|---|---|---|---|---|---|")
row("tool's predicted IoU (as is)", np.array([r["confidence_features"]["tool_iou"] for r in records]))
fitted = {}
for name, names in CANDIDATES.items():
    x = design(names)
    coefficients, intercept = fit(x, good.astype(float))
    value = 1 / (1 + np.exp(-(x @ coefficients + intercept)))
    fitted[name] = (names, coefficients, intercept, row(f"logistic: {name}", value, held_out_auroc(x)),
                    auroc(-value, ~good))
if args.write:
    names, coefficients, intercept, threshold, fitted_auroc = fitted[CHOSEN]
    checkpoint = Path(args.checkpoint)
    model = ConfidenceModel(tuple(names), tuple(FEATURES[n] for n in names),
                            tuple(round(float(c), 6) for c in coefficients), round(intercept, 6), threshold,
                            hashlib.sha256(checkpoint.read_bytes()).hexdigest(), "lite",
                            {"fitted_on": [Path(p).name for p in args.reports], "runs": len(records),
                             "failure_iou": args.failure_iou, "failures": int((~good).sum()),
                             "val_auroc": round(fitted_auroc, 4),
                             "tools": sorted({json.load(open(p)).get("tool", "?") for p in args.reports}),
                             "command": "python scripts/calibrate_confidence.py " + " ".join(sys.argv[1:])})
    out = calibration_path(checkpoint)
    write_json_atomic(out, model.to_dict())
    print(f"wrote {out}")
