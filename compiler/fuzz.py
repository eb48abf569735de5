"""Mutation fuzzing of the ONNX frontend and the compile pipeline, on the real zoo models.

A case is a deterministic function of (seed, index): one zoo ONNX file (or bitsmith's own QDQ export
of one), changed by one to three mutations, at the byte level (flips, truncation, splices) or at the
protobuf level (op types, attributes and their types, initializer shapes, dtypes and values, graph
input shapes, rewired / dropped / reordered nodes, opset, domains, graph outputs). Each case is
imported with `import_onnx`; a share of those that import is also compiled with `bitsmith.compile`
into a scratch directory, and a failed compile must leave nothing there.

Outcomes:
    ok        imported (and compiled) without error
    rejected  a BitsmithError with a documented exit code (bitsmith refused the input, as it should)
    crash     any other exception, an IRError (the IR verifier caught a frontend or pass bug), a failed
              compile that left files behind, or the worker process dying (signal, abort)
    hang      the case ran past its time limit

Cases run in worker processes (`python -m bitsmith.fuzz --worker`) so that a native abort or a hang
ends the case, not the campaign: the parent kills and restarts the worker and goes on. Workers run
under an address-space limit, so a mutated shape asking for terabytes fails inside the case instead of
exhausting the machine. The campaign is reproducible: `replay(seed, index)` rebuilds and reruns one
case in the calling process, with its traceback.

Coverage-guided fuzzers (atheris, hypothesis) run cases in-process, where a native abort or a hang
ends the whole run; this harness trades their guidance for structure-aware mutations of real models
and process isolation.
"""

from __future__ import annotations

import json
import os
import random
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import numpy_helper

# seed model -> relative weight in the case mix (small, fast models are drawn more often)
SEED_MODELS: dict[str, int] = {
    "mtcnn_rnet": 6, "mtcnn_onet": 4, "ppocr_cls": 4, "magika": 3, "ppocr_det": 2, "mobilenet_v2": 2,
    "minilm_l6": 1, "silero_vad": 1, "ddddocr_common_old": 1, "mtcnn_rnet_qdq": 4,
}
# the seeds whose mutants are also compiled (a share of them): the models that build in seconds
COMPILED_MODELS = ("mtcnn_rnet", "mtcnn_onet", "ppocr_cls", "magika", "mtcnn_rnet_qdq")
IMPORT_LIMIT_S = 60.0
COMPILE_LIMIT_S = 300.0
WORKER_MEMORY_BYTES = 6 << 30  # address-space limit of a worker (torch + TVM + a compile peak at 1.4 GiB)


@dataclass
class Case:
    index: int
    model: str
    mutations: list[str]
    blob: bytes
    input_shapes: dict[str, tuple[int, ...]]
    compile: bool


@dataclass
class Outcome:
    index: int
    model: str
    mutations: list[str]
    kind: str  # ok, rejected, crash, hang
    compiled: bool = False
    error: str = ""  # exception class
    exit_code: int | None = None
    message: str = ""
    seconds: float = 0.0
    detail: str = ""  # traceback tail or worker stderr for crashes
    # a ModelError raised because a converter failed on a node: "onnx" when ONNX's shape inference
    # says what is wrong with the model, "unexplained" when only the converter's error does
    converter_failure: str = ""


# ---------------------------------------------------------------------------------------------
# Seed models
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def seed_model(name: str) -> tuple[bytes, dict[str, tuple[int, ...]]]:
    """The ONNX bytes and compile shapes of a seed: a zoo model, or `<zoo model>_qdq`, the zoo model
    quantized W8A8 by bitsmith on real calibration inputs and exported as QDQ ONNX."""
    from . import zoo

    if name.endswith("_qdq"):
        from .backends.onnx_qdq import export_onnx
        from .frontends.onnx import import_onnx
        from .quantize import quantize
        from .recipes import preset

        base = name[: -len("_qdq")]
        shapes = zoo.input_shapes(base)
        quantized = quantize(import_onnx(zoo.onnx_path(base), shapes), preset("w8a8"),
                             zoo.inputs(base, 2, split="calib"), quiet=True)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(quantized, path)
            return path.read_bytes(), shapes
    return zoo.onnx_path(name).read_bytes(), zoo.input_shapes(name)


