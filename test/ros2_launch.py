"""``ros2 launch PKG FILE [--show-args] [NAME:=VALUE ...]`` for machines without ros2cli.

ros2cli is not on PyPI. Its ``launch`` verb (ros2launch/command/launch.py) finds the file in the
package's share folder and hands it to ``ros2launch.api``; this script makes the same calls with
the same defaults, so the tests run what a user's ``ros2 launch`` runs. The launch sources must be
on PYTHONPATH (ros_native_support.Workspace.launch_env).
"""

from __future__ import annotations

import argparse
import sys

from ros2launch.api import get_share_file_path_from_package, launch_a_launch_file, print_arguments_of_launch_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ros2 launch")
    parser.add_argument("package_name")
    parser.add_argument("launch_file_name")
    parser.add_argument("launch_arguments", nargs="*", help="<name>:=<value>")
    parser.add_argument("-s", "--show-args", "--show-arguments", action="store_true")
    args = parser.parse_args(argv)
    path = get_share_file_path_from_package(package_name=args.package_name, file_name=args.launch_file_name)
    if args.show_args:
        print_arguments_of_launch_file(launch_file_path=path)
        return 0
    return launch_a_launch_file(launch_file_path=path, launch_file_arguments=args.launch_arguments,
                                noninteractive=not sys.stdin.isatty())


if __name__ == "__main__":
    sys.exit(main())
