"""The rclpy internals the node uses still exist and behave as the node expects. A failure here
means an rclpy release changed them: adapt ``seg_perception/rclpy_compat.py``, not the node."""

from __future__ import annotations

import inspect

import pytest
import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from seg_perception.rclpy_compat import parameter_overrides, set_read_only_parameters

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
