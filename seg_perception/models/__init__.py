"""Segmentation architectures and the registry that builds them by name.

Importing this package registers every architecture; use :func:`build_model` and
:func:`load_checkpoint` rather than the model classes directly.
"""

# Import order is registry order: RegSeg, the default, comes first.
from . import regseg  # noqa: F401, I001  (each import registers its architectures)
from . import deeplabv3plus, refinenet, deeplabv1, hrnet_ocr  # noqa: F401
from .checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    ClassCountMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
)
from .registry import (
    ModelConfigError,
    build_model,
    count_parameters,
    list_models,
    model_options,
    normalization_for,
)

__all__ = [
    "CheckpointError", "CheckpointMismatchError", "CheckpointNotFoundError",
    "ClassCountMismatchError", "CorruptCheckpointError", "UnsafeCheckpointError", "ModelConfigError", "build_model",
    "count_parameters", "list_models", "load_checkpoint", "model_options", "normalization_for",
]
