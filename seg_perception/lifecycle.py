"""What ``seg_node`` does in each lifecycle transition, without ROS.

With ``lifecycle: true`` seg_node is a ROS 2 managed node, so a driving stack brings it up in
order: load the model while the car is parked, serve when the stack is ready, pause without
tearing down, give the GPU back. The states and transitions are ROS 2's (``lifecycle_msgs``):

* **unconfigured** (at start): parameters declared and validated; no model, no input, no output;
* **configure** builds and warms the engine (compiling/exporting what the config asks). A failure
  fails the transition with the reason (logged, and ERROR on ``/diagnostics``): nothing stays
  loaded and the node stays unconfigured;
* **activate** serves: the node subscribes and publishes; **deactivate** pauses: the scheduler
  drops frames still waiting or in flight (``inactive``) and the node unsubscribes, keeping the
  engine; **cleanup** releases the engine and its device memory; **shutdown** (from any state)
  does what is needed of these and ends in **finalized**.

The node (rclpy's ``LifecycleNode`` callbacks) creates and destroys its ROS entities, outputs on
configure and the subscriptions on activate, and calls :class:`ServingLifecycle` for the rest. A
plain node (``lifecycle: false``) runs the same configure and activate at startup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .reload import ReloadController
from .scheduler import INACTIVE as INACTIVE_DROP
from .scheduler import Scheduler

UNCONFIGURED, INACTIVE, ACTIVE, FINALIZED = "unconfigured", "inactive", "active", "finalized"


class ServingLifecycle:
    """The serving side of the transitions: the scheduler (serving, pausing) and the reload
    controller (building and releasing the engine). :attr:`state` is the state reached by the
    last successful transition (a failed one leaves it, as ROS 2 does)."""

    def __init__(self, scheduler: Scheduler, reload: ReloadController,
                 log: Callable[[int, str], None] = lambda level, message: None) -> None:
        self.scheduler, self.reload, self.log = scheduler, reload, log
        self.state = UNCONFIGURED
        scheduler.pause(INACTIVE_DROP, timeout=0.0)  # nothing is served before activate

    def configure(self, *, stay_configured: bool = False) -> Exception | None:
        """Build and warm the engine; None on success, else what the build raised.

        On failure the reason is the scheduler's ``startup_error`` (ERROR on ``/diagnostics``)
        and nothing stays loaded, unless ``stay_configured``: a plain node without ``fail_fast``
        stays up without a model and loads the next model change, as it always has.
        """
        try:
            self.reload.start()
        except Exception as exc:  # any build failure fails the transition the same way
            if not stay_configured:
                self.reload.release()
            self.scheduler.startup_failed(f"{type(exc).__name__}: {exc}")
            if stay_configured:
                self.state = INACTIVE
            return exc
        self.state = INACTIVE
        return None

    def activate(self) -> None:
        """Serve from the next frame on."""
        self.scheduler.resume()
        self.state = ACTIVE

    def deactivate(self) -> None:
        """Serve nothing more, keep the engine: frames waiting or in flight are dropped as
        ``inactive``, and nothing is published once this returns."""
        if not self.scheduler.pause(INACTIVE_DROP):
            self.log(logging.WARNING, "deactivated while an inference was still running; its result is dropped")
        self.state = INACTIVE

    def cleanup(self) -> None:
        """Release the engine and its device memory (a load still running is discarded)."""
        self._release()
        self.state = UNCONFIGURED

    def shutdown(self) -> None:
        """From any state: stop serving and release everything."""
        self._release()
        self.state = FINALIZED

    def error(self) -> None:
        """After a transition raised: release everything and start over unconfigured."""
        self._release()
        self.state = UNCONFIGURED

    def _release(self) -> None:
        self.scheduler.pause(INACTIVE_DROP)
        if not self.reload.release():
            self.log(logging.WARNING, "released the model while an inference was still running")
