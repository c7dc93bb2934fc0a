"""From cameras to drives to the pooled numbers: how the results of any evaluation add up.

Every evaluation (offline or live, one camera or many, one drive or hundreds) produces *camera
results* of one shape (:func:`camera_result`): a 19x19 confusion matrix, one small record per
frame (:mod:`.ledger`), the bag's own counts and the stage timings, never images. Here they are
merged into drives (:func:`merge_drive`, chunks of a drive in any order) and pooled
(:func:`pool`). Pooled, per-camera and per-tag mIoU come from the SUM of confusion matrices, so
they are exactly what one process evaluating every frame would compute, however the work was
split. Frame accounting adds up the same way: every frame of every camera is evaluated,
not_evaluated, dropped or rejected, with a reason.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..stats import percentiles
from ..text import bounded
from .bag_io import CameraTopics, DriveBag, describe_input
from .drives.plan import MAX_TEXT, Drive
from .ledger import STATUSES, Ledger
from .metrics import NUM_CLASSES, summarize

UNTAGGED = "(untagged)"


def camera_result(camera: CameraTopics, bag: DriveBag, ledger: Ledger, first_image: Any, *, last: bool = True,
                  stage_samples: dict[str, Any] | None = None, stages_ms: dict[str, Any] | None = None,
                  live: dict[str, Any] | None = None) -> dict[str, Any]:
    """One camera's part of a drive, small enough to send from a worker (no pixels).

    ``last``: the part reads the bag to its end, so it holds the bag's tail counts (frames in the
    metadata that could not be read, ground truth without an image). Offline parts carry raw
    ``stage_samples`` (pooled exactly later); a live part the node's ``stages_ms`` and its
    ``live`` figures (published, the node's books, what came back).
    """
    rate = (bag.info.image_count - 1) / bag.info.duration_s if bag.info.duration_s > 0 else None
    return {
        "camera": camera.name, "image_topic": bag.info.image_topic, "gt_topic": camera.gt_topic,
        "in_bag": bag.info.image_count, "storage": bag.info.storage, "duration_s": bag.info.duration_s,
        "rate_hz": rate, "input": describe_input(first_image) if first_image is not None else None,
        "matrix": ledger.confusion.matrix, "records": ledger.rows(),
        "unreadable": bag.pairing.unreadable_images if last else 0,
        "gt_without_image": bag.pairing.gt_without_image if last else 0,
        "notes": list(bag.pairing.notes) if last else [],
        "stage_samples": stage_samples, "stages_ms": stages_ms, "live": live,
        "files": ledger.close(),
    }


def accounting(records: Sequence[tuple], in_bag: int, unreadable: int, gt_without_image: int) -> dict[str, Any]:
    """Frame accounting of one camera from its records (status at position 2, reason at 3)."""
    groups: dict[str, Counter] = {s: Counter() for s in STATUSES}
    for record in records:
        groups[record[2]][record[3] or "unattributed"] += 1
    out: dict[str, Any] = {"in_bag": in_bag, "read": len(records), "evaluated": sum(groups["evaluated"].values())}
    for status in STATUSES[1:]:
        out[status] = {"total": sum(groups[status].values()), "by_reason": dict(groups[status])}
    out["unreadable"] = unreadable
    out["gt_without_image"] = gt_without_image
    return _totals(out)


def _totals(frames: dict[str, Any], reconciled: bool = True) -> dict[str, Any]:
    """Add the drop rate and whether every frame is accounted for."""
    counted = frames["evaluated"] + sum(frames[s]["total"] for s in STATUSES[1:])
    lost = frames["dropped"]["total"] + frames["rejected"]["total"]
    frames["drop_rate"] = lost / frames["read"] if frames["read"] else None
    frames["all_accounted"] = (reconciled and counted == frames["read"]
                               and frames["in_bag"] == frames["read"] + frames["unreadable"])
    return frames


def live_accounting(frames: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """A live camera's accounting with the node's reasons: a frame that did not come back is only
    seen as absent by the evaluator; the node's books (and the transport counts) say why. The
    totals are the node's, so the accounting adds up exactly when its books reconcile."""
    books = live["node_accounting"]
    dropped = Counter(books["dropped"])
    for lost in ("transport_lost", "output_lost"):
        if live[lost]:
            dropped[lost] = live[lost]
    out = dict(frames)
    out["dropped"] = {"total": sum(dropped.values()), "by_reason": dict(dropped)}
    out["rejected"] = {"total": sum(books["rejected"].values()), "by_reason": dict(books["rejected"])}
    return _totals(out, live["reconciliation"]["all_accounted"])


def add_accounting(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Frame accounting of several cameras or drives added up."""
    out: dict[str, Any] = {"in_bag": 0, "read": 0, "evaluated": 0, "unreadable": 0, "gt_without_image": 0}
    for status in STATUSES[1:]:
        out[status] = {"total": 0, "by_reason": Counter()}
    for part in parts:
        for key in ("in_bag", "read", "evaluated", "unreadable", "gt_without_image"):
            out[key] += part[key]
        for status in STATUSES[1:]:
            out[status]["total"] += part[status]["total"]
            out[status]["by_reason"].update(part[status]["by_reason"])
    for status in STATUSES[1:]:
        out[status]["by_reason"] = dict(out[status]["by_reason"])
    return _totals(out, all(p["all_accounted"] for p in parts))


def headline(matrix: np.ndarray) -> dict[str, Any]:
    full = summarize(matrix)
    return {k: full[k] for k in ("miou", "category_miou", "pixel_accuracy", "evaluated_pixels")}


def _zero() -> np.ndarray:
    return np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)


def join_samples(parts: Iterable[dict[str, Any] | None]) -> dict[str, np.ndarray]:
    """Stage samples (stage -> milliseconds) of several parts, joined per stage."""
    samples: dict[str, list[np.ndarray]] = {}
    for part in parts:
        for stage, values in (part or {}).items():
            samples.setdefault(stage, []).append(np.asarray(values, np.float64))
    return {stage: np.concatenate(values) for stage, values in samples.items()}


def _stage_samples(parts: list[dict[str, Any]]) -> dict[str, np.ndarray] | None:
    """Every offline part's stage samples, joined (None for a live camera: the node times them)."""
    if all(part["stage_samples"] is None for part in parts):
        return None
    return join_samples(part["stage_samples"] for part in parts)


def merge_drive(drive: Drive, results: list[dict[str, Any]]) -> dict[str, Any]:
    """One drive's task results (chunks, any order) -> its per-camera and whole-drive numbers."""
    by_camera: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        for cam in result["cameras"]:
            by_camera.setdefault(cam["camera"], []).append(cam)
    cameras: dict[str, Any] = {}
    for name in sorted(by_camera):
        parts = by_camera[name]
        records = sorted((r for p in parts for r in p["records"]), key=lambda r: r[0])
        frames = accounting(records, parts[0]["in_bag"], sum(p["unreadable"] for p in parts),
                            sum(p["gt_without_image"] for p in parts))
        live = parts[0]["live"] if len(parts) == 1 else None
        samples = _stage_samples(parts)
        stages = ({stage: percentiles(v) for stage, v in samples.items()} if samples is not None
                  else parts[0]["stages_ms"])
        cameras[name] = {
            **{k: parts[0][k] for k in ("image_topic", "gt_topic", "storage", "duration_s", "rate_hz")},
            "input": next((p["input"] for p in parts if p["input"]), None),
            "matrix": sum((np.asarray(p["matrix"], dtype=np.int64) for p in parts), _zero()),
            "records": records,
            "frames": live_accounting(frames, live) if live else frames,
            "latency_ms": percentiles([r[4] for r in records if r[4] is not None]),
            "stages_ms": stages,
            "stage_samples": samples,
            "live": live,
            "notes": [n for p in parts for n in p["notes"]],
            "files": parts[0]["files"] if len(parts) == 1 else None,
        }
    matrix = sum((c["matrix"] for c in cameras.values()), _zero())
    return {"name": drive.name, "path": drive.path, "tags": drive.tags, "status": "ok", "matrix": matrix,
            "cameras": cameras, "frames": add_accounting([c["frames"] for c in cameras.values()]),
            "attempts": 1, "retries": []}


def failed_drive(drive: Drive, reason: str, attempts: int, retries: Sequence[str] = ()) -> dict[str, Any]:
    """A drive left out of the pooled numbers: the final reason and every earlier attempt's."""
    return {"name": drive.name, "path": drive.path, "tags": drive.tags, "status": "failed",
            "reason": bounded(reason, MAX_TEXT), "attempts": attempts,
            "retries": [bounded(r, MAX_TEXT) for r in retries]}


def pool(drives: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled, per-camera and per-tag numbers, all from SUMS of confusion matrices."""
    ok = [d for d in drives if d["status"] == "ok"]
    cameras: dict[str, Any] = {}
    for name in sorted({c for d in ok for c in d["cameras"]}):
        parts = [d["cameras"][name] for d in ok if name in d["cameras"]]
        cameras[name] = {
            "drives": len(parts), "metrics": summarize(sum((p["matrix"] for p in parts), _zero())),
            "frames": add_accounting([p["frames"] for p in parts]),
            "latency_ms": percentiles([r[4] for p in parts for r in p["records"] if r[4] is not None]),
        }
        if len(parts) == 1 and parts[0]["live"]:
            cameras[name]["live"] = parts[0]["live"]
    tags: dict[str, dict[str, Any]] = {}
    for key in sorted({k for d in drives for k in d["tags"]}):
        values: dict[str, dict[str, Any]] = {}
        for value in sorted({d["tags"].get(key, UNTAGGED) for d in drives}):
            members = [d for d in drives if d["tags"].get(key, UNTAGGED) == value]
            members_ok = [d for d in members if d["status"] == "ok"]
            values[value] = {"drives": len(members), "failed_drives": len(members) - len(members_ok),
                             "frames": sum(d["frames"]["evaluated"] for d in members_ok),
                             **headline(sum((d["matrix"] for d in members_ok), _zero()))}
        tags[key] = values
    return {
        "metrics": summarize(sum((d["matrix"] for d in ok), _zero())),
        "frames": add_accounting([d["frames"] for d in ok]),
        "cameras": cameras,
        "tags": tags,
        "drives_ok": len(ok),
        "drives_failed": len(drives) - len(ok),
    }


def drive_rows(drives: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-drive table of report.json (numbers only, no per-frame records)."""
    rows = []
    for d in drives:
        if d["status"] != "ok":
            rows.append({k: d[k] for k in ("name", "path", "tags", "status", "reason", "attempts", "retries")})
            continue
        rows.append({
            "name": d["name"], "path": d["path"], "tags": d["tags"], "status": "ok",
            "attempts": d["attempts"], "retries": d["retries"],
            **headline(d["matrix"]), "confusion_matrix": d["matrix"].tolist(), "frames": d["frames"],
            "cameras": {name: {**{k: c[k] for k in ("image_topic", "gt_topic", "storage", "duration_s", "input")},
                               **headline(c["matrix"]), "confusion_matrix": c["matrix"].tolist(),
                               "frames": c["frames"], "latency_ms": c["latency_ms"], "stages_ms": c["stages_ms"],
                               **({"live": c["live"]} if c["live"] else {})}
                        for name, c in d["cameras"].items()},
        })
    return rows


def frame_rows(drives: list[dict[str, Any]]) -> Iterator[list[Any]]:
    """Per-frame CSV rows: drive, camera, and the record fields."""
    for d in drives:
        if d["status"] != "ok":
            continue
        for name, cam in d["cameras"].items():
            for record in cam["records"]:
                yield [d["name"], name, *("" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                                          for v in record)]
