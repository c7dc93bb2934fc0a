"""The engine interface: one complete protocol that the real engine and every stand-in implement,
refused when incomplete; a torch-free import path node -> scheduler/params -> engine_api; no import
cycles and no reaching into the engine for constants."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reliability_support import FakeEngine
from test_scheduler import BatchEngine, PreparingEngine, Rig

from seg_perception.engine import SegmentationEngine
from seg_perception.engine_api import (
    ENGINE_MEMBERS,
    EngineConfig,
    EngineInterfaceError,
    check_engine,
    missing_engine_members,
)
from seg_perception.scheduler import Scheduler

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "seg_perception"

#: What the node and the scheduler use of an engine; a member missing here means a stand-in could
#: skip a feature unnoticed.
USED_MEMBERS = {"asynchronous", "description", "submit_batch", "memory_allocated_mb", "warmup", "device",
                "class_names", "palette", "close", "recent_batches", "prepare", "recover_from_failure"}


def test_the_protocol_declares_every_member_the_node_and_scheduler_use() -> None:
    assert set(ENGINE_MEMBERS) == USED_MEMBERS


@pytest.mark.parametrize("factory", [
    lambda: SegmentationEngine(EngineConfig(device="cpu", precision="fp32", backend="torch")),
    FakeEngine, BatchEngine, PreparingEngine,
], ids=["SegmentationEngine", "FakeEngine", "BatchEngine", "PreparingEngine"])
def test_the_engine_and_every_stand_in_implement_the_whole_protocol(factory) -> None:
    engine = factory()
    assert missing_engine_members(engine) == []
    assert check_engine(engine) is engine


@pytest.mark.parametrize("member", ENGINE_MEMBERS)
def test_an_engine_missing_any_member_is_refused_by_the_scheduler(member: str) -> None:
    members = {n: v for klass in reversed(FakeEngine.__mro__) for n, v in vars(klass).items()}
    incomplete = type("Incomplete", (), {n: v for n, v in members.items() if n != member and n != "__dict__"})
    engine = incomplete()  # FakeEngine's __init__ sets its instance attributes: only ``member`` is missing
    scheduler = Scheduler(["a"], convert=lambda frame: frame.payload, publish=lambda frame, result: None)
    with pytest.raises(EngineInterfaceError, match=rf"lacks {member}\b"):
        scheduler.install(engine)
    assert scheduler.engine is None
    failures: list[str] = []  # a load that builds one fails with the reason, the old engine serving
    scheduler.install(FakeEngine())
    assert scheduler.load("incomplete", incomplete, on_failed=failures.append)
    scheduler._loader.join(10)
    assert failures and member in failures[0] and isinstance(scheduler.engine, FakeEngine)


def test_a_failed_frame_is_classified_by_the_serving_engine() -> None:
    rig = Rig(BatchEngine(), cameras=("front",))
    try:
        def fail(rgb: np.ndarray) -> None:
            raise MemoryError("no room")

        rig.scheduler.before_inference = fail
        rig.put("front", np.full((4, 6, 3), 1, np.uint8))
        books = rig.settle(1)
    finally:
        rig.close()
    assert books["dropped"] == {"out_of_memory": 1}  # BatchEngine's reading of a MemoryError


def test_scheduler_params_and_engine_api_import_without_torch() -> None:
    code = ("import sys\nimport seg_perception.scheduler, seg_perception.params, seg_perception.engine_api\n"
            "heavy = sorted({'torch', 'onnxruntime', 'seg_perception.engine', 'seg_perception.backends'} & "
            "set(sys.modules))\nprint(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# -- the package's import graph -------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at the top or inside functions."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                graph[name] |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    graph[name].add(target if target in modules else base)
        graph[name] &= set(modules)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected groups of more than one module (Tarjan), each a cycle or several."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = {stack.pop()}
            while v not in group:
                group.add(stack.pop())
            if len(group) > 1 or v in graph[v]:
                cycles.append(frozenset(group))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    assert "seg_perception.backends.export" in graph["seg_perception.backends.onnxruntime_backend"]  # sees edges
    assert import_cycles(graph) == []


def test_a_cycle_is_found_when_there_is_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [frozenset({"a", "b", "c"})]


def test_params_training_and_scheduler_do_not_import_the_engine() -> None:
    graph = import_graph()
    for name, imports in graph.items():
        if name == "seg_perception.params" or name.startswith("seg_perception.training") or \
                name == "seg_perception.scheduler":
            assert "seg_perception.engine" not in imports, name


def _getattr_on_engine_or_result(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" and node.args:
            subject = ast.unparse(node.args[0]).lower()
            if "engine" in subject or "result" in subject or subject in ("serving", "retired"):
                lines.append(node.lineno)
    return lines


def test_nothing_in_the_package_fetches_engine_or_result_members_with_getattr() -> None:
    found = {str(p.relative_to(PACKAGE)): lines for p in PACKAGE.rglob("*.py")
             if (lines := _getattr_on_engine_or_result(p))}
    assert found == {}


def test_the_getattr_scan_finds_such_a_use(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f(engine, x):\n    a = getattr(x, 'y', 1)\n    return getattr(engine, 'warmup', None)\n")
    assert _getattr_on_engine_or_result(source) == [3]


def test_normalisation_round_trips_through_export_metadata() -> None:
    from seg_perception.normalization import IMAGENET, Normalization, NormalizationError

    bgr = Normalization(mean=(0.4, 0.5, 0.6), std=(0.1, 0.2, 0.3), channel_order="bgr")
    assert Normalization.from_metadata(bgr.to_metadata()) == bgr
    assert Normalization.from_metadata({"model": "x"}) is None
    with pytest.raises(NormalizationError, match="std must be > 0"):
        Normalization.from_metadata({**IMAGENET.to_metadata(), "std": "[0.2, 0, 0.2]"})
    with pytest.raises(NormalizationError, match="unreadable"):
        Normalization.from_metadata({**IMAGENET.to_metadata(), "mean": "not json"})
