"""The rclpy internals the node uses still exist and behave as the node expects. A failure here
means an rclpy release changed them: adapt ``seg_perception/rclpy_compat.py``, not the node."""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest
import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.lifecycle.node import LifecycleNodeMixin
from rclpy.node import Node
from rclpy.parameter import Parameter

from seg_perception.rclpy_compat import (
    destroy_lifecycle,
    init_lifecycle,
    parameter_overrides,
    set_read_only_parameters,
)

pytestmark = pytest.mark.ros


def test_private_members_have_the_expected_shape() -> None:
    assert "descriptors" in inspect.signature(Node._set_parameters_atomically_common).parameters
    assert "_parameter_overrides" in inspect.getsource(Node.__init__)


def test_overrides_include_undeclared_names_and_read_only_parameters_can_be_set() -> None:
    context = rclpy.Context()
    context.init()
    try:
        node = Node("compat_probe", context=context,
                    parameter_overrides=[Parameter("declared", value=1), Parameter("typo", value=2)])
        node.declare_parameter("declared", 0)
        node.declare_parameter("names", ["a"], ParameterDescriptor(read_only=True))
        overrides = parameter_overrides(node)
        assert set(overrides) == {"declared", "typo"} and overrides["typo"].value == 2
        assert not node.has_parameter("typo")
        (refused,) = node.set_parameters([Parameter("names", value=["b"])])
        assert not refused.successful  # a caller cannot set it
        seen: list[list[str]] = []

        def callback(params: list[Parameter]) -> SetParametersResult:
            seen.append([p.name for p in params])
            return SetParametersResult(successful=True)

        node.add_on_set_parameters_callback(callback)
        result = set_read_only_parameters(node, [Parameter("names", value=["b", "c"])])
        assert result.successful and list(node.get_parameter("names").value) == ["b", "c"]
        assert seen == [["names"]]  # the set callbacks ran, as for any set
        assert node.describe_parameter("names").read_only  # still read-only for callers
        node.destroy_node()
    finally:
        context.try_shutdown()


def test_lifecycle_node_construction_is_node_then_mixin() -> None:
    """``init_lifecycle`` repeats the second half of ``LifecycleNode.__init__``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(LifecycleNode.__init__)))
    calls = [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "__init__"]
    assert calls == ["Node.__init__", "LifecycleNodeMixin.__init__"]
    assert "enable_communication_interface" in inspect.signature(LifecycleNodeMixin.__init__).parameters


@pytest.mark.parametrize("services", [True, False])
def test_init_lifecycle_offers_the_services_only_when_asked(services: bool) -> None:
    context = rclpy.Context()
    context.init()
    try:
        node = LifecycleNode.__new__(LifecycleNode)
        Node.__init__(node, "compat_lifecycle", context=context)
        init_lifecycle(node, services=services)
        names = {name for name, _ in node.get_service_names_and_types_by_node("compat_lifecycle", "/")}
        assert ("/compat_lifecycle/change_state" in names) is services
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS  # the state machine works either way
        node.destroy_node()
        destroy_lifecycle(node)
    finally:
        context.try_shutdown()


def test_a_destroyed_lifecycle_node_leaves_the_graph_at_once() -> None:
    context = rclpy.Context()
    context.init()
    try:
        observer = Node("compat_observer", context=context)
        node = LifecycleNode("compat_gone", context=context)
        assert ("compat_gone", "/") in observer.get_node_names_and_namespaces()
        node.destroy_node()
        destroy_lifecycle(node)
        assert ("compat_gone", "/") not in observer.get_node_names_and_namespaces()
        observer.destroy_node()
    finally:
        context.try_shutdown()
