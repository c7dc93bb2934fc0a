"""On-disk cache of exported networks and TensorRT engines, trusted only on proof.

An artifact is keyed by everything that changes its bytes: model, variant, classes, builder
options, a digest of the weights (the checkpoint file's SHA-256), the input size (or ``dynamic``)
and the versions of the exporter and runtime. A changed weights file is therefore a miss, and so
is an upgraded ONNX Runtime or TensorRT. Random (file-less) weights are never written here: their
export lives in memory only (:func:`seg_perception.backends.export.onnx_artifact`).

Trust: a file under the right name proves nothing (anyone who can write the folder can plant
one). :meth:`ArtifactCache.lookup` serves an entry only when its ``.json`` sidecar records exactly
the requested key and, for a file, the SHA-256 recorded when it was stored matches the file now;
the ONNX backend then checks the file's own metadata and runs a parity probe against PyTorch
(:mod:`seg_perception.backends.parity`). An entry that fails any check is evicted with the reason
(logged, and kept in :attr:`ArtifactCache.evictions` for the engine's description on
``/diagnostics``) and rebuilt.

Writes are atomic: an artifact is built under a temporary name in the same folder and renamed
into place, so a crash or a second process never leaves a half-written file under a real name.

Size: the folder is kept under ``cache_max_mb`` by evicting the least recently used entries
after each store (a hit marks its entry used); temporary files of crashed builds older than a day
go too. ``cache_max_mb: 0`` writes nothing.

Location: ``cache_dir`` from the configuration (set by the operator at start-up, never at run
time), else ``$SEG_PERCEPTION_CACHE_DIR``, else ``$XDG_CACHE_HOME/seg_perception``, else
``~/.cache/seg_perception``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..choices import DEFAULT_CACHE_MAX_MB

LOG = logging.getLogger(__name__)

#: The artifact kinds (sub-folders) this cache manages; nothing else in the folder is touched.
#: ``onnx_int8``: quantized networks (:mod:`.quantize`), keyed also by their calibration.
KINDS = ("onnx", "onnx_int8", "tensorrt")
#: A sidecar larger than this is not ours (it records a key and a digest: under 2 KB).
MAX_SIDECAR_BYTES = 64 * 1024
#: Temporary files of builds that crashed are removed once older than this.
STALE_TMP_S = 24 * 3600.0

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
    """SHA-256 of a file, read in chunks (checkpoints are hundreds of MB); memoised per process
    by (path, size, mtime) for weights files read at every start."""
    stat = os.stat(path)
    memo = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        _FILE_DIGESTS[memo] = content_sha256(path)
    return _FILE_DIGESTS[memo]


def content_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes as they are now (no memo: what a cache check must read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


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

    kind: str  # one of KINDS
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
    """One folder of artifacts, each with a ``.json`` sidecar recording its key and digest."""

    def __init__(self, root: str | os.PathLike[str] | None = None, max_mb: int = DEFAULT_CACHE_MAX_MB) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.max_bytes = max(0, int(max_mb)) << 20
        #: Why entries were evicted as untrustworthy during this object's life, newest last.
        self.evictions: list[str] = []

    @property
    def enabled(self) -> bool:
        """False with ``cache_max_mb: 0``: nothing is looked up or written."""
        return self.max_bytes > 0

    def path(self, key: CacheKey, suffix: str) -> Path:
        return self.root / key.kind / key.filename(suffix)

    @staticmethod
    def sidecar(path: Path) -> Path:
        return path.with_name(path.name + ".json")

    def lookup(self, key: CacheKey, suffix: str) -> Path | None:
        """The cached artifact, or None on a miss. An entry whose sidecar does not record exactly
        ``key``, or whose content no longer has the digest recorded when it was stored, is
        evicted (reason logged and kept in :attr:`evictions`) and is a miss. A hit is marked as
        used now, for the least-recently-used eviction."""
        if not self.enabled:
            return None
        path = self.path(key, suffix)
        if not path.exists():
            return None
        problem = self.entry_problem(path, key)
        if problem is not None:
            self.evict(path, problem)
            return None
        self._mark_used(path)
        return path

    def entry_problem(self, path: Path, key: CacheKey) -> str | None:
        """Why the entry at ``path`` cannot be trusted to hold ``key``; None when it can."""
        sidecar = self.sidecar(path)
        try:
            if sidecar.stat().st_size > MAX_SIDECAR_BYTES:
                return "its sidecar is not a cache record (too large)"
            record: Any = json.loads(sidecar.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return "no sidecar records what it holds"
        except (OSError, ValueError) as exc:
            return f"its sidecar is unreadable ({type(exc).__name__})"
        if not isinstance(record, dict) or record.get("key") != asdict(key):
            return "its sidecar records another key (a different network, size or version)"
        if path.is_file():
            recorded = record.get("sha256")
            if not isinstance(recorded, str):
                return "no content digest was recorded for it"
            if content_sha256(path) != recorded:
                return "its content digest differs from the one recorded when it was exported (file changed)"
        return None

    def store(self, key: CacheKey, suffix: str, build: Callable[[Path], None]) -> Path:
        """Run ``build(tmp_path)``, atomically rename the result (file or folder) into place,
        record its key and digest, then keep the folder under the size cap."""
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
        record: dict[str, Any] = {"key": asdict(key), "bytes": _size(path)}
        if path.is_file():
            record["sha256"] = content_sha256(path)
        sidecar = self.sidecar(path)
        tmp_sidecar = sidecar.with_name(f".{sidecar.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp_sidecar.write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp_sidecar, sidecar)
        self.enforce_limit(keep=path)
        return path

    def evict(self, path: Path, reason: str) -> None:
        """Delete an artifact that cannot be used or trusted, so the caller rebuilds it."""
        LOG.warning("cached artifact %s is unusable (%s); rebuilding it", path, reason[:300])
        self.evictions.append(f"{path.name}: {reason[:300]}")
        _remove(path)
        self.sidecar(path).unlink(missing_ok=True)

    def entries(self) -> list[tuple[Path, int, float]]:
        """Every stored entry as (artifact, bytes with its sidecar, last used), oldest first;
        removes temporary files of crashed builds on the way."""
        found = []  # entries vanish while we look (another process evicting): skipped
        now = time.time()
        for kind in KINDS:
            folder = self.root / kind
            if not folder.is_dir():
                continue
            for item in folder.iterdir():
                name = item.name
                if name.startswith(".") and name.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        if now - item.stat().st_mtime > STALE_TMP_S:
                            _remove(item)
                    continue
                sidecar = self.sidecar(item)
                if name.endswith(".json") or not sidecar.exists():
                    continue
                with contextlib.suppress(FileNotFoundError):
                    found.append((item, _size(item) + sidecar.stat().st_size, sidecar.stat().st_mtime))
        return sorted(found, key=lambda entry: entry[2])

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def enforce_limit(self, keep: Path | None = None) -> None:
        """Evict the least recently used entries until the folder holds at most ``max_bytes``
        (``keep``, the entry just stored or loaded, stays even when it alone is larger)."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for path, size, _ in entries:
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            LOG.info("export cache over %d MB: evicting the least recently used %s", self.max_bytes >> 20, path.name)
            _remove(path)
            self.sidecar(path).unlink(missing_ok=True)
            total -= size

    def _mark_used(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.sidecar(path))


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
