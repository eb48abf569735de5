"""The compile driver: frontend -> passes -> backend -> artifact.

Data flows one way. Each stage is a plain function call here, so this file reads as the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import onnx
from contextlib import contextmanager
from tqdm import tqdm

from . import __version__, targets
from .artifact import GRAPH, Artifact, TensorSpec, check_output_dir, write_artifact
from .constraints import Constraints
from .errors import DataError, UsageError
from .ir import Graph, verify
from .ops import OPS
from .recipes import PRESETS, QuantRecipe, preset
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


def resolve_recipe(recipe: str | QuantRecipe | None) -> QuantRecipe | None:
    """A recipe given by preset name (bitsmith.PRESETS) or as a QuantRecipe; None for FP32."""
    if recipe is None or isinstance(recipe, QuantRecipe):
        return recipe
    if isinstance(recipe, str):
        return preset(recipe)
    raise UsageError(f"recipe must be a preset name ({', '.join(PRESETS)}) or a QuantRecipe, "
                     f"not {type(recipe).__name__}")


EvalFn = Callable[[Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]], "float | np.ndarray"]
"""A user's metric: given `run` (one feed -> {output name: array}), return a score, higher is better."""

PLAN_FILE = "precision_plan.json"
# The artifact stores more than the plan's size model counts (int32 biases, requantization multipliers):
# when the built weights exceed size_mb, the search runs again with its budget shrunk by the overshoot.
REPLANS = 3


@dataclass
class Compiled:
    """What one compile produced: the artifact, and the graphs a report compares (the imported FP32
    graph, the quantized graph with its QuantSpecs, the lowered integer graph) and the precision plan."""

    artifact: Artifact
    graph: Graph
    quantized: Graph | None
    lowered: Graph
    plan: Any = None
    tuning: Any = None  # backends.tuning.TuningSummary when compiled with `tune`


def compile_model(model: ModelLike, target: str | targets.Target = "host", *,
                  calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
                  constraints: Constraints | None = None, eval_fn: EvalFn | None = None,
                  recipe: str | QuantRecipe | None = None,
                  input_shapes: dict[str, tuple[int, ...]] | None = None,
                  output_dir: str | Path | None = None, quiet: bool = False, tune: int | None = None,
                  tuning_database: str | Path | None = None) -> Artifact:
    """Compile `model` for `target` and write a verified artifact (to `output_dir`, or a new
    temporary directory). Returns the loaded Artifact.

    With a `recipe` (a preset name such as "w8a8", or a QuantRecipe) the model is quantized on the
    `calibration` feeds (a list of {input name: array} with the compiled input shapes; required when the
    recipe quantizes activations or runs data-driven algorithms: DataError otherwise), lowered to
    integer ops (passes/lower_integer.py) and built from those: the artifact computes exactly what
    bitsmith's integer reference computes on the lowered graph (graph.json).

    With `constraints` (bitsmith.Constraints: size_mb, latency_ms, max_metric_drop, ...) and calibration
    data, bitsmith.precision.plan_precision chooses each layer's format under the budget (the plan is
    kept in the artifact, precision_plan.json); without a recipe or a plan the recipe defaults to w8a8.
    `eval_fn(run) -> score` (higher is better; or one score per sample, whose mean is the metric and
    whose spread lets the precision search bound the drop on unseen data) is the metric
    `max_metric_drop` is measured with; without it, bitsmith's label-free fidelity to FP32 on the
    calibration data. The built artifact is checked
    against every constraint it can be measured on (size; latency where the target runs here, else
    predicted; metric drop): BudgetError names the one that failed.

    With `tune=N` the backend times up to N candidate schedules of the model's convolution and matmul
    kernels with MetaSchedule (backends/tuning.py) and uses the fastest that match their reference;
    results go to a per-target database under `tuning_database` (default: default_tuning_database()),
    which later compiles reuse without tuning again. `tune=0` only reuses the database.
    """
    return compile_traced(model, target, calibration=calibration, constraints=constraints, eval_fn=eval_fn,
                          recipe=recipe, input_shapes=input_shapes, output_dir=output_dir, quiet=quiet,
                          tune=tune, tuning_database=tuning_database).artifact


