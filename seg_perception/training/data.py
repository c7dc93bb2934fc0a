"""Training data: Cityscapes folders and drive bags -> checked (image, ground truth) files ->
deterministic augmented crops.

Both inputs end as Cityscapes pairs on disk: a Cityscapes folder is read in place (with the
evaluation package's reader), a drive bag is unpacked once into ``OUT/data_cache`` with the
evaluation package's bag reader, its images raw or compressed, converted or decoded by the node's
own :func:`~seg_perception.compressed.message_to_rgb`. Worker processes then only open small PNG files, and every input
is checked once before training starts (ground truth present, same size as its image, every id in
the label mapping), so bad data is an error naming the file, not a crash an hour in.

Augmentation follows the RegSeg recipe: random scale 0.5-2.0, pad (ignored label) and random
crop, horizontal flip. The randomness of sample ``k`` comes from ``(seed, k)`` alone, so a run is
the same with any number of workers and a resumed run sees exactly the samples it would have seen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..cityscapes import IGNORE_INDEX
from ..evaluation.cityscapes_folder import CityscapesPair, find_pairs, read_pair, write_pair
from ..image_conversion import ImageRejected
from ..normalization import IMAGENET, Normalization
from .labels import LabelMapping

SCALE_RANGE = (0.5, 2.0)


class TrainingDataError(ValueError):
    """Training input that cannot be used: the message names the file and what is wrong."""


@dataclass(frozen=True)
class Sample:
    """One training frame: image file, ground-truth file."""

    image: Path
    gt: Path


def _is_cityscapes(path: Path) -> bool:
    return (path / "leftImg8bit").is_dir()


def collect_samples(sources: Sequence[str | Path], split: str, cache: Path, image_topic: str,
                    gt_topic: str, progress: bool = True) -> list[Sample]:
    """Every frame of the given Cityscapes folders (``split``) and drive bags, in order."""
    samples: list[Sample] = []
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise TrainingDataError(f"training data {path} does not exist")
        if _is_cityscapes(path):
            try:
                pairs = find_pairs(path, split)
            except FileNotFoundError as exc:
                raise TrainingDataError(str(exc)) from exc
        else:
            pairs = _unpack_bag(path, cache, image_topic, gt_topic, progress)
        samples += [Sample(p.image, p.gt) for p in pairs]
    if not samples:
        raise TrainingDataError("no training frames found")
    return samples


def _unpack_bag(bag_path: Path, cache: Path, image_topic: str, gt_topic: str,
                progress: bool) -> list[CityscapesPair]:
    """Write a drive bag's frames as Cityscapes pairs under ``cache`` (reused when complete)."""
    from ..compressed import message_to_rgb
    from ..evaluation.bag_io import DriveBag

    key = hashlib.sha1(f"{bag_path.resolve()}|{image_topic}|{gt_topic}".encode()).hexdigest()[:12]
    root = cache / f"{bag_path.name}_{key}"
    done = root / ".complete"
    if done.exists():
        return find_pairs(root, "train")
    with DriveBag(bag_path, image_topic, gt_topic) as bag:
        frames = bag.frames()
        if progress:
            from tqdm import tqdm

            frames = tqdm(frames, total=bag.info.image_count, desc=f"unpack {bag_path.name}", unit="frame")
        for frame in frames:
            if frame.gt is None:
                raise TrainingDataError(
                    f"bag {bag_path}: frame {frame.index} (stamp {frame.stamp_ns} ns) has no usable ground "
                    f"truth on {gt_topic} ({frame.gt_problem})")
            try:
                rgb = message_to_rgb(frame.image)
            except ImageRejected as exc:
                raise TrainingDataError(
                    f"bag {bag_path}: frame {frame.index} (stamp {frame.stamp_ns} ns) on {bag.image_topic} cannot be "
                    f"used ({exc.reason}): {exc}") from None
            write_pair(root, "train", "bag", f"bag_{frame.index:06d}_000000", rgb, frame.gt)
    done.write_text(str(bag_path) + "\n")
    return find_pairs(root, "train")


