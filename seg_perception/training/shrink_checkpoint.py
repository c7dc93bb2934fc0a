"""Shrink a training checkpoint for shipping: fp16 weights plus its plain-data ``meta``.

``python -m seg_perception.training.shrink_checkpoint best.pth seg_perception/weights/NAME.pt``. Floating
tensors are stored in half precision (the loader copies them into the fp32 model), which halves the
file without measurable change in the labels; BatchNorm counters stay integers. (Exporting a network
to ONNX or TensorRT is :mod:`seg_perception.backends.export`.)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..models.checkpoint import extract_state_dict, read_checkpoint


def shrink_checkpoint(src: str | Path, dst: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
    """Write ``{'state_dict': fp16 weights, 'meta': meta}`` of checkpoint ``src`` to ``dst``."""
    obj = read_checkpoint(src)
    state = extract_state_dict(obj, str(src))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    meta = dict(obj.get("meta", {})) if isinstance(obj, dict) else {}
    meta.update(extra_meta or {})
    meta["precision"] = "fp16"
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": half, "meta": meta}, dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="checkpoint written by seg-perception train (best.pth)")
    parser.add_argument("dst", help="output .pt file")
    args = parser.parse_args(argv)
    dst = shrink_checkpoint(args.src, args.dst)
    print(f"wrote {dst} ({dst.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
