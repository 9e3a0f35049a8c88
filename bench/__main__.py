"""Entry point: `python -m bench run|ab|corpus` (see bench/cli.py)."""

import sys

from bench.cli import main

sys.exit(main())
