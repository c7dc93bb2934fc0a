"""Checkpoint loading for every model, in one place.

Public checkpoints come in several wrappings (plain state dict, ``{'model': ...}``,
``{'state_dict': ...}``, ``{'model_state': ...}``, DataParallel ``module.`` prefixes) and some carry
numpy scalars in their metadata. We unpickle with ``weights_only=True`` and allow only those plain
numpy data types, so a file that would execute code is refused before any of it runs. Loading is
strict: a mismatch raises an error that lists the missing, unexpected and wrongly shaped keys,
unlike the reference repositories' loaders that silently skip keys and leave random weights.
"""

from __future__ import annotations

import os
import pickle
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..text import bounded_repr

#: Wrapper keys under which training scripts store the model weights, tried in order.
STATE_DICT_WRAPPERS = ("state_dict", "model_state", "model")
#: ``meta["format"]`` of checkpoints written by ``seg-perception train``.
CHECKPOINT_FORMAT = "seg_perception.train/1"
#: Checkpoints shipped with the package, selectable by file stem (``weights:=synthetic_street``).
SHIPPED_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


class CheckpointError(ValueError):
    """Base class of every checkpoint problem; the message names the file and the cause."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The weights file does not exist."""


class NotACheckpointFileError(CheckpointError):
    """The weights path exists but is not a regular file (a directory, a device, a pipe...)."""


def weights_path_problem(path: str | os.PathLike[str]) -> str | None:
    """Why an existing ``path`` cannot be a checkpoint file (it is a directory, a device...), or
    None for a regular file or a path that does not exist (the loader says that). ``os.stat``
    never opens the path, so a FIFO or a device cannot block or be read here."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
             (stat.S_ISSOCK, "a socket"))
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"{bounded_repr(os.fspath(path), 300)} is {kind}, not a checkpoint file"


class UnsafeCheckpointError(CheckpointError):
    """The file needs arbitrary code to unpickle: refused before any of it runs."""


class CorruptCheckpointError(CheckpointError):
    """The file is not a readable torch checkpoint (another format, truncated, damaged)."""


class CheckpointMismatchError(CheckpointError):
    """The weights do not fit the architecture (missing, unexpected or wrongly shaped keys)."""

    def __init__(
        self,
        path: str,
        missing: list[str],
        unexpected: list[str],
        wrong_shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        self.missing, self.unexpected, self.wrong_shape = missing, unexpected, wrong_shape
        parts = [f"checkpoint {path!r} does not match the model:"]
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_preview(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
        if wrong_shape:
            shapes = [f"{k} (checkpoint {list(c)} vs model {list(m)})" for k, c, m in wrong_shape]
            parts.append(f"{len(wrong_shape)} wrongly shaped key(s): {_preview(shapes)}")
        super().__init__(" ".join(parts))


class ClassCountMismatchError(CheckpointMismatchError):
    """The checkpoint was trained for a different number of classes than the model has."""

    def __init__(self, path: str, checkpoint_classes: int, model_classes: int, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.checkpoint_classes, self.model_classes = checkpoint_classes, model_classes
        self.args = (
            f"checkpoint {path!r} has {checkpoint_classes} classes but the model was built with "
            f"num_classes={model_classes}; " + self.args[0],
        )


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def _numpy_safe_globals() -> list[Any]:
    """The numpy objects that plain metadata (e.g. ``mean_iu = np.float64(...)``) pickles to."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed: list[Any] = [
        scalar,
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    allowed += [type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "bool")]
    return allowed


def shipped_weights() -> dict[str, Path]:
    """Name -> file of every checkpoint shipped in ``seg_perception/weights``."""
    return {p.stem: p for p in sorted(SHIPPED_WEIGHTS_DIR.glob("*.pt"))}


