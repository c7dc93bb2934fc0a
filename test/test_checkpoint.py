"""The one checkpoint loader: wrappers, prefixes, numpy metadata, strictness, safety."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from seg_perception.models import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    ClassCountMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    build_model,
    load_checkpoint,
)


def _model(num_classes: int = 19) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("regseg", num_classes=num_classes).eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=False))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"model": s, "epoch": 10, "best_mIU": 0.7},
        lambda s: {"state_dict": s, "mean_iu": np.float64(0.81), "num_classes": np.int64(19)},
        lambda s: {"model_state": s, "optimizer_state": {"lr": 0.01}},
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
    ],
    ids=["plain", "model", "state_dict+numpy", "model_state", "module-prefix"],
)
def test_loads_common_wrappings(tmp_path, wrap) -> None:
    source = _model()
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(source.state_dict()), path)
    target = build_model("regseg")
    load_checkpoint(target, path)
    assert _same_weights(source, target)


def test_missing_file_is_a_distinct_error(tmp_path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_checkpoint(_model(), tmp_path / "nope.pth")


def test_wrong_architecture_lists_missing_and_unexpected_keys(tmp_path) -> None:
    other = build_model("regseg", variant="exp53_decoder29")
    path = tmp_path / "exp53.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(_model(), path)
    assert not isinstance(info.value, ClassCountMismatchError)
    assert info.value.missing and info.value.unexpected
    assert "missing key(s)" in str(info.value) and "unexpected key(s)" in str(info.value)


def test_wrong_class_count_names_both_counts(tmp_path) -> None:
    path = tmp_path / "voc.pth"
    torch.save(_model(num_classes=21).state_dict(), path)
    with pytest.raises(ClassCountMismatchError, match="21 classes.*num_classes=19") as info:
        load_checkpoint(_model(19), path)
    assert info.value.checkpoint_classes == 21 and info.value.model_classes == 19


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_and_never_runs(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"state_dict": _model().state_dict(), "hook": _Payload(str(marker))}, f,
                   pickle_protocol=pickle.HIGHEST_PROTOCOL)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match="pickled code"):
        load_checkpoint(_model(), path)
    assert not marker.exists()


def test_truncated_file_is_reported_not_crashing(tmp_path) -> None:
    path = tmp_path / "cut.pth"
    torch.save(_model().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptCheckpointError, match="not a readable torch checkpoint|corrupt"):
        load_checkpoint(_model(), path)
    assert os.path.getsize(path) > 0


def test_text_file_is_reported_as_not_a_checkpoint(tmp_path) -> None:
    path = tmp_path / "weights.pth"
    path.write_text("this is a README, not weights\n")
    with pytest.raises(CorruptCheckpointError, match="not a torch checkpoint") as info:
        load_checkpoint(_model(), path)
    assert not isinstance(info.value, UnsafeCheckpointError)
