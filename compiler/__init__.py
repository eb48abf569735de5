"""bitsmith: a hardware-aware quantization compiler.

    import bitsmith
    artifact = bitsmith.compile("model.onnx", target="host", input_shapes={"input": (1, 3, 224, 224)},
                                output_dir="out/model")
    outputs = artifact.run({"input": x})
    same = bitsmith.Artifact.load("out/model")      # verifies every file's SHA-256 before loading code
"""

__version__ = "0.1.0"

from .artifact import Artifact, TensorSpec  # noqa: E402
from .errors import (  # noqa: E402
    ArtifactError, BitsmithError, BudgetError, BuildError, DataError, GateFailed, ModelError, OutputError,
    UnsupportedError, UsageError,
)
from .pipeline import compile_model as compile  # noqa: E402

__all__ = [
    "Artifact", "TensorSpec", "compile", "__version__",
    "BitsmithError", "UsageError", "ModelError", "UnsupportedError", "DataError", "BudgetError",
    "ArtifactError", "BuildError", "OutputError", "GateFailed",
]
