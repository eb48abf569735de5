"""Optional tuning (backends/tuning.py, `bitsmith compile --tune N`) on a real model (MTCNN RNet, W8A8):

- a first compile tunes every kernel it can within its trials and fills the per-target database; a
  second compile of the same model finds them all there and spends no trial and no tuning time;
- a tuned artifact computes exactly what the untuned one computes (integer kernels, bit for bit);
- a tuned schedule is used only after it matches the kernel's reference: a record that fails the check
  leaves the default schedule; the default tiling is candidate 0 of the design space;
- bad tuning options are usage errors.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import te
from tvm.s_tir import meta_schedule as ms

from bitsmith import cli, zoo
from bitsmith.artifact import Artifact
from bitsmith.backends import tuning, x86
from bitsmith.backends.cpu_schedule import MAX_TILINGS, schedule_tiled_reduction, tile_shapes, weight_code_bounds
from bitsmith.errors import UsageError
from bitsmith.pipeline import compile_traced
from bitsmith.targets import load

MODEL = "mtcnn_rnet"
RECIPE = "w8a8"


@pytest.fixture(scope="module")
def rnet():
    return zoo.onnx_path(MODEL), zoo.inputs(MODEL, 8, split="calib"), zoo.inputs(MODEL, 4)


def compile_rnet(rnet, out, **tuning_args):
    path, calibration, _ = rnet
    return compile_traced(path, "host", recipe=RECIPE, calibration=calibration, output_dir=out, quiet=True,
                          input_shapes=zoo.input_shapes(MODEL), **tuning_args)


def outputs(artifact: Artifact, feeds) -> list[dict[str, np.ndarray]]:
    return [artifact.run(feed) for feed in feeds]


@pytest.fixture(scope="module")
def untuned(rnet, tmp_path_factory):
    return compile_rnet(rnet, tmp_path_factory.mktemp("untuned") / "artifact")


@pytest.fixture(scope="module")
def tuned_twice(rnet, tmp_path_factory):
    database = tmp_path_factory.mktemp("tuning")
    trials = MAX_TILINGS * 16  # more than RNet's kernels have candidates
    first = compile_rnet(rnet, tmp_path_factory.mktemp("first") / "artifact", tune=trials, tuning_database=database)
    second = compile_rnet(rnet, tmp_path_factory.mktemp("second") / "artifact", tune=trials,
                          tuning_database=database)
    return first, second, database


def test_the_first_compile_tunes_every_kernel_and_the_second_reuses_the_database(tuned_twice):
    first, second, database = tuned_twice
    assert first.tuning.kernels >= 5  # its convolutions and matmuls (fused lookups included), its pools
    assert first.tuning.tuned == first.tuning.kernels and first.tuning.from_database == 0
    assert first.tuning.kernels < first.tuning.trials <= first.tuning.kernels * MAX_TILINGS
    assert first.tuning.tuning_seconds > 0
    directory = tuning.database_dir(database, load("host").name)
    records = (directory / "database_tuning_record.json").read_text().splitlines()
    assert len(records) == first.tuning.trials
    assert second.tuning.from_database == second.tuning.kernels == first.tuning.kernels
    assert second.tuning.trials == 0 and second.tuning.tuned == 0 and second.tuning.tuning_seconds == 0
    assert second.tuning.replaced == first.tuning.replaced and not second.tuning.rejected
    assert second.artifact.manifest["tuned_kernels"] == first.artifact.manifest["tuned_kernels"]


def test_a_tuned_artifact_equals_the_untuned_one_bit_for_bit(rnet, untuned, tuned_twice):
    first, _, _ = tuned_twice
    feeds = rnet[2]
    for want, got in zip(outputs(untuned.artifact, feeds), outputs(first.artifact, feeds)):
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def rnet_kernels(rnet, target_name: str = "host"):
    """The x86 scheduling input of RNet's W8A8 graph (before ScheduleCPU) and its tunable workloads."""
    from bitsmith.backends.relax_emit import emit_relax
    from bitsmith.passes.lower_integer import lower_integer
    from bitsmith.pipeline import load_model
    from bitsmith.quantize import quantize
    from bitsmith.recipes import preset

    path, calibration, _ = rnet
    lowered = lower_integer(quantize(load_model(path, zoo.input_shapes(MODEL)), preset(RECIPE), calibration, quiet=True))
    target = load(target_name)
    passes = x86.scheduling_passes(x86.cpu_shape(target))
    before_schedule = passes[:[type(p).__name__ for p in passes].index("ScheduleCPU")]
    with x86.tvm_target(target):
        mod = tvm.transform.Sequential(before_schedule)(emit_relax(lowered).mod)
    return target, mod, tuning.tunable_workloads(mod, x86.cpu_shape(target))


