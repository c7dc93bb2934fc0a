"""On-disk cache of exported networks and TensorRT engines.

An artifact is keyed by everything that changes its bytes: model, variant, classes, builder
options, a digest of the weights (the checkpoint file's SHA-256, or the in-memory parameters for
random weights), the input size (or ``dynamic``) and the versions of the exporter and runtime.
A changed weights file is therefore a miss, and so is an upgraded ONNX Runtime or TensorRT.

Writes are atomic: an artifact is built under a temporary name in the same folder and renamed
into place, so a crash or a second process never leaves a half-written file under a real name.
A cached artifact that does not load is deleted and rebuilt by the caller
(:meth:`ArtifactCache.evict`), never fatal.

Location: ``cache_dir`` from the configuration, else ``$SEG_PERCEPTION_CACHE_DIR``, else
``$XDG_CACHE_HOME/seg_perception``, else ``~/.cache/seg_perception``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

LOG = logging.getLogger(__name__)

#: In-process memo of file digests: (path, size, mtime_ns) -> sha256; a rewritten file misses.
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def default_cache_dir() -> Path:
    """``$SEG_PERCEPTION_CACHE_DIR``, else the user's cache directory + ``seg_perception``."""
    explicit = os.environ.get("SEG_PERCEPTION_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "seg_perception"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, read in chunks (checkpoints are hundreds of MB)."""
    stat = os.stat(path)
    memo = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _FILE_DIGESTS[memo] = digest.hexdigest()
    return _FILE_DIGESTS[memo]


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers: the key of random (file-less) weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """Identity of one artifact; :meth:`digest` names it on disk."""

    kind: str  # "onnx" or "tensorrt"
    model: str
    variant: str
    num_classes: int
    options: str  # builder options as sorted JSON
    weights: str  # "file:<sha256>" or "state:<sha256>"
    input_size: str  # "dynamic" or "HxW"
    versions: str  # exporter/runtime versions that shape the bytes
    extra: str = ""  # e.g. TensorRT precision

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]

    def filename(self, suffix: str) -> str:
        return f"{self.model}-{self.variant}-{self.input_size}-{self.digest()}{suffix}"


class ArtifactCache:
    """One folder of artifacts, each with a ``.json`` sidecar that records its key."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir()

    def path(self, key: CacheKey, suffix: str) -> Path:
        return self.root / key.kind / key.filename(suffix)

    def lookup(self, key: CacheKey, suffix: str) -> Path | None:
        """The cached artifact, or None on a miss."""
        path = self.path(key, suffix)
        return path if path.exists() else None

    def store(self, key: CacheKey, suffix: str, build: Callable[[Path], None]) -> Path:
        """Run ``build(tmp_path)`` and atomically rename the result (file or folder) into place."""
        path = self.path(key, suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            build(tmp)
            if path.is_dir():  # a concurrent builder won; keep theirs, drop ours
                _remove(tmp)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                _remove(tmp)
        sidecar = path.with_name(path.name + ".json")
        tmp_sidecar = sidecar.with_name(f".{sidecar.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp_sidecar.write_text(json.dumps(asdict(key), indent=2, sort_keys=True))
        os.replace(tmp_sidecar, sidecar)
        return path

    def evict(self, path: Path, reason: str) -> None:
        """Delete an artifact that failed to load, so the caller rebuilds it."""
        LOG.warning("cached artifact %s is unusable (%s); rebuilding it", path, reason[:300])
        _remove(path)
        path.with_name(path.name + ".json").unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
