"""The rclpy internals ``seg_node`` relies on, in one place.

rclpy has no public API for two things the node needs, so it uses private members. Each is
wrapped here, and ``test/test_rclpy_compat.py`` fails when an rclpy release changes one of them,
instead of the node failing at run time. Differences between rclpy releases (7.x in Jazzy, 9.x in
Kilted) are handled here too, so the node is written against one interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rclpy.node import Node
from rclpy.parameter import Parameter


def parameter_overrides(node: Node) -> dict[str, Parameter]:
    """The parameter values given to ``node`` from outside (``-p``, ``--params-file``, launch,
    ``parameter_overrides=``), including names the node never declared: rclpy ignores those
    silently, and the node warns about them (typos)."""
    return dict(getattr(node, "_parameter_overrides", {}))


def set_read_only_parameters(node: Node, parameters: Sequence[Parameter]) -> Any:
    """Set parameters that are declared read-only, as the node's own update (the set callbacks
    and parameter events run as for any set). rclpy checks read-only unless new descriptors are
    given, as it does itself when declaring; so each parameter's current descriptor is passed."""
    descriptors = {p.name: node.describe_parameter(p.name) for p in parameters}
    return node._set_parameters_atomically_common(list(parameters), descriptors)
