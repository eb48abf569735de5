"""mypy passes on the whole package (configuration: pyproject.toml [tool.mypy]).

The package's folders map onto `bitsmith` through setuptools' package-dir (compiler/ -> bitsmith,
passes/ -> bitsmith.passes, ...), which mypy cannot follow from an editable install: the test lays
the same tree out with symbolic links and checks `-p bitsmith` there.
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUBPACKAGES = {"passes": "passes", "frontends": "frontends", "backends": "backends"}


def package_tree(root: Path) -> Path:
    package = root / "bitsmith"
    package.mkdir()
    for entry in (REPO / "compiler").iterdir():
        (package / entry.name).symlink_to(entry)
    for name, folder in SUBPACKAGES.items():
        (package / name).symlink_to(REPO / folder)
    return root


def test_mypy_passes_on_the_package(tmp_path):
    root = package_tree(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
                           "--cache-dir", str(REPO / ".cache" / "mypy"), "-p", "bitsmith"],
                          cwd=root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
