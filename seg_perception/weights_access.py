"""Which checkpoint files a runtime ``weights`` change may load (the ``weights_dirs`` parameter).

Any participant in the node's ROS domain can set parameters. Without a limit, setting ``weights``
to any path makes the node open that file, and the answer (refused, "does not exist", "is a
directory", a load error) tells the caller about files it has no other access to. So a runtime
change may only name a file inside the allowed folders: ``weights_dirs`` when the operator sets it
(at launch; it cannot change at runtime), else the folder of the weights the node was started
with and the package's shipped checkpoints. The check runs before the path is looked at, and
its refusal is the same whether the path exists or not, is a file or a folder: it reveals nothing
about anything outside the allowed folders.

Paths are compared after resolving ``..`` and symbolic links, so neither leads out of a folder.
The weights given at startup are the operator's and are not checked.

``calibration`` (int8 calibration data, a folder the node reads) is restricted the same way by
``calibration_dirs``: at runtime only data inside those folders, else inside the folder holding the
startup calibration data; with neither, no runtime change may name calibration data at all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .models.checkpoint import SHIPPED_WEIGHTS_DIR, resolve_weights
from .text import bounded_repr

#: Longest path looked at (Linux's PATH_MAX).
MAX_PATH_CHARS = 4096


def allowed_weights_dirs(configured_weights: str, weights_dirs: Sequence[str]) -> tuple[str, ...]:
    """The folders a runtime ``weights`` change may load from, resolved: ``weights_dirs`` (``~``
    expanded) when given, else the folder of ``configured_weights`` (the startup value, a path or
    a shipped name) and the shipped checkpoints' folder."""
    if weights_dirs:
        dirs = [os.path.expanduser(d) for d in weights_dirs]
    else:
        dirs = [str(SHIPPED_WEIGHTS_DIR)]
        if configured_weights:
            dirs.append(os.path.dirname(os.path.abspath(resolve_weights(configured_weights))))
    return tuple(dict.fromkeys(os.path.realpath(d) for d in dirs))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def runtime_weights_problem(value: str, allowed_dirs: Sequence[str]) -> str | None:
    """Why a runtime ``weights`` change to ``value`` is refused (None when it may load; empty
    ``value`` means random weights and reads no file). The reason depends only on ``value`` and
    the allowed folders, never on what exists outside them."""
    if not value:
        return None
    path = ""
    if len(value) <= MAX_PATH_CHARS:  # longer is no path; refused without looking
        try:
            path = os.path.realpath(resolve_weights(value))  # the file the loader would open
        except (OSError, ValueError):  # e.g. a NUL byte: not a path
            path = ""
    if path and any(_inside(path, folder) for folder in allowed_dirs):
        return None
    return (f"weights {bounded_repr(value, 200)} is outside weights_dirs: at runtime only checkpoints in "
            f"{', '.join(allowed_dirs)} can be loaded; the operator sets weights_dirs at launch")


def allowed_calibration_dirs(configured: str, calibration_dirs: Sequence[str]) -> tuple[str, ...]:
    """The folders a runtime ``calibration`` change may read from, resolved: ``calibration_dirs``
    (``~`` expanded) when given, else the folder holding the startup ``configured`` data (none
    when the node started without calibration data)."""
    if calibration_dirs:
        dirs = [os.path.expanduser(d) for d in calibration_dirs]
    else:
        dirs = [os.path.dirname(os.path.abspath(os.path.expanduser(configured)))] if configured else []
    return tuple(dict.fromkeys(os.path.realpath(d) for d in dirs))


def runtime_calibration_problem(value: str, allowed_dirs: Sequence[str]) -> str | None:
    """Why a runtime ``calibration`` change to ``value`` is refused (None when it may be read;
    empty means none). Like :func:`runtime_weights_problem`, the reason depends only on ``value``
    and the allowed folders, never on what exists outside them."""
    if not value:
        return None
    path = ""
    if len(value) <= MAX_PATH_CHARS and "\x00" not in value:
        path = os.path.realpath(os.path.expanduser(value))
    if path and any(_inside(path, folder) for folder in allowed_dirs):
        return None
    where = ", ".join(allowed_dirs) if allowed_dirs else "no folder (calibration_dirs is empty and the node started " \
                                                         "without calibration data)"
    return (f"calibration {bounded_repr(value, 200)} is outside calibration_dirs: at runtime only calibration data "
            f"in {where} can be read; the operator sets calibration_dirs at launch")