def check_samples(samples: Sequence[Sample], mapping: LabelMapping, progress: bool = True) -> np.ndarray:
    """Check every frame before training; return the pixel count of each class over all frames.

    Raises :class:`TrainingDataError` naming the first file whose ground truth is unreadable, not
    the size of its image, or holds an id outside the mapping.
    """
    counts = np.zeros(mapping.num_classes, dtype=np.int64)
    loop = samples
    if progress:
        from tqdm import tqdm

        loop = tqdm(samples, desc="check data", unit="frame")
    for sample in loop:
        try:
            with Image.open(sample.image) as im:
                width, height = im.size
        except OSError as exc:
            raise TrainingDataError(f"cannot read image {sample.image}: {exc}") from exc
        gt = cv2.imread(str(sample.gt), cv2.IMREAD_UNCHANGED)
        if gt is None or gt.ndim != 2 or gt.dtype != np.uint8:
            raise TrainingDataError(f"ground truth {sample.gt} is not a readable single-channel 8-bit label image")
        if gt.shape != (height, width):
            raise TrainingDataError(f"ground truth {sample.gt} is {gt.shape[1]}x{gt.shape[0]} but its image "
                                    f"{sample.image} is {width}x{height}")
        try:
            mapped = mapping.apply(gt, str(sample.gt))
        except ValueError as exc:
            raise TrainingDataError(str(exc)) from exc
        counts += np.bincount(mapped[mapped != IGNORE_INDEX].ravel(), minlength=mapping.num_classes)[
            : mapping.num_classes]
    return counts


def load_sample(sample: Sample, mapping: LabelMapping) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 HxWx3, class indices uint8 HxW with 255 ignored)."""
    try:
        rgb, label_ids = read_pair(CityscapesPair(sample.image.name, sample.image, sample.gt))
    except ValueError as exc:
        raise TrainingDataError(str(exc)) from exc
    return rgb, mapping.apply(label_ids, str(sample.gt))


def normalize(rgb: np.ndarray, normalization: Normalization = IMAGENET) -> torch.Tensor:
    """uint8 HxWx3 RGB -> float 3xHxW as the engine feeds the model at inference: channels in the
    model's order, ``(x/255 - mean) / std`` with the model registry entry's statistics."""
    if normalization.channel_order == "bgr":
        rgb = rgb[..., ::-1]
    mean = np.array(normalization.mean, np.float32) * 255.0
    std = np.array(normalization.std, np.float32) * 255.0
    return torch.from_numpy(((rgb.astype(np.float32) - mean) / std).transpose(2, 0, 1).copy())


def pad_colour(normalization: Normalization) -> tuple[int, ...]:
    """The RGB colour that normalises to zero: what padding of a crop is filled with."""
    mean = normalization.mean[::-1] if normalization.channel_order == "bgr" else normalization.mean
    return tuple(int(round(m * 255)) for m in mean)


def augment(rgb: np.ndarray, labels: np.ndarray, crop: tuple[int, int],
            rng: np.random.Generator, normalization: Normalization = IMAGENET) -> tuple[np.ndarray, np.ndarray]:
    """Random scale, pad (the image with the model's mean, the labels with the ignore label),
    random crop, random horizontal flip."""
    scale = rng.uniform(*SCALE_RANGE)
    height, width = labels.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
    labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    ch, cw = crop
    pad_h, pad_w = max(ch - labels.shape[0], 0), max(cw - labels.shape[1], 0)
    if pad_h or pad_w:
        rgb = cv2.copyMakeBorder(rgb, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=pad_colour(normalization))
        labels = cv2.copyMakeBorder(labels, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
    y = int(rng.integers(labels.shape[0] - ch + 1))
    x = int(rng.integers(labels.shape[1] - cw + 1))
    rgb, labels = rgb[y:y + ch, x:x + cw], labels[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        rgb, labels = rgb[:, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(rgb), np.ascontiguousarray(labels)


class AugmentedCrops(Dataset):
    """Sample ``k`` is an augmented crop of a frame; both chosen by ``numpy`` RNG ``(seed, k)``;
    normalised as the model's registry entry says (``normalization``)."""

    def __init__(self, samples: Sequence[Sample], mapping: LabelMapping, crop: tuple[int, int], seed: int,
                 normalization: Normalization = IMAGENET) -> None:
        self.samples, self.mapping, self.crop, self.seed = list(samples), mapping, crop, seed
        self.normalization = normalization

    def __len__(self) -> int:
        return 2**62  # indexed by global sample number, never exhausted

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, k))
        sample = self.samples[int(rng.integers(len(self.samples)))]
        rgb, labels = load_sample(sample, self.mapping)
        rgb, labels = augment(rgb, labels, self.crop, rng, self.normalization)
        return normalize(rgb, self.normalization), torch.from_numpy(labels.astype(np.int64))


class Frames(Dataset):
    """Whole frames, unaugmented (validation), normalised like :class:`AugmentedCrops`."""

    def __init__(self, samples: Sequence[Sample], mapping: LabelMapping,
                 normalization: Normalization = IMAGENET) -> None:
        self.samples, self.mapping, self.normalization = list(samples), mapping, normalization

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, labels = load_sample(self.samples[i], self.mapping)
        return normalize(rgb, self.normalization), torch.from_numpy(labels.astype(np.int64))
