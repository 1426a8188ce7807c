"""Make the demo's liver reference mask for pydicom's examples_overlay.dcm.

No expert mask exists for that image. This reference is LiteMedSAM's answer
to a box we drew around the liver by eye, checked visually: good enough for
the oracle to steer the demo, NOT ground truth. Rerun:
    python scripts/make_demo_reference.py bundle/ibisagent/assets/examples_overlay_liver.png
"""

import sys

import numpy as np
from PIL import Image
from pydicom.data import get_testdata_file
from scipy import ndimage

from ibisagent.imaging.io import read_image
from ibisagent.tools.factory import build_tool

LIVER_BOX = (38, 62, 190, 262)  # x0, y0, x1, y1 in pixels of the 484x300 image

image = read_image(get_testdata_file("examples_overlay.dcm")).rgb
tool = build_tool("lite-medsam")
mask = tool.predict(tool.encode(image), box=LIVER_BOX, multimask=False).mask
labels, count = ndimage.label(mask)
if count > 1:  # keep the largest component, fill holes
    mask = labels == (1 + int(np.argmax(ndimage.sum(mask, labels, range(1, count + 1)))))
mask = ndimage.binary_fill_holes(mask)
Image.fromarray(mask.astype(np.uint8) * 255).save(sys.argv[1])
print(f"reference: {int(mask.sum())} px in box {LIVER_BOX}")
