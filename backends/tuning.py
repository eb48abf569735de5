"""Optional tuning (`bitsmith compile --tune N`): MetaSchedule times the tile shapes the tiled-reduction
template allows for each convolution and matmul kernel, keeps the fastest, and stores it in a per-target
database that the next compile of the same kernels reuses without tuning.

- **Design space**: for each kernel the default schedule rule (cpu_schedule.apply_tiled_reduction) with
  each of its `tiling_candidates` (at most `cpu_schedule.MAX_TILINGS`; the default shape is one of them),
  as the design spaces of a MetaSchedule `ScheduleFn`. MetaSchedule's own x86 space is not used: on a
  MobileNetV2 depthwise convolution it reached 5x the default schedule's time after 16 trials (156 s).
- **Search**: up to `N` trials over the kernels, heaviest first (calls x multiply-adds), in MetaSchedule's
  task scheduler; each kernel's candidates are measured once each (EveryDesignSpace), built by a
  LocalBuilder and timed by a LocalRunner on as many threads as an artifact runs by default (every CPU
  this process may use: backends/runner.configure_threads). Time-outs are set for 2-core
  machines, where a builder worker starts by importing TVM (~30 s).
- **Database**: MetaSchedule's JSONDatabase (workloads and tuning records as JSON lines), one directory
  per target (and version of the template's tile shapes) under the database root. A kernel is a
  workload: its PrimFunc and the bounds of its integer weights (they decide which dot-product intrinsic
  is exact). A kernel with records is never tuned again.
- **Check before use**: a kernel whose best record is not the default shape runs on random inputs next
  to the same kernel unscheduled (TVM's plain loop nest): integer outputs must match bit for bit, float
  ones within FLOAT_TOLERANCE. A kernel that fails keeps the default schedule (logged, and counted in
  the summary). Kernels that index memory by data without clamping the index (gathers) are not tuned:
  random inputs could read out of bounds; clamped table lookups fused into convolutions are.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
import tvm.driver
from tvm import ir, tirx
from tvm.ir.transform import PassContext, module_pass
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule import _ffi_api as ms_ffi
from tvm.s_tir.meta_schedule.logging import get_logging_func
from tvm.s_tir.meta_schedule.utils import cpu_count
from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

from bitsmith.errors import UsageError

from .cpu_schedule import (MAX_TILINGS, TILINGS_VERSION, CPUShape, apply_tiled_reduction, call_tirs,
                           tiled_reduction_dot, total_work, weight_code_bounds)
from .runner import configure_threads

log = logging.getLogger(__name__)

# Generous: a LocalBuilder worker imports TVM and bitsmith (~4 s) per batch, and an unrolled int8 kernel
# takes seconds to compile on these 2-core machines.
BUILD_TIMEOUT_S = 300
RUN_TIMEOUT_S = 60
# Each candidate's time: the median of RUNNER_REPEAT repeats of at least RUNNER_MIN_REPEAT_MS.
RUNNER_REPEAT = 5
RUNNER_MIN_REPEAT_MS = 20
# A tuned tiling replaces the default only when its time is at least this much below the default's:
# smaller differences are within this machine's noise, and the default needs no check.
MIN_GAIN = 0.03
# Float kernels reassociate their sums differently per tile shape.
FLOAT_TOLERANCE = 1e-4
# Recorded on the root block of every tuned schedule: which tiling candidate it is (0: the default).
CHOICE_ANNOTATION = "bitsmith_tiling_choice"
# The PrimFunc attribute that makes a kernel's weight code bounds part of its workload.
BOUNDS_ATTR = "bitsmith.weight_code_bounds"


@dataclass(frozen=True)
class TuningOptions:
    """`trials`: measurements this compile may make (0: only reuse the database); `database`: the root
    directory of the tuning databases (one subdirectory per target)."""

    trials: int
    database: Path

    def __post_init__(self) -> None:
        if self.trials < 0:
            raise UsageError(f"--tune takes a number of trials >= 0, not {self.trials}")


@dataclass
class TuningSummary:
    """What tuning did in one compile (bitsmith.compile returns it on Compiled.tuning)."""

    database: str = ""
    kernels: int = 0  # kernels the template can tune (distinct workloads)
    from_database: int = 0  # of those, found already tuned
    tuned: int = 0  # tuned in this compile
    trials: int = 0  # measurements made in this compile
    tuning_seconds: float = 0.0  # time spent in MetaSchedule's search (0 when nothing was tuned)
    replaced: dict[str, int] = field(default_factory=dict)  # kernel -> tiling choice used instead of the default
    rejected: list[str] = field(default_factory=list)  # kernels whose tuned schedule failed the check

    def to_json(self) -> dict:
        return {"database": self.database, "kernels": self.kernels, "from_database": self.from_database,
                "tuned": self.tuned, "trials": self.trials, "tuning_seconds": round(self.tuning_seconds, 3),
                "replaced": dict(self.replaced), "rejected": list(self.rejected)}


def database_dir(root: Path, target_name: str) -> Path:
    """The target's database, one per version of the template's tile shape list: a record names its
    shape by its position in that list, and position 0 (the default) must mean the default."""
    return Path(root) / target_name / f"tilings-v{TILINGS_VERSION}"


@module_pass(opt_level=0, name="TuneCPU")
class TuneCPU:  # pylint: disable=too-few-public-methods
    """Before ScheduleCPU: tune the kernels the database lacks (within the trial budget), then give each
    kernel with a checked, non-default best record that schedule (ScheduleCPU skips scheduled ones)."""

    def __init__(self, target: tvm.target.Target, target_name: str, cpu: CPUShape, options: TuningOptions,
                 summary: TuningSummary) -> None:
        self.target, self.cpu, self.options, self.summary = target, cpu, options, summary
        self.directory = database_dir(options.database, target_name)

    def transform_module(self, mod: ir.IRModule, _ctx: PassContext) -> ir.IRModule:
        kernels = _distinct(tunable_workloads(mod, self.cpu))
        self.directory.mkdir(parents=True, exist_ok=True)
        database = ms.database.JSONDatabase(work_dir=str(self.directory), module_equality="structural")
        untuned = [(name, k.workload, k.weight) for name, k in kernels.items() if _best_record(database, k.workload) is None]
        self.summary.database = str(self.directory)
        self.summary.kernels = len(kernels)
        self.summary.from_database = len(kernels) - len(untuned)
        if untuned and self.options.trials > 0:
            self._tune(untuned, database)
        for name, kernel in kernels.items():
            scheduled = self._checked_best(database, name, kernel.workload)
            for gvar in kernel.callees if scheduled is not None else []:
                mod[gvar] = _with_attrs_of(scheduled, mod[gvar]).with_attr("tirx.is_scheduled", True)
        return mod

    def _tune(self, untuned: list, database: ms.database.Database) -> None:
        untuned = sorted(untuned, key=lambda item: -item[2])
        records_before = len(database)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="bitsmith-tune-") as work_dir:
            tasks = [_tune_context(workload, self.target, _space(self.cpu), name, seed)
                     for seed, (name, workload, _) in enumerate(untuned)]
            ms.tune_tasks(tasks=tasks, task_weights=[weight for *_, weight in untuned], work_dir=work_dir,
                          max_trials_global=self.options.trials, max_trials_per_task=MAX_TILINGS,
                          num_trials_per_iter=MAX_TILINGS,
                          builder=ms.builder.LocalBuilder(f_build=build_candidate, timeout_sec=BUILD_TIMEOUT_S),
                          runner=ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S, evaluator_config=ms.runner.EvaluatorConfig(
                              number=1, repeat=RUNNER_REPEAT, min_repeat_ms=RUNNER_MIN_REPEAT_MS),
                              initializer=configure_threads),
                          database=database, cost_model="random", task_scheduler="round-robin")
        self.summary.tuning_seconds = time.perf_counter() - started
        self.summary.trials = len(database) - records_before
        self.summary.tuned = sum(_best_record(database, w) is not None for _, w, _ in untuned)

    def _checked_best(self, database: ms.database.Database, name: str, workload: ir.IRModule) -> tirx.PrimFunc | None:
        """The fastest recorded schedule of `workload`, when it is not the default one, beats the default
        by MIN_GAIN where both were timed, and passes check_against_reference; else None."""
        records = _records(database, workload)
        if not records:
            return None
        record, choice = records[0], record_choice(records[0].trace)
        if choice in (None, 0):
            return None  # the default shape: ScheduleCPU gives the same schedule
        default = next((r for r in records if record_choice(r.trace) == 0), None)
        if default is not None and _mean_seconds(record) > (1 - MIN_GAIN) * _mean_seconds(default):
            return None
        sch = tvm.s_tir.Schedule(workload)
        try:
            record.trace.apply_to_schedule(sch, remove_postproc=False)
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("tuned schedule of %s no longer applies (%s): default schedule", name, exc)
            self.summary.rejected.append(name)
            return None
        mismatch = check_against_reference(workload["main"], sch.mod["main"], self.target)
        if mismatch:
            log.warning("tuned schedule of %s rejected: %s; default schedule", name, mismatch)
            self.summary.rejected.append(name)
            return None
        self.summary.replaced[name] = choice
        return sch.mod["main"]


def _tune_context(workload: ir.IRModule, target: tvm.target.Target, space: ms.space_generator.SpaceGenerator,
                  name: str, seed: int) -> ms.TuneContext:
    """MetaSchedule's TuneContext, made by its FFI constructor: the Python constructor first imports every
    TVM tensor intrinsic (CUDA, ROCm, Hexagon, ...), 30 s here, and this design space needs none of them."""
    context = ms.TuneContext.__new__(ms.TuneContext)
    context.__init_handle_by_constructor__(
        ms_ffi.TuneContext, workload, target, space, EveryDesignSpace(), name, cpu_count(logical=False), seed, get_logging_func(log))
    ms_ffi.TuneContextInitialize(context)
    return context


@derived_object
class EveryDesignSpace(ms.search_strategy.PySearchStrategy):
    """A MetaSchedule search strategy that measures each design space once, as it is: the tiling
    candidates are few and have no random decisions, so replaying or mutating them would only repeat
    measurements."""

    def __init__(self) -> None:
        self.pending: list[tvm.s_tir.Schedule] = []
        self.per_round = 1

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        pass

    def pre_tuning(self, max_trials: int, num_trials_per_iter: int, design_spaces: list[tvm.s_tir.Schedule],
                   database: ms.database.Database | None = None, cost_model: ms.cost_model.CostModel | None = None
                   ) -> None:
        self.pending, self.per_round = list(design_spaces)[:max_trials], num_trials_per_iter

    def post_tuning(self) -> None:
        self.pending = []

    def generate_measure_candidates(self) -> list[ms.search_strategy.MeasureCandidate] | None:
        if not self.pending:
            return None
        batch, self.pending = self.pending[:self.per_round], self.pending[self.per_round:]
        return [ms.search_strategy.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_entry_func(sch.mod))
                for sch in batch]

    def notify_runner_results(self, measure_candidates: list, results: list) -> None:
        pass

    def clone(self) -> EveryDesignSpace:
        return EveryDesignSpace()


def build_candidate(mod: ir.IRModule, target: tvm.target.Target, _params: dict | None) -> tvm.runtime.Module:
    """A builder worker's build of one candidate: MetaSchedule's default build (weight re-layout left out:
    it runs once per weight set, not per call) without its import of every TVM tensor intrinsic, which
    takes ~35 s in each worker of every batch here; candidates arrive already tensorized."""
    return tvm.driver.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def tunable_workloads(mod: ir.IRModule, cpu: CPUShape) -> dict[ir.GlobalVar, tuple[ir.IRModule, int]]:
    """{kernel: (its workload, its weight: calls x multiply-adds)} for every PrimFunc the tiled-reduction
    rule schedules and whose data-dependent indices (if any) are clamped into their buffers."""
    bounds = weight_code_bounds(mod)
    calls = _call_counts(mod)
    workloads = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or _indexes_by_data(func):
            continue
        func_bounds = bounds.get(gvar.name_hint, {})
        applies, _ = tiled_reduction_dot(func, cpu, func_bounds)
        if applies:
            workload = func.with_attr("global_symbol", "main").with_attr("tirx.noalias", True)
            workload = workload.with_attr(BOUNDS_ATTR, {k: int(v) for k, v in func_bounds.items()})
            workloads[gvar] = (ir.IRModule({"main": workload}), calls.get(gvar.name_hint, 1) * _work(func))
    return workloads


@dataclass
class _Kernel:
    workload: ir.IRModule
    weight: int  # calls x multiply-adds, over every PrimFunc with this workload
    callees: list[ir.GlobalVar]  # those PrimFuncs


def _distinct(workloads: dict) -> dict[str, _Kernel]:
    """One entry per structurally distinct workload, named after its first PrimFunc."""
    distinct: dict[str, _Kernel] = {}
    for gvar, (workload, weight) in workloads.items():
        same = next((k for k in distinct.values() if tvm_ffi.structural_equal(k.workload, workload)), None)
        if same is None:
            distinct[gvar.name_hint] = _Kernel(workload, weight, [gvar])
        else:
            same.weight += weight
            same.callees.append(gvar)
    return distinct


# The attributes a workload adds to its PrimFunc (tunable_workloads).
_WORKLOAD_ATTRS = ("global_symbol", "tirx.noalias", BOUNDS_ATTR)


def _with_attrs_of(scheduled: tirx.PrimFunc, original: tirx.PrimFunc) -> tirx.PrimFunc:
    """A tuned workload's schedule as the PrimFunc `original`: the attributes the workload added are
    `original`'s again (its symbol above all: several PrimFuncs may share one workload)."""
    attrs = original.attrs if original.attrs is not None else {}
    for key in _WORKLOAD_ATTRS:
        scheduled = scheduled.with_attr(key, attrs[key]) if key in attrs else scheduled.without_attr(key)
    return scheduled


