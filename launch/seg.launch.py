"""Launch seg_node with the installed config, optionally overriding model, weights and topic.

    ros2 launch seg_perception seg.launch.py model:=deeplabv3plus weights:=/path/ckpt.pth \
        image_topic:=/front_camera/image_raw namespace:=front
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

#: Launch arguments that override the config file when given a non-empty value.
OVERRIDES = ("model", "weights", "image_topic")


def _node(context, *args, **kwargs):
    overrides = {
        name: LaunchConfiguration(name).perform(context)
        for name in OVERRIDES
        if LaunchConfiguration(name).perform(context)
    }
    use_sim_time = LaunchConfiguration("use_sim_time").perform(context).lower() in ("true", "1")
    return [
        Node(
            package="seg_perception",
            executable="seg_node",
            name="seg_node",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("config"), overrides, {"use_sim_time": use_sim_time}],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    default_config = os.path.join(get_package_share_directory("seg_perception"), "config", "seg.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default_config,
                              description="Parameter file for seg_node"),
        DeclareLaunchArgument("model", default_value="", description="Override the model name"),
        DeclareLaunchArgument("weights", default_value="", description="Override the checkpoint path"),
        DeclareLaunchArgument("image_topic", default_value="", description="Override the input topic"),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="Use /clock"),
        OpaqueFunction(function=_node),
    ])
