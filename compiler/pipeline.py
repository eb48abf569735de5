"""The compile driver: frontend -> passes -> backend -> artifact.

Data flows one way. Each stage is a plain function call here, so this file reads as the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import numpy as np
import onnx
from contextlib import contextmanager
from tqdm import tqdm

from . import __version__, targets
from .artifact import GRAPH, Artifact, TensorSpec, write_artifact
from .errors import UsageError
from .ir import Graph, verify
from .ops import OPS
from .serialize import graph_to_json

log = logging.getLogger("bitsmith")

ModelLike = str | Path | bytes | onnx.ModelProto | Graph


class Progress:
    """One progress bar over the pipeline's stages (silent with quiet=True)."""

    def __init__(self, stages: list[str], quiet: bool) -> None:
        self.bar = tqdm(total=len(stages), disable=quiet, unit="stage", leave=False)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.bar.set_description(name)
        log.info("%s ...", name)
        yield
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def load_model(model: ModelLike, input_shapes: dict[str, tuple[int, ...]] | None = None) -> Graph:
    """Any supported model form -> a verified IR graph."""
    if isinstance(model, Graph):
        verify(model, OPS)
        return model
    from .frontends.onnx import import_onnx

    return import_onnx(model, input_shapes)


def backend_for(target: targets.Target) -> ModuleType:
    """The backend module that builds a target family."""
    if target.family == "x86":
        from .backends import x86

        return x86
    raise UsageError(f"target {target.name!r} (family {target.family!r}) has no backend in this build of bitsmith")


def source_digest(model: ModelLike) -> str:
    if isinstance(model, (str, Path)):
        return hashlib.sha256(Path(model).read_bytes()).hexdigest()
    if isinstance(model, bytes):
        return hashlib.sha256(model).hexdigest()
    if isinstance(model, onnx.ModelProto):
        return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    return hashlib.sha256(json.dumps(graph_to_json(model), sort_keys=True).encode()).hexdigest()


def versions() -> dict[str, str]:
    import tvm
    import tvm_ffi

    return {"bitsmith": __version__, "tvm": tvm.__version__, "tvm_ffi": tvm_ffi.__version__,
            "onnx": onnx.__version__, "numpy": np.__version__}


def compile_model(model: ModelLike, target: str | targets.Target = "host", *,
                  input_shapes: dict[str, tuple[int, ...]] | None = None,
                  output_dir: str | Path | None = None, quiet: bool = False) -> Artifact:
    """Compile `model` for `target` and write a verified artifact (to `output_dir`, or a new
    temporary directory). Returns the loaded Artifact."""
    target = targets.load(target) if isinstance(target, str) else target
    backend = backend_for(target)
    out = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="bitsmith-")) / "artifact"
    progress = Progress(["import", "emit", "build", "write"], quiet)
    try:
        with progress.stage("import"):
            graph = load_model(model, input_shapes)
        with progress.stage("emit"):
            from .backends.relax_emit import emit_relax

            emitted = emit_relax(graph)
        with progress.stage("build"):
            executable = backend.build(emitted, target)
        with progress.stage("write"):
            manifest = _manifest(graph, target, model)
            params = {name: graph.constants[name] for name in emitted.param_names}
            write_artifact(out, manifest=manifest, export_library=lambda p: backend.export(executable, p),
                           params=params, extra_files={GRAPH: json.dumps(graph_to_json(graph), indent=1, sort_keys=True)})
    finally:
        progress.close()
    return Artifact.load(out)


def _manifest(graph: Graph, target: targets.Target, model: ModelLike) -> dict[str, Any]:
    def specs(names: list[str]) -> list[dict[str, Any]]:
        return [TensorSpec(n, graph.values[n].shape, graph.values[n].dtype).to_json() for n in names]

    return {
        "versions": versions(),
        "model": {"name": graph.name, "sha256": source_digest(model), "ops": graph.op_counts(),
                  "parameters": graph.parameter_count()},
        "target": target.to_json(),
        "device": "cpu",
        "precision": "fp32",
        "inputs": specs(graph.inputs),
        "outputs": specs(graph.outputs),
    }
