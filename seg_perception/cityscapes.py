"""Cityscapes label definitions: the 19 train ids, their colours, categories, and the id mapping.

Kept in one place so the engine (palette), the node (class-name parameters) and the evaluator
(label id -> train id, categories) agree by construction.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

#: Train-id order used by every Cityscapes model (official cityscapesScripts labels.py order).
CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

#: The standard Cityscapes colour of each train id (RGB).
PALETTE: np.ndarray = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)

#: Full Cityscapes label id (0..33, plus -1 for license plate) -> train id (255 = ignored).
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255,
    11: 2, 12: 3, 13: 4, 14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8,
    22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 29: 255, 30: 255, 31: 16, 32: 17,
    33: 18,
}

#: Train id -> label id, the inverse used when writing predictions for cityscapesScripts.
TRAIN_ID_TO_LABEL_ID: dict[int, int] = {train: label for label, train in LABEL_ID_TO_TRAIN_ID.items() if train != 255}

#: The 7 Cityscapes categories and the train ids they contain.
CATEGORIES: dict[str, tuple[int, ...]] = {
    "flat": (0, 1),
    "construction": (2, 3, 4),
    "object": (5, 6, 7),
    "nature": (8, 9),
    "sky": (10,),
    "human": (11, 12),
    "vehicle": (13, 14, 15, 16, 17, 18),
}


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes label-id image to train ids with a 256-entry lookup table."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut[label_ids.astype(np.uint8, copy=False)]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map a train-id image back to Cityscapes label ids (ignored pixels become 0, 'unlabeled')."""
    lut = np.zeros(256, dtype=np.uint8)
    for train_id, label_id in TRAIN_ID_TO_LABEL_ID.items():
        lut[train_id] = label_id
    return lut[train_ids.astype(np.uint8, copy=False)]


def palette_for(num_classes: int) -> np.ndarray:
    """The Cityscapes palette for up to 19 classes; a deterministic extension for more."""
    if num_classes <= len(PALETTE):
        return PALETTE[:num_classes]
    extra = np.random.default_rng(0).integers(0, 256, (num_classes - len(PALETTE), 3), dtype=np.uint8)
    return np.concatenate([PALETTE, extra])
