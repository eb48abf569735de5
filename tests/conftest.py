"""Test-wide set-up: the tests folder is importable (shared case tables), and hypothesis runs
derandomized by default so CI is reproducible; `HYPOTHESIS_PROFILE=explore` searches at random."""

import os
import pathlib
import sys

from hypothesis import settings

sys.path.insert(0, str(pathlib.Path(__file__).parent))

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", max_examples=1000, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
