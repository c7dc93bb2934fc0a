"""The output of a mining run: a Cityscapes folder, ``mined.csv`` and ``contact_sheet.png``.

Layout of ``DIR`` (train on it with ``seg-perception train --data DIR``; open it in a labelling
tool that reads Cityscapes)::

    leftImg8bit/train/mined/mined_<rank>_<frame>_leftImg8bit.png     the frame, as the model saw it
    gtFine/train/mined/mined_<rank>_<frame>_gtFine_labelIds.png      the model's labels (label ids)
    mined.csv            rank, score, drive, bag, camera, topic, frame_index, stamp_ns, image, pseudo_labels
    contact_sheet.png    every chosen frame with its labels over it, rank and score
    mining.json          settings, every frame accounted for, failed drives with their reasons

Ranks are 1-based and zero-padded, so the files sort in rank order. The pseudo-labels are
Cityscapes *label ids* (``road`` 7, ``car`` 26, ...), what ``*_gtFine_labelIds.png`` holds in the
dataset, so a corrected file is ground truth for ``train`` and ``eval`` as it stands. They are
computed again in this process from the frames read again from the bags (the workers send back
scores and thumbnails, not images), by an engine with the same settings.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..cityscapes import train_ids_to_label_ids
from ..compressed import message_to_rgb
from ..evaluation.bag_io import DriveBag
from ..evaluation.cityscapes_folder import GT_SUFFIX, IMAGE_SUFFIX, gt_path, image_path, write_pair
from ..evaluation.drives.plan import Drive
from ..evaluation.overlays import colorize, write_png
from ..text import bounded
from .select import Candidate

SPLIT = "train"
CITY = "mined"
CSV_NAME = "mined.csv"
SHEET_NAME = "contact_sheet.png"
SUMMARY_NAME = "mining.json"
CSV_COLUMNS = ("rank", "score", "drive", "bag", "camera", "topic", "frame_index", "stamp_ns", "image",
               "pseudo_labels")
#: Contact sheet: tile size (image area, width x height), caption band, columns, background.
TILE = (256, 128)
CAPTION_PX = 30
#: Characters of a caption line that fit a tile.
CAPTION_CHARS = 44
MAX_COLUMNS = 6
BACKGROUND = (24, 24, 24)
OVERLAY_ALPHA = 0.45


class MiningError(ValueError):
    """A mining run that cannot go on (bad settings, an unusable output folder); says why."""


def stem(rank: int, index: int) -> str:
    return f"{CITY}_{rank:06d}_{index:06d}"


def written_files(out: Path) -> list[Path]:
    """The files a mining run writes in ``out`` (to replace a previous run's)."""
    files = [out / CSV_NAME, out / SHEET_NAME, out / SUMMARY_NAME]
    files += sorted((out / "leftImg8bit" / SPLIT / CITY).glob(f"{CITY}_*{IMAGE_SUFFIX}"))
    files += sorted((out / "gtFine" / SPLIT / CITY).glob(f"{CITY}_*{GT_SUFFIX}"))
    return files


def tile(rgb: np.ndarray, train_ids: np.ndarray, caption: tuple[str, str]) -> np.ndarray:
    """One contact-sheet tile: the frame with its labels over it, letterboxed, and two caption
    lines (a line too long keeps its end, where drive and frame names differ)."""
    blend = rgb.astype(np.float32) * (1 - OVERLAY_ALPHA) + colorize(train_ids).astype(np.float32) * OVERLAY_ALPHA
    height, width = rgb.shape[:2]
    scale = min(TILE[0] / width, TILE[1] / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(blend.round().astype(np.uint8), size, interpolation=cv2.INTER_AREA)
    out = np.full((TILE[1] + CAPTION_PX, TILE[0], 3), BACKGROUND, np.uint8)
    y, x = (TILE[1] - size[1]) // 2, (TILE[0] - size[0]) // 2
    out[y:y + size[1], x:x + size[0]] = small
    for row, line in enumerate(caption):
        line = line if len(line) <= CAPTION_CHARS else ".." + line[-(CAPTION_CHARS - 2):]
        cv2.putText(out, line, (3, TILE[1] + 12 + 13 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.37, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def contact_sheet(tiles: Sequence[np.ndarray]) -> np.ndarray:
    """Tiles in rank order, row by row, :data:`MAX_COLUMNS` a row; unused cells are background."""
    columns = max(1, min(MAX_COLUMNS, len(tiles)))
    rows = max(1, math.ceil(len(tiles) / columns))
    th, tw = TILE[1] + CAPTION_PX, TILE[0]
    pad = 4
    sheet = np.full((rows * (th + pad) + pad, columns * (tw + pad) + pad, 3), BACKGROUND, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[pad + r * (th + pad):pad + r * (th + pad) + th, pad + c * (tw + pad):pad + c * (tw + pad) + tw] = t
    return sheet


def export(out: Path, chosen: Sequence[Candidate], drives: Sequence[Drive], engine: Any, max_pixels: int,
           progress: bool = True) -> list[dict[str, Any]]:
    """Write the chosen frames (rank order) and their pseudo-labels, ``mined.csv`` and the contact
    sheet; returns the CSV rows. Each bag with a chosen frame is read once, up to its last one."""
    from tqdm import tqdm

    wanted: dict[tuple[int, str], dict[int, int]] = {}
    for rank, c in enumerate(chosen, start=1):
        wanted.setdefault((c.drive, c.topic), {})[c.index] = rank
    rows: list[dict[str, Any] | None] = [None] * len(chosen)
    tiles: list[np.ndarray | None] = [None] * len(chosen)
    bar = tqdm(total=len(chosen), desc="write mined frames", unit="frame", disable=not progress)
    for (drive, topic), ranks in sorted(wanted.items()):
        remaining = dict(ranks)
        with DriveBag(drives[drive].path, topic, None) as bag:
            for frame in bag.frames():
                rank = remaining.pop(frame.index, None)
                if rank is None:
                    continue
                c = chosen[rank - 1]
                rgb = np.array(message_to_rgb(frame.image, max_pixels))  # a copy: torch wants writable memory
                labels = engine.infer(rgb).labels
                name = stem(rank, c.index)
                write_pair(out, SPLIT, CITY, name, rgb, train_ids_to_label_ids(labels))
                rows[rank - 1] = {
                    "rank": rank, "score": repr(c.score), "drive": drives[drive].name, "bag": drives[drive].path,
                    "camera": c.camera, "topic": topic, "frame_index": c.index, "stamp_ns": c.stamp_ns,
                    "image": str(image_path(out, SPLIT, CITY, name).relative_to(out)),
                    "pseudo_labels": str(gt_path(out, SPLIT, CITY, name).relative_to(out)),
                }
                tiles[rank - 1] = tile(rgb, labels, (f"#{rank}  score {c.score:.4f}",
                                                     f"{drives[drive].name} {c.camera} frame {c.index}"))
                bar.update(1)
                if not remaining:
                    break
        if remaining:
            raise MiningError(f"{len(remaining)} chosen frame(s) of {bounded(drives[drive].path, 200)} on {topic} "
                              f"could not be read again (the bag changed while mining?)")
    bar.close()
    done = [r for r in rows if r is not None]
    with (out / CSV_NAME).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(done)
    write_png(out / SHEET_NAME, contact_sheet([t for t in tiles if t is not None]))
    return done
