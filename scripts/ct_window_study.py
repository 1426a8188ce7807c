"""Which CT display window should the agent see? Writes windowed CT slices as an `ibis evaluate` manifest.

The embedded policy and click decoder learnt CT from the BTCV PNGs of
../shared/data/med2d, whose grey levels follow a wide window; DICOM and
NIfTI CT reach the agent through a display window chosen by the reader. This
writes the same real CT slices under several windows, one manifest source
per (volume, window), so one `ibis evaluate` run compares them on the same
pairs. No test-split data is used: the volumes are the TotalSegmentator
example CT (3 mm; its masks are a model's output, fine for comparing windows,
not for accuracy claims) and the dcmqi CT slices with dcmqi's liver SEG.

    python scripts/ct_window_study.py --out runs/ct_windows
    ibis evaluate --manifest runs/ct_windows/manifest.csv --split study --policy lite \\
        --compare lite-one-click --compare oracle --json runs/ct_windows/eval.json
"""

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ibisagent.dicom import read_series, segment_mask
from ibisagent.imaging.io import radiological_slice, read_nifti_volume
from ibisagent.imaging.windowing import CT_WINDOWS, apply_window, to_display

TOTALSEG = Path("../shared/data/volumes/totalseg-example")
DCMQI_CT = Path("../shared/data/dicom/dcmqi-ct-3slice")
DCMQI_LIVER = Path("../shared/data/dicom/dcmqi-seg/liver.dcm")
# TotalSegmentator class names of the BTCV organs the policy was trained on -> the manifest's label names
BTCV_LABELS = {name: name.replace("_", " ") for name in (
    "liver", "spleen", "kidney_left", "kidney_right", "gallbladder", "stomach", "pancreas", "adrenal_gland_left",
    "adrenal_gland_right", "aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein", "esophagus")}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", required=True, type=Path)
parser.add_argument("--windows", nargs="+", default=[*CT_WINDOWS, "percentile"],
                    help="CT_WINDOWS names, 'percentile' (per slice) or NAME=CENTER,WIDTH in HU")
parser.add_argument("--slice-step", type=int, default=2, help="every n-th slice of the TotalSegmentator CT")
parser.add_argument("--min-pixels", type=int, default=20, help="smallest target kept (pixels on the slice)")
args = parser.parse_args()


def window_function(spec: str):
    name, _, values = spec.partition("=")
    if not values:  # a preset or "percentile": exactly what the readers apply
        return name, lambda hu: to_display(hu, window=name)
    center, width = (float(v) for v in values.split(","))
    return name, lambda hu: apply_window(hu, center, width)


def slices():
    """(volume name, slice name, HU slice in the standard display, {label: mask})."""
    volume = read_nifti_volume(TOTALSEG / "example_ct_sm.nii.gz")
    labels = read_nifti_volume(TOTALSEG / "example_seg.nii.gz")
    ids = {name: int(key) for key, name in json.loads((TOTALSEG / "class_map.json").read_text())["total"].items()}
    for index in range(0, volume.shape[2], args.slice_step):
        label_slice = radiological_slice(labels, index)
        masks = {BTCV_LABELS[name]: label_slice == ids[name] for name in BTCV_LABELS if name in ids}
        yield "totalseg-ct", f"z{index:03d}", radiological_slice(volume, index), masks
    series = read_series(DCMQI_CT, slice_index=0)  # the whole sorted volume; any slice index reads it
    for index in range(series.slice_count):
        liver = segment_mask(DCMQI_LIVER, str(series.datasets[index].SOPInstanceUID))
        yield "dcmqi-ct", f"s{index}", series.display.to_display(series.volume[index]), {
            "liver": series.display.to_display(liver)}


windows = [window_function(spec) for spec in args.windows]
rows = []
for volume_name, slice_name, hu, masks in slices():
    kept = {label: mask for label, mask in masks.items() if mask.sum() >= args.min_pixels}
    if not kept:
        continue
    for label, mask in kept.items():
        mask_path = args.out / "masks" / f"{volume_name}_{slice_name}_{label.replace(' ', '_')}.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
        for window_name, show in windows:
            image_path = args.out / "images" / window_name / f"{volume_name}_{slice_name}.png"
            if not image_path.exists():
                image_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(show(hu)).save(image_path)
            rows.append({"image": str(image_path.relative_to(args.out)), "mask": str(mask_path.relative_to(args.out)),
                         "label": label, "modality": "CT", "source": f"{volume_name} {window_name}",
                         "case": volume_name, "split": "study"})
with (args.out / "manifest.csv").open("w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
print(f"{len(rows)} pairs ({len(rows) // len(windows)} per window, {len(windows)} windows) -> {args.out / 'manifest.csv'}")
