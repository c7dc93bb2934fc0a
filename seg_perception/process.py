"""The ``seg_node`` process: its one entry point.

``ros2 run seg_perception seg_node``, the ``seg_node`` console script and
``python -m seg_perception.process`` all run :func:`main`. It installs the signal handlers
(:mod:`~seg_perception.shutdown`) before torch and rclpy are imported, so a signal during a
minute-long import or model load already stops the process cleanly; then it imports the node and
runs it (:func:`seg_perception.node.run`). This module imports the node; the node never imports it.
"""

from __future__ import annotations

import sys

from .shutdown import ShutdownRequested, ShutdownSignals, exit_now


def main(args: list[str] | None = None) -> int:
    """Run ``seg_node`` until SIGINT/SIGTERM/SIGHUP; the exit status (see :func:`~seg_perception.node.run`).

    As the process entry (``args`` None: the arguments are ``sys.argv``) the process ends here
    through :func:`~seg_perception.shutdown.exit_now`, never by interpreter finalisation, which
    can abort while a torch operator is still running in the worker thread. With ``args`` given
    (tests, tools running the node in-process) the handlers are put back and the status returned.
    """
    signals = ShutdownSignals().install()
    try:
        from .node import run  # heavy: rclpy, torch; the handlers are already in place

        code = run(args, signals)
    except ShutdownRequested as exc:  # while importing or building: nothing is left to stop
        print(f"seg_node: {exc} during startup, stopped before serving", file=sys.stderr)
        code = 0
    if args is None:
        exit_now(code)
    signals.restore()
    return code


if __name__ == "__main__":
    main()
