"""Training feeds the model as the engine will: the model registry entry's normalisation (mean,
std, channel order) for crops, padding and validation frames; ONNX files are not trainable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seg_perception.cli import main
from seg_perception.engine import EngineConfig, SegmentationEngine
from seg_perception.evaluation.cityscapes_folder import write_pair
from seg_perception.evaluation.sample_drive import render_drive
from seg_perception.models.registry import resolve
from seg_perception.normalization import Normalization
from seg_perception.training import trainer
from seg_perception.training.data import augment, normalize
from seg_perception.training.trainer import TrainConfig, train

CUSTOM = Normalization(mean=(0.3, 0.5, 0.7), std=(0.2, 0.25, 0.3), channel_order="bgr")


def test_training_normalises_exactly_as_the_engine_preprocesses() -> None:
    frame = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    engine = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", backend="torch", normalization=CUSTOM))
    with torch.inference_mode():
        served = engine._preprocess(torch.from_numpy(frame))[0]
    trained = normalize(frame, CUSTOM)
    assert torch.allclose(served, trained, atol=1e-5)
    manual = (frame[..., ::-1] / 255.0 - np.array(CUSTOM.mean)) / np.array(CUSTOM.std)
    assert np.allclose(trained.numpy(), manual.transpose(2, 0, 1), atol=1e-5)
    assert not torch.allclose(normalize(frame), trained, atol=0.1)  # ImageNet RGB would be another input


def test_crop_padding_is_the_colour_that_normalises_to_zero() -> None:
    frame = np.full((20, 20, 3), 255, np.uint8)
    labels = np.zeros((20, 20), np.uint8)
    rgb, padded_labels = augment(frame, labels, (96, 96), np.random.default_rng(1), CUSTOM)
    padding = padded_labels == 255
    assert padding.any()
    assert np.abs(normalize(rgb, CUSTOM).numpy()[:, padding]).max() < 0.03


def test_the_trainer_uses_the_registry_entry_normalisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry, variant = resolve("regseg")
    monkeypatch.setitem(entry.normalizations, variant, CUSTOM)
    seen: list[tuple[str, Normalization]] = []

    class Crops(trainer.AugmentedCrops):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            seen.append(("crops", self.normalization))

    class Frames(trainer.Frames):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            seen.append(("frames", self.normalization))

    monkeypatch.setattr(trainer, "AugmentedCrops", Crops)
    monkeypatch.setattr(trainer, "Frames", Frames)
    data = tmp_path / "data"
    for i, (rgb, ids) in enumerate(render_drive(2, 48, 64, seed=3)):
        write_pair(data, "train", "x", f"x_000000_{i:06d}", rgb, ids)
    train(TrainConfig(data=[str(data)], out=str(tmp_path / "out"), iterations=1, batch_size=1, crop=(32, 32),
                      val=[str(data)], val_split="train", val_every=1, warmup=0, num_workers=0, device="cpu",
                      progress=False))
    assert sorted(seen) == [("crops", CUSTOM), ("frames", CUSTOM)]


def test_an_onnx_file_is_served_but_not_trained(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "out")]
    assert main([*common, "--model", "onnx"]) == 2
    assert "train cannot train model onnx: an ONNX file is an inference graph" in capsys.readouterr().err
    assert main([*common, "--init", str(tmp_path / "net.onnx")]) == 2
    assert "--init takes a PyTorch checkpoint, not an ONNX file" in capsys.readouterr().err
