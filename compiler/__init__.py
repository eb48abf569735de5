"""bitsmith: a hardware-aware quantization compiler.

    import bitsmith
    artifact = bitsmith.compile("model.onnx", target="host", input_shapes={"input": (1, 3, 224, 224)},
                                output_dir="out/model")
    outputs = artifact.run({"input": x})
    same = bitsmith.Artifact.load("out/model")      # verifies every file's SHA-256 before loading code
    int8 = bitsmith.compile("model.onnx", target="host", input_shapes=shapes, recipe="w8a8",
                            calibration=calibration_batches)  # integer-only, bit-exact vs the integer reference
    fit = bitsmith.compile("model.onnx", "host", calibration=calibration_batches,
                           constraints=bitsmith.Constraints(size_mb=2.0, max_metric_drop=0.01))
    fit.report(eval_batches, fp32_model="model.onnx").save("out/report")   # report.json / .md / .html
    reports = bitsmith.bench("model.onnx", ["x86-avx2", "x86-avx512"], data=eval_batches,
                             calibration=calibration_batches, recipe="w8a8")  # one Report per target

    graph = bitsmith.load_model("model.onnx", {"input": (8, 3, 224, 224)})      # the typed IR
    q = bitsmith.quantize(graph, bitsmith.preset("w8a8"), calibration_batches)  # annotated with QuantSpecs
    bitsmith.Simulator(q).run({"input": x})                                    # fake-quantized execution
    bitsmith.export_onnx(q, "model_qdq.onnx")                                  # QDQ ONNX for ONNX Runtime
"""

import os as _os

# torch's OpenMP workers spin-wait after each parallel region by default; in a process that also runs
# TVM kernels they starve TVM's thread pool (measured: MobileNetV2 7.6 ms -> 300 ms on 2 cores). Must be
# set before torch loads its OpenMP runtime; an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from .artifact import Artifact, TensorSpec  # noqa: E402
from .constraints import Constraints  # noqa: E402
from .errors import (  # noqa: E402
    ArtifactError, BitsmithError, BudgetError, BuildError, DataError, GateFailed, ModelError, OutputError,
    UnsupportedError, UsageError,
)
from .pipeline import compile_model as compile, load_model  # noqa: E402
from .quantize import quantize  # noqa: E402
from .recipes import PRESETS, QuantRecipe, preset  # noqa: E402
from .simulate import Simulator  # noqa: E402
from .backends.onnx_qdq import export_onnx, ort_runnable  # noqa: E402
from .report import Report  # noqa: E402
from .bench import BenchSettings, bench  # noqa: E402

__all__ = [
    "Artifact", "TensorSpec", "Constraints", "Report", "bench", "BenchSettings", "compile", "load_model", "quantize", "preset", "PRESETS", "QuantRecipe", "Simulator",
    "export_onnx", "ort_runnable", "__version__",
    "BitsmithError", "UsageError", "ModelError", "UnsupportedError", "DataError", "BudgetError",
    "ArtifactError", "BuildError", "OutputError", "GateFailed",
]
