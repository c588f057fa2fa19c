"""``python -m ignitrain``: the same command line as the ``ignitrain`` script."""

import sys

from ignitrain.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