def design_spaces(target, workload) -> list:
    context = tuning._tune_context(workload, x86.tvm_target(target), tuning._space(x86.cpu_shape(target)), "k", 0)
    return context.generate_design_space()


def test_the_default_tiling_is_the_first_design_space_and_every_candidate_matches_the_reference(rnet):
    target, mod, workloads = rnet_kernels(rnet)
    cpu = x86.cpu_shape(target)
    bounds = weight_code_bounds(mod)
    candidates = 0
    for gvar, (workload, _) in workloads.items():
        spaces = design_spaces(target, workload)
        candidates += len(spaces) - 1
        choices = [tuning.tiling_choice(space.mod["main"]) for space in spaces]
        assert choices == sorted(set(choices)) and choices[0] == 0
        default = schedule_tiled_reduction(mod[gvar], cpu, bounds.get(gvar.name_hint, {}))
        annotated = tvm.s_tir.Schedule(default)
        annotated.annotate(annotated.get_sblock("root"), tuning.CHOICE_ANNOTATION, 0)
        assert tvm_ffi.structural_equal(spaces[0].mod["main"].body, annotated.mod["main"].body, map_free_vars=True)
        for space in spaces[1:]:
            assert tuning.check_against_reference(workload["main"], space.mod["main"], x86.tvm_target(target)) == ""
    assert candidates >= 4, "RNet's convolutions have several tilings each"


def record_choice(database_root, target, workload, choice: int) -> None:
    """Write a tuning record that makes tiling `choice` the fastest schedule of `workload`."""
    space = next(s for s in design_spaces(target, workload) if tuning.tiling_choice(s.mod["main"]) == choice)
    directory = tuning.database_dir(database_root, target.name)
    directory.mkdir(parents=True, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=str(directory), module_equality="structural")
    entry = database.commit_workload(workload)
    database.commit_tuning_record(ms.database.TuningRecord(
        space.trace, entry, run_secs=[1e-9], target=x86.tvm_target(target),
        args_info=ms.arg_info.ArgInfo.from_prim_func(workload["main"])))


@pytest.fixture(scope="module")
def recorded(rnet, tmp_path_factory):
    """A database where RNet's heaviest kernel is recorded as fastest with tiling choice 1."""
    target, _, workloads = rnet_kernels(rnet)
    gvar, (workload, _) = max(workloads.items(), key=lambda item: item[1][1])
    database = tmp_path_factory.mktemp("recorded")
    record_choice(database, target, workload, 1)
    return database, gvar.name_hint


def test_a_recorded_schedule_is_used_after_its_check(rnet, untuned, recorded, tmp_path):
    database, kernel = recorded
    compiled = compile_rnet(rnet, tmp_path / "artifact", tune=0, tuning_database=database)
    assert compiled.tuning.replaced == {kernel: 1} and compiled.tuning.trials == 0
    feeds = rnet[2]
    for want, got in zip(outputs(untuned.artifact, feeds), outputs(compiled.artifact, feeds)):
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_a_schedule_that_fails_its_check_is_not_used(rnet, recorded, tmp_path, monkeypatch):
    database, kernel = recorded
    checked = []

    def wrong(reference, scheduled, target, seed=0):
        checked.append(tuning.tiling_choice(scheduled))
        return "argument 3 differs in 1 of 64 elements"

    monkeypatch.setattr(tuning, "check_against_reference", wrong)
    compiled = compile_rnet(rnet, tmp_path / "artifact", tune=0, tuning_database=database)
    assert checked == [1]
    assert compiled.tuning.rejected == [kernel] and compiled.tuning.replaced == {}
    assert compiled.artifact.manifest["tuned_kernels"] == {}


