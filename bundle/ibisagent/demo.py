"""The shipped demo: pydicom's abdominal MR (`examples_overlay.dcm`) and our liver reference for it.

The reference is LiteMedSAM's answer to a hand-drawn box, checked by eye
(`scripts/make_demo_reference.py`); it steers the oracle policy in the demo
and is not expert ground truth.
"""

from pathlib import Path

DEMO_REFERENCE = Path(__file__).parent / "assets" / "examples_overlay_liver.png"
