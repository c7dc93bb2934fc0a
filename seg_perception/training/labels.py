"""Which dataset label id becomes which class of the model: the label mapping.

Ground truth is stored in dataset label ids (Cityscapes ``*_labelIds.png``, mono8 bag topics). The
model predicts class indices 0..N-1. The default mapping is Cityscapes' own (34 label ids -> 19
train ids, the rest ignored). A custom class set is a YAML file::

    classes:                     # dataset id -> our class index, its name and colour (RGB)
      7:  {index: 0, name: road, color: [128, 64, 128]}
      8:  {index: 1, name: sidewalk, color: [244, 35, 232]}
      26: {index: 2, name: car, color: [0, 0, 142]}
      27: {index: 2, name: car, color: [0, 0, 142]}   # several ids may merge into one class
    ignore: [0, 1, 2, 3]          # ids left out of the loss and the metrics

A pixel whose id is neither mapped nor ignored is an error naming the file: silently training it
as "ignore" would hide a wrong mapping. The mapping travels inside every checkpoint, so the node
and the evaluator can publish the right class names and colours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..cityscapes import CLASS_NAMES, IGNORE_INDEX, LABEL_ID_TO_TRAIN_ID, PALETTE


class LabelMappingError(ValueError):
    """A label-mapping file that cannot be used, or ground truth that does not fit the mapping."""


@dataclass(frozen=True)
class LabelMapping:
    """Dataset id -> class index (``IGNORE_INDEX`` for ignored ids), with class names and colours."""

    id_to_index: dict[int, int]
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    source: str = "cityscapes"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def lut(self) -> np.ndarray:
        """256-entry lookup table; ids outside the mapping map to -1 (detected by :meth:`apply`)."""
        table = np.full(256, -1, dtype=np.int16)
        for label_id, index in self.id_to_index.items():
            table[label_id] = index
        return table

    def apply(self, label_ids: np.ndarray, where: str) -> np.ndarray:
        """Map a uint8 label-id image to class indices (uint8, 255 ignored); unknown ids raise."""
        mapped = self.lut()[label_ids]
        if (mapped < 0).any():
            unknown = sorted(int(v) for v in np.unique(label_ids[mapped < 0]))[:10]
            raise LabelMappingError(
                f"{where}: label id(s) {unknown} are not in the label mapping ({self.source}); "
                f"add them to 'classes' or 'ignore'"
            )
        return mapped.astype(np.uint8)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for checkpoints (loads with ``weights_only=True``)."""
        return {
            "id_to_index": {int(k): int(v) for k, v in self.id_to_index.items()},
            "class_names": list(self.class_names),
            "palette": [list(c) for c in self.palette],
            "source": self.source,
        }


def cityscapes_mapping() -> LabelMapping:
    """The standard Cityscapes label ids -> 19 train ids."""
    return LabelMapping(dict(LABEL_ID_TO_TRAIN_ID), CLASS_NAMES,
                        tuple(tuple(int(x) for x in c) for c in PALETTE), "cityscapes")


def _fail(path: Path, message: str) -> LabelMappingError:
    return LabelMappingError(f"label mapping {path}: {message}")


def load_label_mapping(path: str | Path) -> LabelMapping:
    """Read a label-mapping YAML (format in the module docstring); every mistake names the file."""
    path = Path(path)
    if not path.is_file():
        raise LabelMappingError(f"label mapping {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise _fail(path, f"not valid YAML: {str(exc)[:200]}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("classes"), dict) or not data["classes"]:
        raise _fail(path, "expected a mapping with a non-empty 'classes' mapping (dataset id -> class)")
    unknown_keys = sorted(set(data) - {"classes", "ignore"})
    if unknown_keys:
        raise _fail(path, f"unknown top-level key(s) {unknown_keys[:5]}; valid: classes, ignore")
    id_to_index: dict[int, int] = {}
    classes: dict[int, tuple[str, tuple[int, int, int]]] = {}
    for raw_id, spec in data["classes"].items():
        label_id = _label_id(path, raw_id)
        if not isinstance(spec, dict) or set(spec) != {"index", "name", "color"}:
            raise _fail(path, f"id {label_id}: expected {{index, name, color}}, got {str(spec)[:100]}")
        index, name, color = spec["index"], str(spec["name"]), spec["color"]
        if not isinstance(index, int) or not 0 <= index < IGNORE_INDEX:
            raise _fail(path, f"id {label_id}: index must be an integer in 0..254, got {index!r}")
        if (not isinstance(color, list) or len(color) != 3
                or not all(isinstance(c, int) and 0 <= c <= 255 for c in color)):
            raise _fail(path, f"id {label_id}: color must be [R, G, B] with 0..255 values, got {str(color)[:50]}")
        entry = (name, (color[0], color[1], color[2]))
        if classes.setdefault(index, entry) != entry:
            raise _fail(path, f"class index {index} has two names/colours: {classes[index]} and {entry}")
        id_to_index[label_id] = index
    for raw_id in data.get("ignore") or []:
        label_id = _label_id(path, raw_id)
        if label_id in id_to_index:
            raise _fail(path, f"id {label_id} is both mapped and ignored")
        id_to_index[label_id] = IGNORE_INDEX
    indices = sorted(classes)
    if indices != list(range(len(indices))):
        raise _fail(path, f"class indices must be 0..N-1 without gaps, got {indices[:20]}")
    return LabelMapping(id_to_index, tuple(classes[i][0] for i in indices),
                        tuple(classes[i][1] for i in indices), str(path))


def _label_id(path: Path, raw: Any) -> int:
    if not isinstance(raw, int) or not 0 <= raw <= 255:
        raise _fail(path, f"dataset ids must be integers 0..255 (uint8 label images), got {str(raw)[:30]!r}")
    return raw