def test_the_reference_check_sees_a_convolution_whose_sum_is_off(rnet):
    """RNet's second convolution with every product plus one (its sums off by the 252 products) fails."""
    target, _, workloads = rnet_kernels(rnet)
    workload = next(w for gvar, (w, _) in workloads.items() if gvar.name_hint.startswith("fused_conv2d1_"))
    text = workload["main"].script()
    update = next(line for line in text.splitlines() if " * T.Cast(" in line)
    wrong = tvm.script.from_source(text.replace(update, update.replace(" + T.Cast", " + 1 + T.Cast", 1)))
    message = tuning.check_against_reference(workload["main"], wrong, x86.tvm_target(target))
    assert re.fullmatch(r"argument 8 differs in \d+ of 3888 elements", message), message


def test_the_check_draws_arguments_that_exercise_a_quantized_kernel(rnet):
    """Not the saturated outputs of uniform random integers: many distinct output codes."""
    target, _, workloads = rnet_kernels(rnet)
    for gvar, (workload, _) in workloads.items():
        if "requantize" in gvar.name_hint:
            library = tuning._library(workload["main"], x86.tvm_target(target))
            args = tuning.exercising_arguments(library, workload["main"], np.random.default_rng(0))
            output = tuning._run(library, args)[-1]
            assert len(np.unique(output)) >= min(64, output.size // 4), gvar.name_hint


def one_output_kernel(compute) -> tvm.tirx.PrimFunc:
    a = te.placeholder((64,), "float32", name="a")
    return te.create_prim_func([a, te.compute((64,), lambda i: compute(a[i]), name="b")])


def test_the_reference_check_holds_floats_to_a_relative_tolerance():
    target = x86.tvm_target(load("host"))
    reference = one_output_kernel(lambda x: x * 2.0)
    assert tuning.check_against_reference(reference, one_output_kernel(lambda x: x + x), target) == ""
    message = tuning.check_against_reference(reference, one_output_kernel(lambda x: x * 2.001), target)
    assert message.startswith("argument 1 differs by")


def test_an_integer_kernel_must_match_bit_for_bit():
    target = x86.tvm_target(load("host"))
    a = te.placeholder((64,), "int32", name="a")

    def plus(k: int) -> tvm.tirx.PrimFunc:
        return te.create_prim_func([a, te.compute((64,), lambda i: a[i] + k, name="b")])

    kernels = [plus(0), plus(1)]
    assert tuning.check_against_reference(kernels[0], kernels[0], target) == ""
    assert tuning.check_against_reference(kernels[0], kernels[1], target) == "argument 1 differs in 64 of 64 elements"


def test_bad_tuning_options_are_usage_errors(rnet, tmp_path, capsys):
    with pytest.raises(UsageError, match="trials"):
        compile_rnet(rnet, tmp_path / "a", tune=-1)
    with pytest.raises(UsageError, match="only when tuning"):
        compile_rnet(rnet, tmp_path / "b", tuning_database=tmp_path / "db")
    elsewhere = dataclasses.replace(load("host"), name="x86-future", host_features=("avx10_9",))
    with pytest.raises(UsageError, match="'x86-future' does not run here"):
        compile_traced(rnet[0], elsewhere, tune=4, input_shapes=zoo.input_shapes(MODEL), tuning_database=tmp_path / "db", quiet=True)
    code = cli.main(["compile", str(rnet[0]), "-o", str(tmp_path / "c"), "--input-shape", "input=1x3x24x24",
                     "--tune", "-3"])
    assert code == 2 and "--tune takes a number of trials >= 0, not -3" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_the_default_tile_keeps_at_most_max_accumulators_and_tuning_may_try_larger_ones(rnet):
    """On AVX-512 (32 registers) each RNet kernel's default tile holds at most CPUShape.max_accumulators
    accumulators, counted in full-width vectors (measured: 20-24 ran up to 2.7x slower than 10-15 on Zen 4);
    larger tiles stay tuning candidates."""
    target, mod, workloads = rnet_kernels(rnet, "x86-avx512")
    cpu = x86.cpu_shape(target)
    lanes = 16  # int32 / float32 lanes of a 512-bit vector
    bounds = weight_code_bounds(mod)
    accumulators = []
    for gvar, (workload, _) in workloads.items():
        shapes = tile_shapes(workload["main"], cpu, bounds.get(gvar.name_hint, {}))
        accumulators.append([rows * cols / lanes for rows, cols in shapes])  # a 4-lane xmm one is a quarter
    assert all(a[0] <= cpu.max_accumulators for a in accumulators)
    assert max(a[0] for a in accumulators) >= 8  # wide kernels fill the registers they may
    assert any(max(a) > cpu.max_accumulators for a in accumulators)
