"""`python -m tocha.cli ...` (what the tests run)."""

import sys

from tocha.cli import main

if __name__ == "__main__":
    sys.exit(main())