def _space(cpu: CPUShape) -> ms.space_generator.ScheduleFn:
    """Every tiling candidate of the tiled-reduction rule, each a design space of its own."""
    def candidates(sch: tvm.s_tir.Schedule) -> list[tvm.s_tir.Schedule]:
        func = sch.mod["main"]
        bounds = {str(k): int(v) for k, v in func.attrs[BOUNDS_ATTR].items()}
        _, dot = tiled_reduction_dot(func, cpu, bounds)
        spaces = []
        for choice in range(MAX_TILINGS):
            candidate = sch.copy()
            try:
                if not apply_tiled_reduction(candidate, cpu, dot, bounds, choice):
                    break
            except Exception as exc:  # pylint: disable=broad-except
                log.debug("tiling %d does not apply: %s", choice, exc)
                continue
            candidate.annotate(candidate.get_sblock("root"), CHOICE_ANNOTATION, choice)
            spaces.append(candidate)
        return spaces

    return ms.space_generator.ScheduleFn(candidates, sch_rules=[], postprocs=[], mutator_probs={})


def _records(database: ms.database.Database, workload: ir.IRModule) -> list[ms.database.TuningRecord]:
    """The workload's measured records, fastest first."""
    if not database.has_workload(workload):
        return []
    return list(database.get_top_k(database.commit_workload(workload), MAX_TILINGS))


