"""IR <-> JSON + safetensors. Exact round trip; no pickle anywhere.

The JSON holds structure (values, nodes, attributes, quant specs without their arrays); the
safetensors file holds every constant under its own name and each QuantSpec's arrays under
`quant/<value>/scale` and `quant/<value>/zero_point` (a dynamic spec's placeholders too; its JSON carries
`"dynamic": true`, omitted for static specs). Shapes come from the JSON, because safetensors
stores a 0-d array as shape [1].
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load, save as st_save

from .errors import ModelError
from .ir import Graph, Node, QuantSpec, Value

FORMAT = "bitsmith-ir"
VERSION = 1
_QUANT_FIELDS = ("format", "bits", "granularity", "axis", "block_size", "scale_format", "tensor_scale", "symmetric")


def graph_to_json(graph: Graph) -> dict[str, Any]:
    def value_json(v: Value) -> dict[str, Any]:
        out: dict[str, Any] = {"shape": list(v.shape), "dtype": v.dtype}
        if v.quant is not None:
            out["quant"] = {k: getattr(v.quant, k) for k in _QUANT_FIELDS}
            if v.quant.dynamic:  # written only when set, so static specs serialize as before the field existed
                out["quant"]["dynamic"] = True
            out["quant"]["scale_shape"] = list(v.quant.scale.shape)
            out["quant"]["zero_point_shape"] = list(v.quant.zero_point.shape)
        return out

    return {
        "format": FORMAT,
        "version": VERSION,
        "name": graph.name,
        "inputs": graph.inputs,
        "outputs": graph.outputs,
        "values": {k: value_json(v) for k, v in graph.values.items()},
        "constants": list(graph.constants),
        "nodes": [{"op": n.op, "name": n.name, "inputs": n.inputs, "outputs": n.outputs, "attrs": n.attrs}
                  for n in graph.nodes],
        "metadata": graph.metadata,
    }


def graph_tensors(graph: Graph) -> dict[str, np.ndarray]:
    tensors = {k: np.ascontiguousarray(v) for k, v in graph.constants.items()}
    for name, value in graph.values.items():
        if value.quant is not None:
            tensors[f"quant/{name}/scale"] = np.ascontiguousarray(value.quant.scale)
            tensors[f"quant/{name}/zero_point"] = np.ascontiguousarray(value.quant.zero_point)
    return tensors


def graph_from_json(doc: dict[str, Any], tensors: dict[str, np.ndarray]) -> Graph:
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ModelError(f"not a bitsmith IR document (format={doc.get('format')!r}, version={doc.get('version')!r})")
    values: dict[str, Value] = {}
    for name, v in doc["values"].items():
        quant = None
        if "quant" in v:
            q = v["quant"]
            quant = QuantSpec(**{k: q[k] for k in _QUANT_FIELDS}, dynamic=bool(q.get("dynamic", False)),
                              scale=tensors[f"quant/{name}/scale"].reshape(q["scale_shape"]),
                              zero_point=tensors[f"quant/{name}/zero_point"].reshape(q["zero_point_shape"]))
        values[name] = Value(name, tuple(v["shape"]), v["dtype"], quant)
    return Graph(
        name=doc["name"],
        inputs=list(doc["inputs"]),
        outputs=list(doc["outputs"]),
        nodes=[Node(n["op"], n["name"], list(n["inputs"]), list(n["outputs"]), dict(n["attrs"])) for n in doc["nodes"]],
        values=values,
        # safetensors stores 0-d arrays as shape [1]: the typed shape restores them
        constants={k: tensors[k].reshape(values[k].shape) for k in doc["constants"]},
        metadata=dict(doc.get("metadata", {})),
    )


def dumps(graph: Graph) -> tuple[str, bytes]:
    """(JSON text, safetensors bytes) for a graph."""
    return json.dumps(graph_to_json(graph), indent=1, sort_keys=True), st_save(graph_tensors(graph))


def loads(json_text: str, tensor_bytes: bytes) -> Graph:
    return graph_from_json(json.loads(json_text), st_load(tensor_bytes))


def save(graph: Graph, json_path: str | Path, tensor_path: str | Path) -> None:
    text, blob = dumps(graph)
    Path(json_path).write_text(text)
    Path(tensor_path).write_bytes(blob)


def load(json_path: str | Path, tensor_path: str | Path) -> Graph:
    return loads(Path(json_path).read_text(), Path(tensor_path).read_bytes())
