#!/usr/bin/env python3
"""The original FAGAN project's entry point, kept for its users.

``python train.py --images_dir data/celeba --batch_size 32 ...`` takes every flag of the
original train.py with the same meaning (and the new ones of ``fagan train``).
"""

import sys
from pathlib import Path

try:
    from fagan.cli import run_command
except ImportError:  # a checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    from fagan.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("train", prog="train.py"))
