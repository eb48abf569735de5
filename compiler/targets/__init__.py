"""Targets are data: one JSON file per target in this folder, read by passes and backends.

A target file names its family (which backend builds it), the TVM target dict, the features a host
CPU needs to run it, the number formats it computes natively or by emulation, peak throughput per
format, and memory sizes. `resolve("host")` picks the best x86 target this machine can run.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UsageError


@dataclass(frozen=True)
class Target:
    name: str
    family: str
    description: str
    tvm_target: dict[str, Any]
    host_features: tuple[str, ...] = ()
    cores: int = 1
    clock_ghz: float = 1.0
    vector_bits: int = 128
    fma_ports: int = 1
    formats: dict[str, list[str]] = field(default_factory=dict)
    peak_ops_per_cycle_per_core: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)

    def runs_on_host(self) -> bool:
        """True when this machine can execute the target's code (same ISA, features present)."""
        if self.family != "x86" or platform.machine() not in ("x86_64", "AMD64"):
            return False
        return set(self.host_features) <= host_cpu_features()

    def peak_gops(self, fmt: str) -> float:
        """Peak throughput in GOP/s (a MAC is 2 ops) from cores x ops/cycle x clock."""
        return self.cores * self.peak_ops_per_cycle_per_core.get(fmt, 0.0) * self.clock_ghz

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _target_files() -> dict[str, Path]:
    folder = resources.files(__name__)
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".json")}


def available() -> list[str]:
    return sorted(_target_files())


def load(name: str) -> Target:
    """The target named `name`, or "host" for the best one this machine runs."""
    if name == "host":
        return resolve_host()
    files = _target_files()
    if name not in files:
        raise UsageError(f"unknown target {name!r}; known targets: {', '.join(['host', *sorted(files)])} "
                         "(run `bitsmith targets` for details)")
    data = json.loads(files[name].read_text())
    data["host_features"] = tuple(data.get("host_features", ()))
    return Target(**data)


def host_cpu_features() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def resolve_host() -> Target:
    """The most capable x86 target whose features this CPU has."""
    runnable = [load(n) for n in available()]
    runnable = [t for t in runnable if t.runs_on_host()]
    if not runnable:
        raise UsageError(f"no bitsmith target runs on this machine ({platform.machine()}); "
                         f"name one explicitly with --target (known: {', '.join(available())})")
    return max(runnable, key=lambda t: (t.vector_bits, len(t.host_features)))
