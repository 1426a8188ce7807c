"""The MAP's entry point: `python -m ibisagent.deploy -i INPUT -o OUTPUT ...` is `ibis deploy ...`."""

import sys

from ..cli import main

raise SystemExit(main(["deploy", *sys.argv[1:]]))
