"""Launch seg_node with a parameter file, optionally overriding the parameters users change most.

    ros2 launch seg_perception seg.launch.py --show-args     # every argument, with its description
    ros2 launch seg_perception seg.launch.py device:=cpu precision:=fp32 \
        image_topic:=/front_camera/image_raw namespace:=front config:=front.yaml

An override left empty (its default) keeps the value from ``config``; a given one is handed to the
node unchanged. The node validates it and says why at startup when it is wrong, so this file does
not repeat the node's list of allowed values and need not change when a parameter gains one.
Settings without an argument here (several cameras, thresholds, outputs) go in the ``config`` file.

``lifecycle:=true`` starts seg_node as a managed node (launch_ros ``LifecycleNode``), unconfigured
until a lifecycle manager (or ``ros2 lifecycle set``) configures and activates it;
``autostart:=true`` has this launch do both, with launch_ros's lifecycle events, so the node then
serves as a plain one does:

    ros2 launch seg_perception seg.launch.py lifecycle:=true autostart:=true
"""

import os

import lifecycle_msgs.msg
from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState

#: Launch arguments that override the node parameter of the same name when non-empty.
OVERRIDES = {
    "model": "Architecture name, see `seg-perception models` (empty: from config)",
    "weights": "Checkpoint file (empty: from config)",
    "image_topic": "Input image topic (empty: from config)",
    "device": "auto, cuda or cpu (empty: from config)",
    "precision": "Inference precision: fp16, fp32, or int8 with calibration (empty: from config)",
    "compile": "none, torch_compile or cuda_graph (empty: from config)",
    "image_transport": "raw or compressed input images (empty: from config)",
    "backend": "Inference backend, e.g. torch or onnxruntime (empty: from config)",
    "max_age_ms": "Drop frames older than this many ms, 0 = never (empty: from config)",
    "calibration": "precision int8: drive bag, Cityscapes folder or image folder to calibrate on (empty: from config)",
    "parity_min_agreement": "Parity gate threshold in [0, 1], 0 = off (empty: from config)",
}

#: Overrides the node declares as doubles; ``ros2 launch`` hands every argument over as text.
FLOAT_OVERRIDES = ("max_age_ms", "parity_min_agreement")

#: Launch arguments about the node's lifecycle (see 'Lifecycle, output QoS and lazy serving' in the README).
LIFECYCLE_ARGUMENTS = {
    "lifecycle": "true: a managed (lifecycle) node, unconfigured at start; false: a plain node (empty: from config)",
    "autostart": "true (with lifecycle:=true): configure and activate the managed node at launch",
}
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


class LaunchArgumentError(ValueError):
    """A launch argument that cannot be turned into the parameter type the node declares."""


def _override_value(name: str, text: str) -> str | float:
    if name not in FLOAT_OVERRIDES:
        return text
    try:
        return float(text)
    except ValueError:
        raise LaunchArgumentError(f"{name}:={text[:64]!r} must be a number") from None


def _flag(name: str, context) -> bool | None:
    """A true/false launch argument; None when left empty."""
    text = LaunchConfiguration(name).perform(context).strip().lower()
    if not text:
        return None
    if text not in TRUE + FALSE:
        raise LaunchArgumentError(f"{name}:={text[:64]!r} must be true or false")
    return text in TRUE


def _change_state(node: LifecycleNode, transition: int) -> EmitEvent:
    return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition))


def _node(context, *args, **kwargs):
    given = {name: LaunchConfiguration(name).perform(context) for name in OVERRIDES}
    overrides = {name: _override_value(name, text) for name, text in given.items() if text}
    use_sim_time = LaunchConfiguration("use_sim_time").perform(context).lower() in ("true", "1")
    lifecycle, autostart = _flag("lifecycle", context), _flag("autostart", context)
    if lifecycle is not None:
        overrides["lifecycle"] = lifecycle
    if autostart and not lifecycle:
        raise LaunchArgumentError("autostart:=true needs lifecycle:=true")
    settings = dict(
        package="seg_perception",
        executable="seg_node",
        name="seg_node",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("config"), overrides, {"use_sim_time": use_sim_time}],
        output="screen",
        emulate_tty=True,
    )
    if not lifecycle:
        return [Node(**settings)]
    node = LifecycleNode(**settings)
    if not autostart:
        return [node]
    # configure once the node offers its services; activate once configure has succeeded
    activate = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
        entities=[_change_state(node, lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE)]))
    return [activate, node, _change_state(node, lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE)]


def generate_launch_description():
    default_config = os.path.join(get_package_share_directory("seg_perception"), "config", "seg.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default_config,
                              description="Parameter file for seg_node"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its topics"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="true: judge frame ages on /clock (ros2 bag play --clock)"),
        *(DeclareLaunchArgument(name, default_value="", description=description)
          for name, description in OVERRIDES.items()),
        *(DeclareLaunchArgument(name, default_value="", description=description)
          for name, description in LIFECYCLE_ARGUMENTS.items()),
        OpaqueFunction(function=_node),
    ])
