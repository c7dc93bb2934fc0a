"""The node stays a thin rclpy adapter: what it delegates to needs no ROS, data flows one way
(process -> node -> its parts -> scheduler), and no class in node.py grows past 300 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "seg_perception"

#: The node's ROS-free parts: each is importable, and unit-tested, without rclpy.
ROS_FREE = ("parameter_state", "reload", "frame_conversion", "health", "log_throttle", "topics",
            "weights_access", "shutdown", "process", "scheduler", "params", "lifecycle")
#: Modules that must not be part of any import cycle.
ACYCLIC = ROS_FREE + ("node", "rclpy_compat", "camera_io")


def _imports(path: Path) -> set[str]:
    """The package modules a file imports, at any depth (imports inside functions count)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(0, node.level - 1)):
                base = base.rsplit(".", 1)[0]
            target = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("seg_perception")}


def _graph() -> dict[str, set[str]]:
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_node_and_its_parts_are_in_no_import_cycle() -> None:
    graph = _graph()
    for name in ACYCLIC:
        module = f"seg_perception.{name}"
        assert module not in _reaches(graph, module), f"{module} imports itself through a cycle"
    assert "seg_perception.process" not in _reaches(graph, "seg_perception.node")


def test_the_node_parts_import_without_rclpy() -> None:
    code = ("import sys\n" + "".join(f"import seg_perception.{name}\n" for name in ROS_FREE)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rcl_interfaces')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_class_in_node_py_is_over_300_lines() -> None:
    tree = ast.parse((PACKAGE / "node.py").read_text())
    sizes = {n.name: n.end_lineno - n.lineno + 1 for n in tree.body if isinstance(n, ast.ClassDef)}
    assert sizes and max(sizes.values()) <= 300, sizes


def test_python_m_node_points_at_the_process_entry() -> None:
    out = subprocess.run([sys.executable, "-m", "seg_perception.node"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "python -m seg_perception.process" in out.stderr
