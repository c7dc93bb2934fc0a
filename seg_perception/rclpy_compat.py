"""The rclpy internals ``seg_node`` relies on, in one place.

rclpy has no public API for four things the node needs, so it uses private members or steps.
Each is wrapped here, and ``test/test_rclpy_compat.py`` fails when an rclpy release changes one
of them, instead of the node failing at run time. Differences between rclpy releases (7.x in
Jazzy, 9.x in Kilted) are handled here too, so the node is written against one interface; the
test suite runs on both (``make test``, ``make test-jazzy``). So far none of what the node uses
differs between them: the private members below, ``rclpy.lifecycle`` (only type hints changed)
and the QoS, publisher and timer APIs behave alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rclpy.lifecycle import LifecycleNode
from rclpy.lifecycle.node import LifecycleNodeMixin
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


def init_lifecycle(node: LifecycleNode, *, services: bool) -> None:
    """Finish constructing ``node``, a ``LifecycleNode`` whose ``Node`` part was built with
    ``Node.__init__``. rclpy's ``LifecycleNode.__init__`` is exactly these two steps; seg_node
    reads its ``lifecycle`` parameter between them to decide whether to offer the lifecycle
    services and ``transition_event`` (``services``). Without them (a plain node) it keeps the
    state machine alone and drives it itself, invisible to other participants."""
    LifecycleNodeMixin.__init__(node, enable_communication_interface=services)


def destroy_lifecycle(node: LifecycleNode) -> None:
    """Destroy ``node``'s lifecycle state machine; call after ``destroy_node``. rclpy's
    ``destroy_node`` leaves it, and it holds the node's handle: the node would stay in the ROS
    graph (its name listed, a second node of that name warned about) until garbage collection."""
    machine = getattr(node, "_state_machine", None)
    if machine is not None:
        machine.destroy_when_not_in_use()
