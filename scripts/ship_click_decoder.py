"""Copy a trained click decoder into models/ as float16 (half the size; the tool loads it as float32).

    python scripts/ship_click_decoder.py runs/click_tuning/best_decoder.pt models/lite_medsam_click_decoder.pt
"""

import hashlib
import sys

import torch

from ibisagent.outputs import save_torch_atomic

state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
half = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
save_torch_atomic(half, sys.argv[2])  # a killed copy never leaves a broken default
digest = hashlib.sha256(open(sys.argv[2], "rb").read()).hexdigest()
print(f"{sys.argv[2]}: {sum(v.numel() for v in half.values())} parameters, sha256 {digest}")