@lru_cache(maxsize=None)
def _seed_proto(name: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    proto.ParseFromString(seed_model(name)[0])
    return proto


# ---------------------------------------------------------------------------------------------
# Mutations: each takes the model (bytes or a ModelProto to edit in place) and a Random, and
# returns a short description of what it changed.
# ---------------------------------------------------------------------------------------------
_OP_TYPES = ("Add", "Mul", "Relu", "Conv", "MatMul", "Gemm", "Reshape", "Transpose", "Concat", "Slice",
             "Gather", "Softmax", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Squeeze",
             "Unsqueeze", "Expand", "Tile", "Pad", "Resize", "Split", "ReduceMean", "Cast", "Clip", "Shape",
             "ConstantOfShape", "Range", "Where", "PRelu", "BatchNormalization", "LayerNormalization",
             "QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "DepthToSpace", "If", "Loop",
             "NonZero", "TopK", "Einsum", "NoSuchOp", "")
_INTS = (0, 1, -1, 2, 3, -2, 7, 1 << 20, -(1 << 31), (1 << 62), 65535)
_FLOATS = (0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), -float("inf"), 0.5)
_STRINGS = (b"", b"NOTSET", b"SAME_UPPER", b"VALID", b"linear", b"cubic", b"nearest", b"reflect", b"DCR",
            b"\xff\xfe", b"x" * 300)
_ATTR_NAMES = ("axis", "axes", "group", "pads", "strides", "kernel_shape", "dilations", "perm", "mode",
               "auto_pad", "ceil_mode", "to", "keepdims", "transB", "alpha", "blocksize", "value", "split")


def _nodes_with(proto: onnx.ModelProto, rng: random.Random, pred: Callable[[onnx.NodeProto], bool]
                ) -> onnx.NodeProto | None:
    nodes = [n for n in proto.graph.node if pred(n)]
    return rng.choice(nodes) if nodes else None


def _value_names(proto: onnx.ModelProto) -> list[str]:
    g = proto.graph
    names = {v.name for v in g.input} | {t.name for t in g.initializer}
    names |= {o for n in g.node for o in n.output if o}
    return sorted(names)


