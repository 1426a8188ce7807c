"""Copy a trained IBIS-lite checkpoint into models/ after checking it loads (it is saved as float16 already).

    python scripts/ship_lite_policy.py runs/lite/sft_best.pt models/lite_policy.pt
"""

import hashlib
import shutil
import sys
from pathlib import Path

from ibisagent.outputs import publish
from ibisagent.policies.lite import load_lite_checkpoint

network, metadata = load_lite_checkpoint(sys.argv[1])
staged = Path(sys.argv[2]).with_name(f".{Path(sys.argv[2]).name}.tmp")
shutil.copyfile(sys.argv[1], staged)
publish(staged, sys.argv[2])  # a killed copy never leaves a broken default
digest = hashlib.sha256(open(sys.argv[2], "rb").read()).hexdigest()
parameters = sum(p.numel() for p in network.parameters())
print(f"{sys.argv[2]}: stage {metadata['stage']}, {parameters} parameters, sha256 {digest}")
print(f"validation: {metadata['validation']}")
