"""``python -m epsweep``: the same as the ``epsweep`` executable."""

import sys

from epsweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
