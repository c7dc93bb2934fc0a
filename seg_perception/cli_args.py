"""Argument types shared by ``seg-perception`` and its subcommand modules.

They live here, not in :mod:`seg_perception.cli`, because ``cli`` imports the subcommand modules
to register them: a subcommand importing ``cli`` back would make an import cycle.
"""

from __future__ import annotations

import argparse
from typing import Any


def parse_size(text: str) -> tuple[int, int]:
    """``'512x1024'`` -> (512, 1024) as (height, width)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HEIGHTxWIDTH, got {text!r}") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return height, width


def add_int8_options(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """``--calibration``, ``--calibration-frames`` and ``--parity-min-agreement`` (``precision
    int8`` and the parity gate; docs/BACKENDS.md). ``defaults=False`` leaves them None so that a
    ``--config`` file's values stay unless given."""
    from .choices import DEFAULT_CALIBRATION_FRAMES, DEFAULT_PARITY_MIN_AGREEMENT

    p.add_argument("--calibration", default="" if defaults else None,
                   help="precision int8: a drive bag folder, a Cityscapes folder or a folder of images to calibrate on")
    p.add_argument("--calibration-frames", type=int, default=DEFAULT_CALIBRATION_FRAMES if defaults else None,
                   help=f"precision int8: frames calibrated on, spread over the data (default "
                        f"{DEFAULT_CALIBRATION_FRAMES})")
    p.add_argument("--parity-min-agreement", type=float, default=DEFAULT_PARITY_MIN_AGREEMENT if defaults else None,
                   help=f"parity gate: least fraction of labels equal to the fp32 reference's (default "
                        f"{DEFAULT_PARITY_MIN_AGREEMENT}; 0 = off); below it the command exits 3 with the figure")


def int8_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`add_int8_options` values as ``EngineConfig`` fields."""
    return {"calibration": args.calibration or "", "calibration_frames": args.calibration_frames,
            "parity_min_agreement": args.parity_min_agreement}
