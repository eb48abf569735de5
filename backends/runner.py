"""Load an exported bitsmith library and run its "main" function from numpy, in this process.

`TVMRunner(lib_path)` loads the shared library once and keeps its Relax VM, so repeated runs only
convert the inputs. Parameters (the weights, passed after the inputs, as `EmittedModule.param_arrays`
gives them) are converted to TVM tensors once per distinct list of array objects and cached: do
not modify them in place between runs. When the library has a `main_transform_params` function
(weights re-laid-out and packed by the build, see backends/x86.py), it runs once per parameter list
and main receives its results.

TVM's thread pool belongs to the thread that first runs a parallel kernel: create and run a
TVMRunner from the same thread for `threads` to apply.
"""

from __future__ import annotations

import os
import time as _time
from typing import Sequence

import numpy as np
import tvm
from tvm import relax

from bitsmith.errors import ArtifactError, DataError

TRANSFORM_PARAMS = "main_transform_params"

# TVM's CPU thread pool sizes itself to half the logical CPUs on x86 (it assumes hyper-threading),
# i.e. ONE thread on a 2-vCPU machine. `configure_threads` sets it explicitly; it takes effect only
# if it runs before the calling thread's pool is first used (TVM cannot grow a pool afterwards).
_AFFINITY_SHARE_ALL_CORES = -3


def available_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


_requested_threads: int | None = None  # the last explicit request, which a default must not undo


def configure_threads(threads: int | None = None) -> int:
    """Use `threads` worker threads; returns the count in use. The default is the count last asked for
    in this process (an explicit `configure_threads(1)` survives loading an artifact), else every CPU
    this process may run on."""
    global _requested_threads
    if threads is not None:
        _requested_threads = threads
    cpus = available_cpus()
    count = threads or _requested_threads or len(cpus)
    tvm.get_global_func("runtime.config_threadpool")(_AFFINITY_SHARE_ALL_CORES, count, [str(c) for c in cpus])
    return int(tvm.get_global_func("runtime.NumThreads")())


def _device(name: str) -> tvm.runtime.Device:
    devices = {"cpu": tvm.cpu, "llvm": tvm.cpu, "cuda": tvm.cuda, "gpu": tvm.cuda}
    if name not in devices:
        raise DataError(f"unknown device {name!r}; expected one of {sorted(devices)}")
    return devices[name](0)


class TVMRunner:
    """Runs main(*inputs, *params) of an exported library and returns numpy outputs.

    `threads` sets TVM's CPU thread pool (default: as last configured, else every available CPU), see
    `configure_threads`.
    """

    def __init__(self, lib_path: str, device: str = "cpu", threads: int | None = None) -> None:
        try:
            module = tvm.runtime.load_module(str(lib_path))
        except Exception as exc:
            raise ArtifactError(f"cannot load compiled library {lib_path}: {exc}") from exc
        self.lib_path = str(lib_path)
        self.device = _device(device)
        self.threads = configure_threads(threads) if device in ("cpu", "llvm") else None
        self.vm = relax.VirtualMachine(module, self.device)
        self._main = self.vm["main"]
        self._transform_params = self._optional_function(TRANSFORM_PARAMS)
        self._cached_key: tuple[int, ...] | None = None
        self._cached_sources: list[np.ndarray] = []
        self._cached_params: list[tvm.runtime.Tensor] = []

    def _optional_function(self, name: str):
        try:
            return self.vm[name]
        except Exception:  # the VM raises when the function does not exist
            return None

    # -- conversion -----------------------------------------------------------------------------
    def _tensor(self, array: np.ndarray) -> tvm.runtime.Tensor:
        return tvm.runtime.tensor(np.asarray(array, order="C"), self.device)

    def _param_tensors(self, params: Sequence[np.ndarray]) -> list[tvm.runtime.Tensor]:
        key = tuple(id(p) for p in params)
        if key != self._cached_key:
            tensors = [self._tensor(p) for p in params]
            if self._transform_params is not None:
                tensors = list(self._transform_params(tensors))
            self._cached_key, self._cached_sources, self._cached_params = key, list(params), tensors
        return self._cached_params

    def prepare(self, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray]) -> list[tvm.runtime.Tensor]:
        """The VM arguments for these numpy inputs and params (params cached between calls)."""
        try:
            weights = self._param_tensors(params)
        except Exception as exc:
            raise DataError(f"{self.lib_path}: main_transform_params rejected the {len(params)} params: {exc}") from exc
        return [self._tensor(x) for x in inputs] + weights

    # -- running --------------------------------------------------------------------------------
    def run(self, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray] = ()) -> list[np.ndarray]:
        """Outputs of main as numpy arrays, in the graph's output order (always a list)."""
        args = self.prepare(inputs, params)
        try:
            result = self._main(*args)
        except Exception as exc:  # the VM checks every argument's shape and dtype
            described = ", ".join(f"{x.dtype}{list(x.shape)}" for x in map(np.asarray, inputs))
            raise DataError(f"{self.lib_path}: main rejected {len(inputs)} inputs ({described}) and "
                            f"{len(params)} params: {exc}") from exc
        return _to_numpy(result)

    def time(self, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray] = (), repeat: int = 10,
             warmup: int = 1) -> list[float]:
        """Milliseconds of each of `repeat` runs of main (inputs already converted; outputs not copied)."""
        args = self.prepare(inputs, params)
        for _ in range(warmup):
            self._main(*args)
        times = []
        for _ in range(repeat):
            start = _time.perf_counter()
            self._main(*args)
            times.append((_time.perf_counter() - start) * 1e3)
        return times

    def profile(self, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray] = ()) -> list[tuple[str, float]]:
        """(symbol, milliseconds) of every call main makes, in call order: compiled kernels and VM
        built-ins, each timed around the call through the VM's instrument hook (adds ~1 us per call)."""
        args = self.prepare(inputs, params)
        calls: list[tuple[str, float]] = []
        started: list[float] = []

        def instrument(func, symbol, before_run, ret_value, *call_args):  # the VM's instrument signature
            if before_run:
                started.append(_time.perf_counter())
            else:
                calls.append((str(symbol), (_time.perf_counter() - started.pop()) * 1e3))
            return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

        self.vm.set_instrument(instrument)
        try:
            self._main(*args)
        finally:
            self.vm.set_instrument(None)
        return calls


def _to_numpy(result) -> list[np.ndarray]:
    if isinstance(result, tvm.runtime.Tensor):
        return [result.numpy()]
    outputs: list[np.ndarray] = []
    for item in result:
        outputs.extend(_to_numpy(item))
    return outputs
