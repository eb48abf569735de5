"""`python -m bitsmith ...`: the same command line as the `bitsmith` entry point."""

import sys

from .cli import main

sys.exit(main())
