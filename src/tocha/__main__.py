"""`python -m tocha ...` (what torchrun runs: torchrun --nproc-per-node N -m tocha train ...)."""

import sys

from tocha.cli import main

if __name__ == "__main__":
    sys.exit(main())