def _best_record(database: ms.database.Database, workload: ir.IRModule) -> ms.database.TuningRecord | None:
    records = _records(database, workload)
    return records[0] if records else None


def _mean_seconds(record: ms.database.TuningRecord) -> float:
    times = [float(t) for t in record.run_secs]
    return sum(times) / len(times)


def record_choice(trace: tvm.s_tir.schedule.Trace) -> int | None:
    """The tiling candidate a tuning record's trace schedules (its CHOICE_ANNOTATION instruction)."""
    for inst in trace.insts:
        if inst.kind.name == "Annotate" and str(inst.attrs[0]) == CHOICE_ANNOTATION:
            return int(inst.inputs[1])
    return None


def tiling_choice(func: tirx.PrimFunc) -> int | None:
    """The tiling candidate a tuned PrimFunc was scheduled with (CHOICE_ANNOTATION on its root block)."""
    sch = tvm.s_tir.Schedule(func)
    root = sch.get(sch.get_sblock("root"))
    return int(root.annotations[CHOICE_ANNOTATION]) if CHOICE_ANNOTATION in root.annotations else None


def check_against_reference(reference: tirx.PrimFunc, scheduled: tirx.PrimFunc, target: tvm.target.Target,
                            seed: int = 0) -> str:
    """"" when `scheduled` computes what `reference` (the same kernel unscheduled) computes on random
    inputs that exercise it (exercising_arguments): every buffer argument equal afterwards (integers bit
    for bit, floats within FLOAT_TOLERANCE of the largest magnitude); else what differs."""
    reference_library = _library(reference, target)
    args = exercising_arguments(reference_library, reference, np.random.default_rng(seed))
    results = [_run(library, args) for library in (reference_library, _library(scheduled, target))]
    for k, (want, got) in enumerate(zip(*results)):
        if np.issubdtype(want.dtype, np.floating):
            scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1.0)
            error = float(np.max(np.abs(want.astype(np.float64) - got))) if want.size else 0.0
            if not error <= FLOAT_TOLERANCE * scale:
                return f"argument {k} differs by {error:.3g} (largest magnitude {scale:.3g})"
        elif not np.array_equal(want, got):
            return f"argument {k} differs in {int(np.sum(want != got))} of {want.size} elements"
    return ""


