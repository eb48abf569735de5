"""One exception hierarchy for bitsmith, with the CLI exit code each kind maps to.

Every message names the thing at fault (node, op, file, option) and says what to do next.

| exit code | exception            | meaning                                                   |
|-----------|----------------------|-----------------------------------------------------------|
| 1         | (uncaught)           | a bug in bitsmith: please report it with the traceback    |
| 2         | UsageError           | bad command-line option, unknown target, bad argument     |
| 3         | ModelError           | the model file is missing, corrupt, or not ONNX           |
| 4         | UnsupportedError     | the model uses ops or features bitsmith cannot compile    |
| 5         | DataError            | calibration / evaluation data of wrong shape, dtype, NaN  |
| 6         | BudgetError          | no configuration meets the requested budget               |
| 7         | ArtifactError        | artifact missing a file, tampered, or unreadable          |
| 8         | BuildError           | the backend failed to build the model                     |
| 9         | OutputError          | cannot write the output (permissions, disk full)          |
| 10        | GateFailed           | a --fail-if gate tripped (compile/bench succeeded)        |
"""

from __future__ import annotations


class BitsmithError(Exception):
    """Base class of every error bitsmith raises on purpose."""

    exit_code = 1


class UsageError(BitsmithError):
    exit_code = 2


class ModelError(BitsmithError):
    exit_code = 3
    onnx_reason: str | None = None  # what ONNX's own checker says about the model, when it was asked


class UnsupportedError(BitsmithError):
    exit_code = 4


class DataError(BitsmithError):
    exit_code = 5


class BudgetError(BitsmithError):
    exit_code = 6


class ArtifactError(BitsmithError):
    exit_code = 7


class BuildError(BitsmithError):
    exit_code = 8


class OutputError(BitsmithError):
    exit_code = 9


class GateFailed(BitsmithError):
    exit_code = 10


class IRError(BitsmithError):
    """The IR broke one of its invariants: always a bug in a frontend or a pass."""

    exit_code = 1
