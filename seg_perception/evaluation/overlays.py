"""The report's images of single frames: PNG files, overlay panels (input | prediction | ground
truth) and the overlay video."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..cityscapes import IGNORE_INDEX, PALETTE, label_ids_to_train_ids


def write_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 HxW or RGB HxWx3 array as PNG (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    if not cv2.imwrite(str(path), data):
        raise OSError(f"cannot write {path}")


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """Palette colours of train ids; ignored pixels black."""
    color = PALETTE[np.minimum(train_ids, len(PALETTE) - 1)]
    color[train_ids == IGNORE_INDEX] = 0
    return color


def overlay_panel(rgb: np.ndarray, prediction: np.ndarray, gt_label_ids: np.ndarray | None, index: int,
                  alpha: float = 0.5) -> np.ndarray:
    """Input | prediction over input | ground truth, side by side with captions."""
    blend = (rgb.astype(np.float32) * (1 - alpha) + colorize(prediction).astype(np.float32) * alpha)
    panels = [rgb.copy(), blend.round().astype(np.uint8)]
    captions = [f"frame {index}", "prediction"]
    if gt_label_ids is not None:
        panels.append(colorize(label_ids_to_train_ids(gt_label_ids)))
        captions.append("ground truth")
    scale = max(rgb.shape[1] / 1000.0, 0.3)
    thickness = max(1, int(round(scale * 2)))
    for panel, caption in zip(panels, captions, strict=True):
        (w, h), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        cv2.rectangle(panel, (0, 0), (w + 6, h + base + 6), (0, 0, 0), -1)
        cv2.putText(panel, caption, (3, h + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)
    return np.concatenate(panels, axis=1)


class VideoWriter:
    """MP4 of overlay panels (OpenCV's mp4v codec, which every OpenCV build can write)."""

    def __init__(self, path: Path, fps: float, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (shape[1], shape[0]))
        if not self._writer.isOpened():
            raise OSError(f"OpenCV cannot write video {path}")

    def write(self, panel: np.ndarray) -> None:
        if panel.shape == self.shape:
            self._writer.write(cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self._writer.release()