def _library(func: tirx.PrimFunc, target: tvm.target.Target) -> tvm.runtime.Module:
    return tvm.compile(ir.IRModule({"main": func.with_attr("global_symbol", "main")}), target)


def _run(library: tvm.runtime.Module, args: list[np.ndarray]) -> list[np.ndarray]:
    tensors = [tvm.runtime.tensor(a.copy()) for a in args]
    library["main"](*tensors)
    return [t.numpy() for t in tensors]


# The ranges tried for each wide integer argument (+-2**k): a requantization multiplier needs a large
# one for its products to reach the output's range, a table offset a small one to stay inside its table.
# All stay far enough from int32 overflow, undefined in TIR's signed arithmetic (any two schedules could
# then disagree).
INT_RANGES = tuple(1 << k for k in (4, 8, 12, 16, 20, 24))
SEARCH_PASSES = 2


def exercising_arguments(library: tvm.runtime.Module, func: tirx.PrimFunc, rng: np.random.Generator
                         ) -> list[np.ndarray]:
    """Random arguments for `func` (built as `library`) under which its outputs take many values.

    Uniform random integers would mostly saturate a quantized kernel's output (every element at 0 or
    255, or clamped to one end of a lookup table), and such a check could not see a wrong sum. So each
    wide integer argument (bias, multiplier, rounding term, table offset) is drawn, in turn, from the
    range in INT_RANGES that gives the outputs the most distinct values (coordinate ascent from the
    smallest ranges); shift amounts stay within [0, 24], 8-bit codes and floats span their range."""
    shifts = set(re.findall(r"(?:<<|>>)\s*(\w+)\[", str(func.body)))
    args = []
    wide = []
    for k, param in enumerate(func.params):  # a PrimFunc's parameters are its buffers
        shape, dtype = [int(d) for d in param.shape], np.dtype(str(param.dtype))
        if np.issubdtype(dtype, np.floating):
            args.append(rng.standard_normal(shape).astype(dtype))
        elif param.name in shifts:
            args.append(rng.integers(0, 24, size=shape, endpoint=True).astype(dtype))
        elif dtype.itemsize == 1:
            info = np.iinfo(dtype)
            args.append(rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype))
        else:
            wide.append(k)
            args.append(rng.integers(-INT_RANGES[0], INT_RANGES[0], size=shape).astype(dtype))
    for _ in range(SEARCH_PASSES if wide else 0):
        for k in wide:
            trials = [args[:k] + [rng.integers(-bound, bound, size=args[k].shape).astype(args[k].dtype)] + args[k + 1:]
                      for bound in INT_RANGES]
            args = max(trials, key=lambda trial: _output_variety(library, trial))
    return args


