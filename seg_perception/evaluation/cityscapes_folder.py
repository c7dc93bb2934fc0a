"""The Cityscapes folder layout, and its conversion to a drive bag (``cityscapes-to-bag``).

Layout (as distributed)::

    ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png   (RGB)
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png     (uint8 label ids)

Frames are taken city by city in file-name order and stamped at a fixed rate, because Cityscapes
files carry no timestamps (17 Hz is the rate of the Cityscapes camera).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .bag_io import DEFAULT_JPEG_QUALITY, GT_TOPIC, IMAGE_TOPIC, DriveBagWriter

IMAGE_SUFFIX = "_leftImg8bit.png"
GT_SUFFIX = "_gtFine_labelIds.png"
#: Stamp of the first frame: fixed, so converting the same folder twice gives the same bag.
DEFAULT_START_NS = 1_700_000_000 * 1_000_000_000
DEFAULT_RATE_HZ = 17.0


@dataclass(frozen=True)
class CityscapesPair:
    stem: str
    image: Path
    gt: Path


def image_path(root: Path, split: str, city: str, stem: str) -> Path:
    return root / "leftImg8bit" / split / city / f"{stem}{IMAGE_SUFFIX}"


def gt_path(root: Path, split: str, city: str, stem: str) -> Path:
    return root / "gtFine" / split / city / f"{stem}{GT_SUFFIX}"


def find_pairs(root: str | Path, split: str, cities: Sequence[str] | None = None) -> list[CityscapesPair]:
    """Every image of the split (or of the given cities) with its ground truth, in order."""
    root = Path(root)
    split_dir = root / "leftImg8bit" / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"no Cityscapes images at {split_dir} (expected ROOT/leftImg8bit/{split}/<city>/)")
    available = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    chosen = list(cities) if cities else available
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise FileNotFoundError(f"cities not in {split_dir}: {', '.join(unknown)}; available: {', '.join(available)}")
    pairs = []
    for city in chosen:
        for image in sorted((split_dir / city).glob(f"*{IMAGE_SUFFIX}")):
            stem = image.name[: -len(IMAGE_SUFFIX)]
            gt = gt_path(root, split, city, stem)
            if not gt.is_file():
                raise FileNotFoundError(f"ground truth missing for {image}: expected {gt}")
            pairs.append(CityscapesPair(stem, image, gt))
    if not pairs:
        raise FileNotFoundError(f"no *{IMAGE_SUFFIX} files under {split_dir} for cities {', '.join(chosen)}")
    return pairs


def read_pair(pair: CityscapesPair) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 HxWx3, label ids uint8 HxW); sizes are checked to agree."""
    bgr = cv2.imread(str(pair.image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {pair.image}")
    gt = cv2.imread(str(pair.gt), cv2.IMREAD_UNCHANGED)
    if gt is None:
        raise ValueError(f"cannot read ground truth {pair.gt}")
    if gt.ndim != 2 or gt.dtype != np.uint8:
        raise ValueError(f"ground truth {pair.gt} must be a single-channel 8-bit label-id image, "
                         f"got shape {gt.shape} dtype {gt.dtype}")
    if gt.shape != bgr.shape[:2]:
        raise ValueError(f"ground truth {pair.gt} is {gt.shape[1]}x{gt.shape[0]} but its image is "
                         f"{bgr.shape[1]}x{bgr.shape[0]}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), gt


def write_pair(root: Path, split: str, city: str, stem: str, rgb: np.ndarray, label_ids: np.ndarray) -> None:
    """Write one frame in the Cityscapes layout (fast PNG compression)."""
    for path, array in ((image_path(root, split, city, stem), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)),
                        (gt_path(root, split, city, stem), label_ids)):
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), array, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise OSError(f"cannot write {path}")


def stamp_ns(index: int, rate_hz: float, start_ns: int = DEFAULT_START_NS) -> int:
    return start_ns + round(index * 1e9 / rate_hz)


def cityscapes_to_bag(
    root: str | Path, split: str, out: str | Path, cities: Sequence[str] | None = None,
    storage: str = "sqlite3", rate_hz: float = DEFAULT_RATE_HZ, frame_id: str = "camera",
    image_topic: str = IMAGE_TOPIC, gt_topic: str = GT_TOPIC, progress: bool = True,
    compressed: str | None = None, jpeg_quality: int = DEFAULT_JPEG_QUALITY,
) -> int:
    """Write the split's frames to a drive bag at ``out``; returns the number of frames.

    ``compressed`` (``jpeg``/``png``) stores the images on ``<image_topic>/compressed`` as
    CompressedImage, as recorded drives usually do; the ground truth stays lossless mono8.
    """
    if rate_hz <= 0:
        raise ValueError(f"rate must be > 0 Hz, got {rate_hz}")
    pairs = find_pairs(root, split, cities)
    loop = pairs
    if progress:
        from tqdm import tqdm

        loop = tqdm(pairs, desc=f"cityscapes-to-bag {split}", unit="frame")
    with DriveBagWriter(out, storage, image_topic, gt_topic, compressed=compressed,
                        jpeg_quality=jpeg_quality) as writer:
        for index, pair in enumerate(loop):
            rgb, gt = read_pair(pair)
            writer.write(stamp_ns(index, rate_hz), frame_id, rgb, gt)
    return len(pairs)
