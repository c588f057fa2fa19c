"""``python -m ignitrain.cli``: the same command line as ``python -m ignitrain``."""

import sys

from ignitrain.cli.entry import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