def compile_traced(model: ModelLike, target: str | targets.Target = "host", *,
                   calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
                   constraints: Constraints | None = None, eval_fn: EvalFn | None = None,
                   recipe: str | QuantRecipe | None = None,
                   input_shapes: dict[str, tuple[int, ...]] | None = None,
                   output_dir: str | Path | None = None, quiet: bool = False, tune: int | None = None,
                   tuning_database: str | Path | None = None, _plan_constraints: Constraints | None = None, _attempt: int = 1) -> Compiled:
    """`compile_model`, returning the intermediate graphs and the precision plan too (reports use them)."""
    target = targets.load(target) if isinstance(target, str) else target
    backend = backend_for(target)
    tuning = _tuning_options(tune, tuning_database)
    if tuning is not None and not target.runs_on_host():
        raise UsageError(f"tuning times kernels on this machine, and target {target.name!r} does not run here: "
                         "compile without --tune, or tune on a machine of that target")
    constraints = constraints if constraints is not None and not constraints.is_empty() else None
    calibration = list(calibration) if calibration is not None else None
    requested = resolve_recipe("w8a8" if constraints is not None and recipe is None and calibration else recipe)
    active = requested  # a plan replaces the recipe; a second attempt plans from the one asked for
    feeds = _calibration_feeds(active, calibration)
    if output_dir is not None:
        check_output_dir(Path(output_dir))  # fail now, not after minutes of work
    planning = constraints is not None and active is not None and _planner() is not None
    # a plan may be redone (REPLANS): its attempts build in scratch directories, because a process
    # cannot load a second library from a path it has loaded one from (dlopen keeps the first)
    scratch = planning or output_dir is None
    out = Path(tempfile.mkdtemp(prefix="bitsmith-")) / "artifact" if scratch else Path(output_dir)  # type: ignore[arg-type]
    stages = ["import", *(["plan"] if planning else []), *(["quantize", "lower"] if active is not None else []),
              "emit", "build", "write"]
    progress = Progress(stages, quiet)
    plan = None
    quantized = None
    try:
        with progress.stage("import"):
            graph = load_model(model, input_shapes)
        compiled = graph
        if active is not None:
            from .passes.lower_integer import lower_integer
            from .quantize import quantize

            if planning and constraints is not None:
                with progress.stage("plan"):
                    plan = _plan(graph, feeds, target, _plan_constraints or constraints, active, eval_fn, quiet)
                    active = plan.recipe
            with progress.stage("quantize"):
                quantized = quantize(graph, active, feeds, quiet=quiet)
            with progress.stage("lower"):
                compiled = lower_integer(quantized)
                verify(compiled, OPS)
        with progress.stage("emit"):
            from .backends.relax_emit import emit_relax

            emitted = emit_relax(compiled)
        with progress.stage("build"):
            summary = None
            if tuning is not None:
                from .backends.tuning import TuningSummary

                summary = TuningSummary()
            executable = backend.build(emitted, target, tuning, summary)
        with progress.stage("write"):
            manifest = _manifest(graph, target, model)
            extra = {GRAPH: json.dumps(graph_to_json(compiled), indent=1, sort_keys=True)}
            if active is not None:
                manifest["precision"] = active.name
                manifest["formats"] = _formats(active, compiled, target)
            if constraints is not None:
                manifest["constraints"] = constraints.to_json()
            if summary is not None:
                manifest["tuned_kernels"] = dict(sorted(summary.replaced.items()))
            if plan is not None:
                manifest["precision_plan"] = PLAN_FILE
                extra[PLAN_FILE] = json.dumps(_without_timings(plan.to_json()), indent=1, sort_keys=True)
            params = {name: compiled.constants[name] for name in emitted.param_names}
            write_artifact(out, manifest=manifest, export_library=lambda p: backend.export(executable, p),
                           params=params, extra_files=extra)
    except BaseException:
        if scratch:  # a failed compile leaves no scratch directory behind
            shutil.rmtree(out.parent, ignore_errors=True)
        raise
    finally:
        progress.close()
    result = Compiled(Artifact.load(out), graph, quantized, compiled, plan, summary)
    if constraints is not None:
        from .budget import check_constraints, tightened_size_budget

        tighter = tightened_size_budget(result, constraints, _plan_constraints or constraints)
        if plan is not None and tighter is not None and _attempt < REPLANS:
            shutil.rmtree(out.parent, ignore_errors=True)  # this attempt's scratch build
            log.info("artifact weights exceed size_mb=%s; planning again with size_mb=%.4g", constraints.size_mb,
                     tighter.size_mb)
            return compile_traced(model, target, calibration=calibration, constraints=constraints, eval_fn=eval_fn,
                                  recipe=requested, input_shapes=input_shapes, output_dir=output_dir, quiet=quiet,
                                  tune=tune, tuning_database=tuning_database, _plan_constraints=tighter, _attempt=_attempt + 1)
        try:
            check_constraints(result, constraints, feeds, eval_fn)
        finally:  # a failed budget leaves the artifact where it was asked for, for inspection
            if scratch and output_dir is not None:
                result.artifact = result.artifact.save(output_dir)
                shutil.rmtree(out.parent, ignore_errors=True)  # the library stays mapped; the files go
    return result