def resolve_weights(weights: str | os.PathLike[str]) -> str:
    """The file a ``weights`` value means: an existing path wins, else a shipped checkpoint's name.

    Everything that accepts weights (node, engine, eval, bench, train ``--init``) goes through the
    loader below, which calls this, so the names work everywhere.
    """
    path = os.fspath(weights)
    if not path or os.path.exists(path):
        return path
    shipped = shipped_weights().get(path)
    return str(shipped) if shipped is not None else path


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Unpickle a torch checkpoint safely (tensors and plain data only), mapped to the CPU.

    A file that is refused is named and its kind of problem said, but nothing read from it is
    ever echoed: not its first bytes, not the parser's message (pickle's "invalid load key"
    quotes a byte; the weights-only unpickler quotes the class names it found). The messages go
    to logs and ``/diagnostics``, which anyone in the ROS domain can read.
    """
    path = resolve_weights(os.fspath(path))
    problem = weights_path_problem(path)
    if problem:
        raise NotACheckpointFileError(f"weights path {problem}")
    shown = bounded_repr(path, 300)
    if not os.path.isfile(path):
        names = ", ".join(shipped_weights()) or "none"
        raise CheckpointNotFoundError(
            f"weights file {shown} does not exist (and is not a shipped checkpoint name: {names})")
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive; files from torch < 1.6 are a bare pickle (protocol byte).
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        raise CorruptCheckpointError(
            f"{shown} is not a torch checkpoint (neither a zip archive nor a pickle)")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise CorruptCheckpointError(f"{shown} is corrupt (the pickle cannot be read)") from None
        raise UnsafeCheckpointError(
            f"refusing to load {shown}: it contains objects other than tensors and plain data "
            f"(loading it would run pickled code). Re-save only the state_dict."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CorruptCheckpointError(
            f"{shown} is not a readable torch checkpoint (truncated or another format: {type(exc).__name__})"
        ) from None


def extract_state_dict(obj: Any, path: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Unwrap the common containers and strip DataParallel ``module.`` prefixes."""
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((obj[k] for k in STATE_DICT_WRAPPERS if k in obj), None)
        if inner is None:
            raise CheckpointError(
                f"{path!r} holds a dict with keys {_preview(sorted(map(str, obj)))} but no "
                f"state dict (expected tensors or one of {', '.join(STATE_DICT_WRAPPERS)})"
            )
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path!r} holds a {type(obj).__name__}, not a state dict")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_state_dict(obj: Mapping[Any, Any]) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    """Copy ``state`` into ``model``; any missing, unexpected or wrongly shaped key is an error."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        num_classes = getattr(model, "num_classes", None)
        class_dims = {c[0] for _, c, m in wrong if c and m and m[0] == num_classes}
        if num_classes is not None and wrong and len(class_dims) == 1 and not (missing or unexpected):
            raise ClassCountMismatchError(
                path, class_dims.pop(), num_classes,
                missing=missing, unexpected=unexpected, wrong_shape=wrong,
            )
        raise CheckpointMismatchError(path, missing, unexpected, wrong)
    model.load_state_dict(state, strict=True)


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a weights file into ``model`` strictly, converting known public layouts first.

    A model may define ``remap_checkpoint(state) -> state`` to translate the key names of the
    official implementation it follows (e.g. HRNet-OCR's ``model.`` prefix).

    The checkpoint's plain-data ``meta`` (class names, palette and label mapping of a checkpoint
    from ``seg-perception train``) is kept as ``model.checkpoint_meta`` ({} when there is none).
    """
    path = os.fspath(path)
    obj = read_checkpoint(path)
    state = extract_state_dict(obj, path)
    remap = getattr(model, "remap_checkpoint", None)
    if remap is not None:
        state = remap(state)
    load_state_dict_strict(model, state, path)
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    model.checkpoint_meta = dict(meta) if isinstance(meta, Mapping) else {}
    return model


def checkpoint_labels(model: nn.Module) -> tuple[tuple[str, ...], np.ndarray] | None:
    """(class names, Nx3 uint8 palette) recorded in the checkpoint loaded into ``model``, if any."""
    labels = getattr(model, "checkpoint_meta", {}).get("labels")
    if not isinstance(labels, Mapping):
        return None
    names = tuple(str(n) for n in labels.get("class_names", ()))
    palette = np.asarray(labels.get("palette", ()), dtype=np.uint8).reshape(-1, 3)
    if len(names) != getattr(model, "num_classes", len(names)) or len(palette) != len(names):
        return None
    return names, palette