def m_truncate(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    cut = rng.randrange(len(blob))
    return blob[:cut], f"truncate to {cut} bytes"


def m_flip_bytes(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(blob)
    count = rng.choice((1, 2, 4, 16, 64))
    for _ in range(count):
        data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
    return bytes(data), f"flip {count} bytes"


def m_splice(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    start = rng.randrange(len(blob))
    length = rng.choice((1, 8, 64, 4096))
    kind = rng.choice(("random", "duplicate", "delete", "zero"))
    if kind == "random":
        return blob[:start] + rng.randbytes(length) + blob[start:], f"insert {length} random bytes at {start}"
    if kind == "duplicate":
        return blob[:start] + blob[start:start + length] * 2 + blob[start + length:], f"duplicate {length} bytes at {start}"
    if kind == "delete":
        return blob[:start] + blob[start + length:], f"delete {length} bytes at {start}"
    return blob[:start] + bytes(length) + blob[start + length:], f"zero {length} bytes at {start}"


def m_op_type(proto: onnx.ModelProto, rng: random.Random) -> str:
    node = _nodes_with(proto, rng, lambda n: True)
    if node is None:
        return "no node"
    old, node.op_type = node.op_type, rng.choice(_OP_TYPES)
    return f"node {node.name!r}: op {old} -> {node.op_type!r}"


def _mutate_attribute_value(attr: onnx.AttributeProto, rng: random.Random) -> None:
    kind = attr.type
    if kind == onnx.AttributeProto.INT:
        attr.i = rng.choice(_INTS)
    elif kind == onnx.AttributeProto.FLOAT:
        attr.f = rng.choice(_FLOATS)
    elif kind == onnx.AttributeProto.STRING:
        attr.s = rng.choice(_STRINGS)
    elif kind == onnx.AttributeProto.INTS:
        values = list(attr.ints)
        choice = rng.randrange(4)
        if choice == 0 and values:
            values[rng.randrange(len(values))] = rng.choice(_INTS)
        elif choice == 1:
            values = values[: rng.randrange(len(values) + 1)]
        elif choice == 2:
            values = values + [rng.choice(_INTS) for _ in range(rng.randrange(1, 4))]
        else:
            rng.shuffle(values)
        del attr.ints[:]
        attr.ints.extend(values)
    elif kind == onnx.AttributeProto.FLOATS:
        values = list(attr.floats) or [0.0]
        values[rng.randrange(len(values))] = rng.choice(_FLOATS)
        del attr.floats[:]
        attr.floats.extend(values)
    elif kind == onnx.AttributeProto.TENSOR:
        _mutate_tensor(attr.t, rng)
    else:
        attr.type = onnx.AttributeProto.INT
        attr.i = rng.choice(_INTS)


def m_attribute(proto: onnx.ModelProto, rng: random.Random) -> str:
    node = _nodes_with(proto, rng, lambda n: len(n.attribute) > 0)
    if node is None:
        return "no attribute"
    attr = rng.choice(node.attribute)
    action = rng.choice(("value", "value", "value", "drop", "retype", "add"))
    if action == "drop":
        node.attribute.remove(attr)
    elif action == "retype":
        attr.type = rng.choice((onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT, onnx.AttributeProto.INTS,
                                onnx.AttributeProto.STRING, onnx.AttributeProto.TENSOR))
    elif action == "add":
        extra = node.attribute.add()
        extra.name = rng.choice(_ATTR_NAMES)
        extra.type = rng.choice((onnx.AttributeProto.INT, onnx.AttributeProto.INTS, onnx.AttributeProto.FLOAT))
        _mutate_attribute_value(extra, rng)
        return f"node {node.name!r} ({node.op_type}): add attribute {extra.name}"
    else:
        _mutate_attribute_value(attr, rng)
    return f"node {node.name!r} ({node.op_type}): attribute {attr.name} {action}"


def _mutate_tensor(tensor: onnx.TensorProto, rng: random.Random) -> str:
    action = rng.choice(("dims", "dims", "dtype", "values", "values", "empty"))
    if action == "dims":
        dims = list(tensor.dims)
        choice = rng.randrange(4)
        if choice == 0 and dims:
            dims[rng.randrange(len(dims))] = rng.choice(_INTS)
        elif choice == 1:
            dims = dims[:-1] if dims else [rng.choice(_INTS)]
        elif choice == 2:
            dims.append(rng.choice((1, 2, 3)))
        else:
            rng.shuffle(dims)
        del tensor.dims[:]
        tensor.dims.extend(dims)
        return f"dims {dims}"
    if action == "dtype":
        tensor.data_type = rng.choice([t for t in onnx.TensorProto.DataType.values() if t != 0] + [0])
        return f"dtype {tensor.data_type}"
    if action == "empty":
        tensor.ClearField("raw_data")
        for f in ("float_data", "int32_data", "int64_data", "double_data"):
            tensor.ClearField(f)
        return "data removed"
    try:
        array = numpy_helper.to_array(tensor).copy()
    except Exception:
        return "values (unreadable)"
    if array.size == 0:
        return "values (empty)"
    flat = array.reshape(-1)
    if array.dtype.kind == "f":
        flat[rng.randrange(flat.size)] = rng.choice(_FLOATS)
    elif array.dtype.kind in "iu":
        info = np.iinfo(array.dtype)
        flat[rng.randrange(flat.size)] = min(max(rng.choice(_INTS), int(info.min)), int(info.max))
    else:
        return f"values ({array.dtype} kept)"
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return "values"


def m_initializer(proto: onnx.ModelProto, rng: random.Random) -> str:
    inits = list(proto.graph.initializer)
    if not inits:
        return "no initializer"
    # small integer initializers are shapes, axes and indices: they steer shape arithmetic
    small = [t for t in inits if t.data_type == onnx.TensorProto.INT64 and np.prod(t.dims, dtype=np.int64) <= 8]
    tensor = rng.choice(small) if small and rng.random() < 0.5 else rng.choice(inits)
    if rng.random() < 0.15:
        proto.graph.initializer.remove(tensor)
        return f"initializer {tensor.name!r} dropped"
    return f"initializer {tensor.name!r}: {_mutate_tensor(tensor, rng)}"


def m_constant_node(proto: onnx.ModelProto, rng: random.Random) -> str:
    node = _nodes_with(proto, rng, lambda n: n.op_type == "Constant" and any(a.type == a.TENSOR for a in n.attribute))
    if node is None:
        return m_initializer(proto, rng)
    attr = next(a for a in node.attribute if a.type == a.TENSOR)
    return f"Constant {node.name!r}: {_mutate_tensor(attr.t, rng)}"


def m_graph_input(proto: onnx.ModelProto, rng: random.Random) -> str:
    inputs = [v for v in proto.graph.input if v.name not in {t.name for t in proto.graph.initializer}]
    if not inputs:
        return "no graph input"
    value = rng.choice(inputs)
    tensor_type = value.type.tensor_type
    action = rng.choice(("dim", "dim", "rank", "dtype", "param", "drop"))
    dims = tensor_type.shape.dim
    if action == "dim" and len(dims):
        dim = dims[rng.randrange(len(dims))]
        dim.dim_value = rng.choice((0, 1, 2, 5, 1 << 20, 1 << 40))
    elif action == "rank":
        if len(dims) and rng.random() < 0.5:
            del dims[-1]
        else:
            dims.add().dim_value = rng.choice((1, 2))
    elif action == "dtype":
        tensor_type.elem_type = rng.choice([t for t in onnx.TensorProto.DataType.values()])
    elif action == "param" and len(dims):
        dims[rng.randrange(len(dims))].dim_param = "fuzz_dim"
    elif action == "drop":
        proto.graph.input.remove(value)
    return f"graph input {value.name!r}: {action}"


def m_rewire(proto: onnx.ModelProto, rng: random.Random) -> str:
    node = _nodes_with(proto, rng, lambda n: len(n.input) > 0)
    if node is None:
        return "no node input"
    slot = rng.randrange(len(node.input))
    action = rng.choice(("other", "other", "missing", "empty", "drop", "extra"))
    if action == "other":
        node.input[slot] = rng.choice(_value_names(proto))
    elif action == "missing":
        node.input[slot] = "fuzz_undefined"
    elif action == "empty":
        node.input[slot] = ""
    elif action == "drop":
        del node.input[slot]
    else:
        node.input.append(rng.choice(_value_names(proto)))
    return f"node {node.name!r} ({node.op_type}): input {slot} {action}"


def m_nodes(proto: onnx.ModelProto, rng: random.Random) -> str:
    nodes = proto.graph.node
    if not nodes:
        return "no node"
    i = rng.randrange(len(nodes))
    action = rng.choice(("delete", "duplicate", "swap", "outputs"))
    name = nodes[i].name
    if action == "delete":
        del nodes[i]
    elif action == "duplicate":
        nodes.insert(i, nodes[i])
    elif action == "swap":
        j = rng.randrange(len(nodes))
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(nodes[i])
        b.CopyFrom(nodes[j])
        nodes[i].CopyFrom(b)
        nodes[j].CopyFrom(a)
    else:
        node = nodes[i]
        if len(node.output) > 1 and rng.random() < 0.5:
            del node.output[-1]
        else:
            node.output.append(f"fuzz_extra_{i}")
    return f"node {name!r}: {action}"


def m_opset(proto: onnx.ModelProto, rng: random.Random) -> str:
    entry = next((e for e in proto.opset_import if e.domain in ("", "ai.onnx")), None)
    if entry is None:
        entry = proto.opset_import.add()
    entry.version = rng.choice((1, 7, 10, 11, 13, 17, 18, 21, 23, 24, 99))
    return f"opset {entry.version}"


def m_domain(proto: onnx.ModelProto, rng: random.Random) -> str:
    node = _nodes_with(proto, rng, lambda n: True)
    if node is None:
        return "no node"
    node.domain = rng.choice(("com.microsoft", "ai.onnx", "ai.onnx.ml", "fuzz.domain"))
    return f"node {node.name!r}: domain {node.domain}"


def m_graph_output(proto: onnx.ModelProto, rng: random.Random) -> str:
    outputs = proto.graph.output
    action = rng.choice(("drop", "rename", "input", "intermediate"))
    if action == "drop" and len(outputs):
        del outputs[rng.randrange(len(outputs))]
    elif action == "rename" and len(outputs):
        outputs[rng.randrange(len(outputs))].name = "fuzz_missing_output"
    else:
        names = [v.name for v in proto.graph.input] if action == "input" else _value_names(proto)
        if names:
            extra = outputs.add()
            extra.name = rng.choice(names)
            extra.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return f"graph output: {action}"


BYTE_MUTATIONS: tuple[Callable[[bytes, random.Random], tuple[bytes, str]], ...] = (m_truncate, m_flip_bytes, m_splice)
PROTO_MUTATIONS: tuple[Callable[[onnx.ModelProto, random.Random], str], ...] = (
    m_op_type, m_attribute, m_attribute, m_attribute, m_initializer, m_initializer, m_initializer, m_constant_node,
    m_graph_input, m_rewire, m_rewire, m_nodes, m_opset, m_domain, m_graph_output,
)


def make_case(seed: int, index: int, compile_share: float = 0.0) -> Case:
    """Case `index` of campaign `seed`: always the same model and mutations."""
    rng = random.Random(f"bitsmith-fuzz:{seed}:{index}")
    model = _model_of(seed, index)
    blob, shapes = seed_model(model)
    mutations: list[str] = []
    if rng.random() < 0.2:
        blob, what = rng.choice(BYTE_MUTATIONS)(blob, rng)
        mutations.append(what)
    else:
        proto = onnx.ModelProto()
        proto.CopyFrom(_seed_proto(model))
        for _ in range(rng.choice((1, 1, 2, 3))):
            mutations.append(rng.choice(PROTO_MUTATIONS)(proto, rng))
        blob = proto.SerializeToString()
    return Case(index, model, mutations, blob, dict(shapes), _compiles(seed, index, compile_share))


# ---------------------------------------------------------------------------------------------
# Running one case (in the calling process)
# ---------------------------------------------------------------------------------------------
def run_case(case: Case, scratch: Path) -> Outcome:
    """Import (and, when `case.compile`, compile) one case; classify what happened."""
    from .errors import BitsmithError, IRError
    from .frontends.onnx import import_onnx
    from .pipeline import compile_model

    outcome = Outcome(case.index, case.model, case.mutations, "ok")
    start = time.perf_counter()
    out_parent = scratch / f"case-{case.index}"
    try:
        graph = import_onnx(case.blob, case.input_shapes)
        if case.compile:
            outcome.compiled = True
            out_parent.mkdir(parents=True, exist_ok=True)
            compile_model(graph, "host", output_dir=out_parent / "artifact", quiet=True)
    except BitsmithError as exc:
        is_bug = isinstance(exc, IRError)
        outcome.kind = "crash" if is_bug else "rejected"
        outcome.error, outcome.exit_code, outcome.message = type(exc).__name__, exc.exit_code, str(exc)[:300]
        if is_bug:
            outcome.detail = traceback.format_exc()[-3000:]
        if exc.__cause__ is not None and not isinstance(exc.__cause__, BitsmithError):
            outcome.converter_failure = "onnx" if getattr(exc, "onnx_reason", None) else "unexplained"
            outcome.detail = "".join(traceback.format_exception(exc.__cause__))[-1500:]
        leftovers = sorted(p.name for p in out_parent.iterdir()) if out_parent.exists() else []
        if leftovers:
            outcome.kind = "crash"
            outcome.detail = f"a failed compile left {leftovers} behind"
    except Exception as exc:  # anything else is a bug: that is what the fuzzer looks for
        outcome.kind, outcome.error, outcome.message = "crash", type(exc).__name__, str(exc)[:300]
        outcome.detail = traceback.format_exc()[-3000:]
    finally:
        shutil.rmtree(out_parent, ignore_errors=True)
    outcome.seconds = round(time.perf_counter() - start, 3)
    return outcome


def replay(seed: int, index: int, compile_share: float = 0.0) -> Outcome:
    """Rebuild case `index` of campaign `seed` and run it here (prints a crash's traceback)."""
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_case(make_case(seed, index, compile_share), Path(tmp))
    if outcome.detail:
        print(outcome.detail, file=sys.stderr)
    return outcome


# ---------------------------------------------------------------------------------------------
# Worker processes and the campaign
# ---------------------------------------------------------------------------------------------
def _worker_main(seed: int, compile_share: float, result_fd: int) -> None:
    """Read case indices from stdin, write one JSON outcome per line to `result_fd`."""
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    results = os.fdopen(result_fd, "w", buffering=1)
    with tempfile.TemporaryDirectory(prefix="bitsmith-fuzz-") as tmp:
        for line in sys.stdin:
            outcome = run_case(make_case(seed, int(line), compile_share), Path(tmp))
            results.write(json.dumps(asdict(outcome)) + "\n")


class _Worker:
    def __init__(self, seed: int, compile_share: float, log_dir: Path) -> None:
        read_fd, write_fd = os.pipe()
        self.log = tempfile.NamedTemporaryFile(prefix="worker-", suffix=".log", dir=log_dir, delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bitsmith.fuzz", "--worker", str(seed), str(compile_share), str(write_fd)],
            stdin=subprocess.PIPE, stdout=self.log, stderr=self.log, pass_fds=(write_fd,), text=True)
        os.close(write_fd)
        self.results = os.fdopen(read_fd, "r")

    def run(self, index: int, limit_s: float) -> dict[str, Any] | str:
        """The outcome of case `index`, or "hang" / "died" when the worker did not answer."""
        stdin = self.proc.stdin
        assert stdin is not None  # opened with stdin=PIPE
        stdin.write(f"{index}\n")
        stdin.flush()
        ready, _, _ = select.select([self.results], [], [], limit_s)
        if not ready:
            return "hang"
        line = self.results.readline()
        return json.loads(line) if line else "died"

    def log_tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.results.close()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


@dataclass
class Campaign:
    seed: int
    cases: int
    compile_share: float
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    compiled: int = 0
    converter_failures: dict[str, int] = field(default_factory=dict)  # "onnx" / "unexplained" -> cases
    failures: list[dict[str, Any]] = field(default_factory=list)  # every crash and hang
    unexplained: list[dict[str, Any]] = field(default_factory=list)  # converter failures ONNX did not explain
    slowest: list[dict[str, Any]] = field(default_factory=list)

    @property
    def crashes(self) -> int:
        return self.counts.get("crash", 0)

    @property
    def hangs(self) -> int:
        return self.counts.get("hang", 0)


def _model_of(seed: int, index: int) -> str:
    """The seed model of case `index` (its own random stream: the parent knows it without the models)."""
    rng = random.Random(f"bitsmith-fuzz:{seed}:{index}:model")
    return rng.choices(list(SEED_MODELS), weights=list(SEED_MODELS.values()))[0]


def _compiles(seed: int, index: int, compile_share: float) -> bool:
    """Whether case `index` is compiled as well as imported (if it imports)."""
    chosen = random.Random(f"bitsmith-fuzz:{seed}:{index}:compile").random() < compile_share
    return chosen and _model_of(seed, index) in COMPILED_MODELS


def fuzz(cases: int, seed: int = 0, *, compile_share: float = 0.0, start: int = 0,
         progress: Callable[[int, Campaign], None] | None = None) -> Campaign:
    """Run cases start .. start+cases-1 of campaign `seed` in a worker process."""
    campaign = Campaign(seed, cases, compile_share)
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bitsmith-fuzz-logs-") as logs:
        worker = _Worker(seed, compile_share, Path(logs))
        try:
            for index in range(start, start + cases):
                result = worker.run(index, COMPILE_LIMIT_S if _compiles(seed, index, compile_share) else IMPORT_LIMIT_S)
                if isinstance(result, str):
                    case = make_case(seed, index, compile_share)
                    tail = worker.log_tail()
                    worker.stop()
                    worker = _Worker(seed, compile_share, Path(logs))
                    result = asdict(Outcome(index, case.model, case.mutations, "hang" if result == "hang" else "crash",
                                            compiled=case.compile, error=f"worker {result}", detail=tail))
                _record(campaign, result)
                if progress is not None:
                    progress(index, campaign)
        finally:
            worker.stop()
    campaign.seconds = round(time.perf_counter() - begin, 1)
    campaign.slowest = sorted(campaign.slowest, key=lambda r: -r["seconds"])[:10]
    return campaign


def _record(campaign: Campaign, result: dict[str, Any]) -> None:
    campaign.counts[result["kind"]] = campaign.counts.get(result["kind"], 0) + 1
    campaign.compiled += bool(result["compiled"])
    if result["kind"] == "rejected":
        campaign.errors[result["error"]] = campaign.errors.get(result["error"], 0) + 1
    if result["kind"] in ("crash", "hang"):
        campaign.failures.append(result)
    if result["converter_failure"]:
        kind = result["converter_failure"]
        campaign.converter_failures[kind] = campaign.converter_failures.get(kind, 0) + 1
        if kind == "unexplained":
            campaign.unexplained.append({k: result[k] for k in ("index", "model", "mutations", "message")})
    campaign.slowest.append({k: result[k] for k in ("index", "model", "seconds", "kind", "compiled")})
    if len(campaign.slowest) > 100:
        campaign.slowest = sorted(campaign.slowest, key=lambda r: -r["seconds"])[:10]


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--worker":
    _worker_main(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
