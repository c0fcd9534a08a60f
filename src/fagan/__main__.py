"""``python -m fagan`` is the ``fagan`` command."""

import sys

from fagan.cli import main

if __name__ == "__main__":
    sys.exit(main())
