"""How the ``seg_node`` process reacts to SIGINT/SIGTERM/SIGHUP and how it ends.

Two failure modes shaped this module:

* rclpy's own signal handler shuts the ROS context down the moment a signal arrives, before the
  node has stopped its worker and logged its books, so every log line after that fails with
  "Failed to publish log message to rosout: publisher's context is invalid". Here a signal only
  *requests* a stop; the node stops, logs and is destroyed while the context is still valid, and
  the context is shut down last.
* A signal during a long inference aborted the process (``terminate called without an active
  exception``, exit -6). The worker thread was still inside a torch operator when the interpreter
  finalised; when the operator returned, CPython (< 3.14) ended that thread with
  ``pthread_exit``, whose forced unwinding through torch's C++ frames calls ``std::terminate``.
  So once everything has been stopped and logged, the process ends with :func:`exit_now`
  (``os._exit``) instead of interpreter finalisation: no thread can be unwound, and exit does not
  wait for the ~1 s of garbage collection over torch's objects either.

The phases: while *starting* (imports, model loading, warm-up) a signal raises
:class:`ShutdownRequested` in the main thread, so a model that takes a minute to load does not
delay the exit; while *running* it sets :attr:`ShutdownSignals.requested`, which the spin loop
polls; while *stopping* further signals are counted and ignored (a second Ctrl-C during shutdown
neither raises nor changes the exit status). A long step run from the spin loop (a managed node's
configure, which builds the model) is :meth:`ShutdownSignals.interruptible`: a signal then raises
as during startup, so Ctrl-C does not wait for the model to finish loading. This module imports
nothing heavy, so the console entry point installs the handlers before torch is imported.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

STARTING, RUNNING, STOPPING = "starting", "running", "stopping"
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ShutdownRequested(BaseException):
    """Raised in the main thread by a signal during startup. A BaseException, like
    KeyboardInterrupt, so the ``except Exception`` of error handling never swallows it."""


class ShutdownSignals:
    """SIGINT/SIGTERM/SIGHUP handlers for the node process, and the phase that decides what they do."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.phase = STARTING
        self.received: list[str] = []
        self._previous: dict[int, object] = {}

    def install(self) -> ShutdownSignals:
        """Install the handlers (only possible from the main thread; elsewhere a no-op)."""
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def running(self) -> None:
        """Startup is over: signals now only request a stop. A signal that arrived during the
        last steps of startup is kept in :attr:`requested`."""
        self.phase = RUNNING

    def stopping(self) -> None:
        self.phase = STOPPING

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """While running, make a long step interruptible: inside, a signal raises
        :class:`ShutdownRequested` (in the main thread) as it does during startup."""
        if self.phase != RUNNING:
            yield
            return
        self.phase = STARTING
        try:
            yield
        finally:
            if self.phase == STARTING:  # no signal came: back to polling
                self.phase = RUNNING

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum).name)
        self.requested.set()
        if self.phase == STARTING:
            self.phase = STOPPING  # a second signal while unwinding must not raise again
            raise ShutdownRequested(signal.Signals(signum).name)


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` after flushing Python's and C's output buffers.

    Call only when everything worth doing is done: no atexit handler, no finaliser, no thread
    cleanup runs after this (which is the point, see the module docstring).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more to say
            pass
    try:
        ctypes.CDLL(None).fflush(None)  # rcutils writes the log lines through C stdio
    except (OSError, AttributeError):
        pass
    os._exit(code)

