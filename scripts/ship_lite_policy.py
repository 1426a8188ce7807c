"""Copy a trained IBIS-lite checkpoint into models/ after checking it loads (it is saved as float16 already).

    python scripts/ship_lite_policy.py runs/lite/sft_best.pt models/lite_policy.pt
"""

import hashlib
import shutil
import sys

from ibisagent.policies.lite import load_lite_checkpoint

network, metadata = load_lite_checkpoint(sys.argv[1])
shutil.copyfile(sys.argv[1], sys.argv[2])
digest = hashlib.sha256(open(sys.argv[2], "rb").read()).hexdigest()
parameters = sum(p.numel() for p in network.parameters())
print(f"{sys.argv[2]}: stage {metadata['stage']}, {parameters} parameters, sha256 {digest}")
print(f"validation: {metadata['validation']}")
