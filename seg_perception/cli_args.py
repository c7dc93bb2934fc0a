"""Argument types shared by ``seg-perception`` and its subcommand modules.

They live here, not in :mod:`seg_perception.cli`, because ``cli`` imports the subcommand modules
to register them: a subcommand importing ``cli`` back would make an import cycle.
"""

from __future__ import annotations

import argparse


def parse_size(text: str) -> tuple[int, int]:
    """``'512x1024'`` -> (512, 1024) as (height, width)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HEIGHTxWIDTH, got {text!r}") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return height, width