def default_tuning_database() -> Path:
    """Where tuning databases live unless a compile names one: $BITSMITH_TUNING_DB, else
    $XDG_CACHE_HOME/bitsmith/tuning (~/.cache/bitsmith/tuning)."""
    if os.environ.get("BITSMITH_TUNING_DB"):
        return Path(os.environ["BITSMITH_TUNING_DB"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "bitsmith" / "tuning"


def _tuning_options(tune: int | None, database: str | Path | None) -> Any:
    if tune is None:
        if database is not None:
            raise UsageError("a tuning database is used only when tuning: give tune=N (--tune N; 0 reuses it only)")
        return None
    if isinstance(tune, bool) or not isinstance(tune, int):
        raise UsageError(f"tune takes a number of trials (an int >= 0), not {tune!r}")
    from .backends.tuning import TuningOptions

    return TuningOptions(tune, Path(database) if database is not None else default_tuning_database())


def _without_timings(data: Any) -> Any:
    """`data` without its "...seconds" entries: timings differ run to run, and an artifact is a
    function of the model, data, target and options alone (the same inputs give the same bytes)."""
    if isinstance(data, dict):
        return {k: _without_timings(v) for k, v in data.items() if not str(k).endswith("seconds")}
    if isinstance(data, list):
        return [_without_timings(v) for v in data]
    return data


def _planner() -> Callable[..., Any] | None:
    """bitsmith.precision.plan_precision when this build has it."""
    try:
        from .precision import plan_precision
    except ImportError:
        return None
    return plan_precision


def _plan(graph: Graph, feeds: list[Mapping[str, np.ndarray]], target: targets.Target, constraints: Constraints,
          recipe: QuantRecipe, eval_fn: EvalFn | None, quiet: bool) -> Any:
    """The precision plan: per-layer formats under `constraints`, keeping `recipe`'s activation settings
    and algorithms. The candidates are the target's native formats: the artifact stores an emulated
    format's weights as float, so choosing one would save nothing the budget counts. The planner scores
    candidate graphs; the user's eval_fn scores a run function, so each candidate is handed over as its
    fake-quantized simulator's run."""
    from .simulate import Simulator

    planner = _planner()
    assert planner is not None
    graph_metric = (lambda candidate: eval_fn(Simulator(candidate).run)) if eval_fn is not None else None
    return planner(graph, feeds, target=target, constraints=constraints, eval_fn=graph_metric, quiet=quiet,
                   recipe=recipe, formats=tuple(target.formats.get("native", ())))


def _calibration_feeds(recipe: QuantRecipe | None, calibration: Iterable[Mapping[str, np.ndarray]] | None
                       ) -> list[Mapping[str, np.ndarray]]:
    if recipe is None:
        if calibration is not None:
            raise UsageError("calibration data was given without a recipe; pass recipe= (e.g. 'w8a8') to quantize")
        return []
    feeds = list(calibration) if calibration is not None else []
    if not feeds and (recipe.activations is not None or recipe.algorithms):
        raise DataError(f"recipe {recipe.name!r} quantizes activations or runs data-driven algorithms "
                        f"({', '.join(recipe.algorithms) or 'calibration'}): pass calibration=[{{input name: array}}, "
                        "...] with real inputs of the compiled shapes")
    return feeds


def _formats(recipe: QuantRecipe, lowered: Graph, target: targets.Target) -> dict[str, Any]:
    """The manifest's "formats": the recipe, how each weighted layer was lowered and with which formats,
    how each format is stored and computed ("execution", from the lowering), and the formats the target
    has no native kernel for ("emulated": the target file does not list them as native, or the lowering
    computes them in float from decoded weights or FP8 bit patterns)."""
    report = lowered.metadata.get("integer_lowering", {})
    execution = report.get("execution", {})
    native = set(target.formats.get("native", ()))
    emulated = set(report.get("emulated", [])) | {fmt for fmt in execution if fmt not in native}
    return {"weights": recipe.weights, "activations": recipe.activations,
            "weight_granularity": recipe.weight_granularity, "algorithms": list(recipe.algorithms),
            "layers": report.get("layers", []), "emulated": sorted(emulated), "execution": execution,
            "ops": lowered.op_counts()}


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
