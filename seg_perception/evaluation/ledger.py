"""What happened to each frame of one camera: the per-frame records, the confusion matrix, and
the images a report shows of them (overlays, prediction PNGs, video).

Offline (:mod:`.drives.task`) and live (:mod:`.live.replay`) runs fill a :class:`Ledger` the same
way, so one camera's result has one shape whichever way its frames were segmented.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..cityscapes import train_ids_to_label_ids
from ..compressed import message_to_rgb
from . import overlays as O
from .bag_io import BagFrame
from .metrics import ConfusionMatrix

#: What happens to a frame: labels came back and were scored (evaluated), came back but the ground
#: truth is unusable (not_evaluated), never came back (dropped), or the image was refused (rejected).
STATUSES = ("evaluated", "not_evaluated", "dropped", "rejected")


@dataclass
class FrameRecord:
    """What happened to one frame of the bag (a row of ``frames.csv``)."""

    index: int
    stamp_ns: int
    #: One of :data:`STATUSES`.
    status: str
    reason: str | None = None
    #: live: header stamp -> labels received; offline: wall time of one engine call.
    latency_ms: float | None = None
    pixel_accuracy: float | None = None
    #: Seconds from the start of the replay when the frame was sent (live) or started (offline).
    sent_s: float | None = None


#: The fields of a record, in ``frames.csv`` column order (after drive and camera).
RECORD_FIELDS = tuple(f.name for f in fields(FrameRecord))


@dataclass(frozen=True)
class Outputs:
    """Images of one camera's frames written into the report folder ``out``."""

    out: Path
    #: Overlay images (input | prediction | ground truth), spread evenly over the drive.
    overlays: int = 4
    #: ``predictions/<index>_pred_labelIds.png`` in Cityscapes label ids, for cityscapesScripts.
    save_predictions: bool = False
    #: ``overlay.mp4`` of every evaluated frame.
    video: bool = False


class Ledger:
    """Collects per-frame outcomes, the confusion matrix and (with :class:`Outputs`) the report's
    images as frames end."""

    def __init__(self, total_frames: int, outputs: Outputs | None = None, rate_hz: float = 17.0) -> None:
        self.records: list[FrameRecord] = []
        self.confusion = ConfusionMatrix()
        self.overlay_files: list[str] = []
        self.outputs = outputs
        count = max(0, min(outputs.overlays if outputs else 0, total_frames))
        targets = np.linspace(0, total_frames - 1, count) if count else []
        self._overlay_targets = sorted({int(round(v)) for v in targets})
        self._video_path = outputs.out / "overlay.mp4" if outputs and outputs.video else None
        self._video: Any = None
        self._rate = rate_hz

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for record in self.records:
            out[record.status] += 1
        return out

    def result(self, frame: BagFrame, labels: np.ndarray, latency_ms: float, sent_s: float) -> FrameRecord:
        """Labels came back for ``frame``: evaluate them if its ground truth is usable."""
        record = FrameRecord(frame.index, frame.stamp_ns, "evaluated", latency_ms=latency_ms, sent_s=sent_s)
        if frame.gt is None:
            record.status, record.reason = "not_evaluated", frame.gt_problem
        elif labels.shape != frame.gt.shape:
            record.status, record.reason = "not_evaluated", "prediction_size_mismatch"
        else:
            matrix = self.confusion.update_label_ids(labels, frame.gt)
            if matrix.sum():
                record.pixel_accuracy = float(np.trace(matrix) / matrix.sum())
                self._write_images(frame, labels)
            else:  # every pixel is an ignored label: nothing was evaluated on this frame
                record.status, record.reason = "not_evaluated", "gt_no_valid_pixel"
        self.records.append(record)
        return record

    def missing(self, frame: BagFrame, status: str, reason: str | None, sent_s: float | None) -> FrameRecord:
        record = FrameRecord(frame.index, frame.stamp_ns, status, reason, sent_s=sent_s)
        self.records.append(record)
        return record

    def rows(self) -> list[tuple]:
        """The records as tuples of :data:`RECORD_FIELDS` (small, picklable: what a worker sends)."""
        return [astuple(r) for r in self.records]

    def _write_images(self, frame: BagFrame, labels: np.ndarray) -> None:
        """Prediction PNG, overlay image and video frame of an evaluated frame, as requested."""
        outputs = self.outputs
        if outputs is None:
            return
        if outputs.save_predictions:
            O.write_png(outputs.out / "predictions" / f"{frame.index:06d}_pred_labelIds.png",
                        train_ids_to_label_ids(labels))
        wants_overlay = bool(self._overlay_targets) and frame.index >= self._overlay_targets[0]
        if not (wants_overlay or self._video_path):
            return
        panel = O.overlay_panel(message_to_rgb(frame.image), labels, frame.gt, frame.index)
        if wants_overlay:
            while self._overlay_targets and self._overlay_targets[0] <= frame.index:
                self._overlay_targets.pop(0)
            path = outputs.out / "overlays" / f"frame_{frame.index:06d}.png"
            O.write_png(path, panel)
            self.overlay_files.append(str(path.relative_to(outputs.out)))
        if self._video_path:
            if self._video is None:
                self._video = O.VideoWriter(self._video_path, self._rate, panel.shape)
            self._video.write(panel)

    def close(self) -> dict[str, Any]:
        """Finish the video; the image files written, relative to the report folder."""
        video = None
        if self._video is not None:
            self._video.close()
            video = self._video_path.name
        return {"overlays": list(self.overlay_files), "video": video,
                "predictions": "predictions" if self.outputs and self.outputs.save_predictions else None}
