"""What every pass is: a named IR -> IR step that states what it needs and what it guarantees.

A pass is a class with `run(graph) -> Graph` (it may mutate and return its input). `requires` and
`ensures` name graph properties (strings kept in graph.metadata["properties"]); `Sequential` checks
them around each pass and runs the IR verifier after each one, so a broken invariant is reported by
the pass that broke it.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Iterable

from ..errors import IRError
from ..ir import Graph, verify
from ..ops import OPS

log = logging.getLogger("bitsmith.passes")


class Pass:
    name: ClassVar[str] = "pass"
    requires: ClassVar[tuple[str, ...]] = ()
    ensures: ClassVar[tuple[str, ...]] = ()

    def run(self, graph: Graph) -> Graph:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, graph: Graph) -> Graph:
        missing = [p for p in self.requires if p not in properties(graph)]
        if missing:
            raise IRError(f"pass {self.name!r} requires {missing}; run the passes that ensure them first")
        result = self.run(graph)
        add_properties(result, self.ensures)
        verify(result, OPS)
        log.debug("pass %s: %d nodes", self.name, len(result.nodes))
        return result


class Sequential(Pass):
    name = "sequential"

    def __init__(self, *passes: Pass) -> None:
        self.passes = passes

    def run(self, graph: Graph) -> Graph:
        for p in self.passes:
            graph = p(graph)
        return graph


def properties(graph: Graph) -> set[str]:
    return set(graph.metadata.get("properties", []))


def add_properties(graph: Graph, names: Iterable[str]) -> None:
    graph.metadata["properties"] = sorted(properties(graph) | set(names))