def _output_variety(library: tvm.runtime.Module, args: list[np.ndarray]) -> int:
    """Distinct values in the arguments the kernel wrote."""
    return sum(len(np.unique(after)) for before, after in zip(args, _run(library, args))
               if not np.array_equal(before, after))


def _indexes_by_data(func: tirx.PrimFunc) -> bool:
    """Whether some load's index reads memory (a gather, a table lookup) without being clamped into the
    buffer (`table[T.min(T.max(0, code[i]), n - 1)]`, as TOPI's take emits): random inputs could then
    read out of bounds. Read from the printed TIR: its Python API has no expression visitor."""
    text = str(func.body)
    for match in re.finditer(r"\w\[", text):
        for component in _top_level_split(_bracketed(text, match.end())):
            if re.search(r"\w\[", component) and not component.strip().startswith("T.min(T.max("):
                return True
    return False


def _bracketed(text: str, start: int) -> str:
    """The text from `start` up to the bracket that closes the one just before it."""
    depth = 1
    for k in range(start, len(text)):
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(text[k], 0)
        if depth == 0:
            return text[start:k]
    return text[start:]


def _top_level_split(index: str) -> list[str]:
    parts, depth, begin = [], 0, 0
    for k, char in enumerate(index):
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(index[begin:k])
            begin = k + 1
    return parts + [index[begin:]]


def _work(func: tirx.PrimFunc) -> int:
    """Iterations of the function's largest block: its multiply-adds for a reduction kernel."""
    sch = tvm.s_tir.Schedule(func)
    return max((total_work(sch, block) for block in sch.get_child_blocks(sch.get_sblock("root"))), default=1)


def _call_counts(mod: ir.IRModule) -> Counter[str]:
    """How often the module's Relax functions call each PrimFunc."""
    return Counter(call.args[0].name_hint for _, func in mod.functions_items()
                   if isinstance(func, tvm.relax.Function) for call in call_tirs(func))
