"""Segmentation architectures and the registry that builds them by name.

Importing this package registers every architecture; use :func:`build_model` and
:func:`load_checkpoint` rather than the model classes directly.
"""

from . import deeplabv1, deeplabv3plus, hrnet_ocr, refinenet, regseg  # noqa: F401  (registers them)
from .checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    ClassCountMismatchError,
    UnsafeCheckpointError,
    load_checkpoint,
)
from .registry import ModelConfigError, build_model, count_parameters, list_models, model_options

__all__ = [
    "CheckpointError", "CheckpointMismatchError", "CheckpointNotFoundError",
    "ClassCountMismatchError", "UnsafeCheckpointError", "ModelConfigError", "build_model",
    "count_parameters", "list_models", "load_checkpoint", "model_options",
]
