"""``model: onnx`` in the engine: foreign networks exported in the test (byo_support.py), served
with labels equal to a reference computed here in PyTorch; fixed and dynamic sizes and batches;
logits, probabilities and labels outputs; bgr; where each part of the contract comes from."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from byo_support import (
    MEAN,
    STD,
    TinySeg,
    export,
    frame,
    graph_file,
    identity_labels,
    identity_network,
    nearest,
    reference_labels,
    tensor,
)
from onnx import helper, numpy_helper

from seg_perception.backends.onnx_contract import OnnxContractError
from seg_perception.backends.onnx_model import OnnxFileModel, load_onnx_model, onnx_reference_config
from seg_perception.cityscapes import CLASS_NAMES, PALETTE
from seg_perception.engine import EngineConfig, EngineConfigError, OutputRequest, SegmentationEngine
from seg_perception.params import engine_config, validate_params

ALL = OutputRequest(color=True, overlay=True, confidence=True)


def _engine(path: Path, **kwargs: Any) -> SegmentationEngine:
    return SegmentationEngine(EngineConfig(model="onnx", weights=str(path), device="cpu", **kwargs))


def _spy_runs(engine: SegmentationEngine) -> list[tuple[int, ...]]:
    """Record the input shape of every ONNX Runtime run of the engine's network."""
    network = engine._forward
    shapes: list[tuple[int, ...]] = []
    run = network.run_raw

    def spy(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        return run(x)

    network.run_raw = spy
    return shapes


def _agreement(got: np.ndarray, expected: np.ndarray) -> float:
    assert got.shape == expected.shape
    return float((got == expected).mean())


def test_fixed_size_network_runs_at_its_size_and_labels_come_back_at_the_frame_size(byo_networks) -> None:
    engine = _engine(byo_networks.lraspp_path)
    assert engine.config.inference_size == (256, 256)
    assert engine.description["model"] == "onnx" and "256x256" in engine.description["contract"]
    runs = _spy_runs(engine)
    for size in ((40, 72), (300, 200)):  # enlarged, and shrunk (antialiased) to the network's size
        image = frame(*size, seed=size[0])
        expected = reference_labels(byo_networks.lraspp, image, (256, 256))
        assert len(np.unique(expected)) >= 3  # the frame decides the labels
        result = engine.infer(image, ALL)
        assert result.labels.shape == size and result.color.shape == (*size, 3)
        assert _agreement(result.labels, expected) >= 0.995
    assert runs == [(1, 3, 256, 256)] * 2


def test_inference_size_that_contradicts_a_fixed_network_is_refused(byo_networks) -> None:
    with pytest.raises(OnnxContractError, match="inference_size 128x128 does not fit the network, which runs at 256x"):
        _engine(byo_networks.lraspp_path, inference_size=(128, 128))


def test_dynamic_network_runs_at_the_frame_size_or_inference_size(byo_networks) -> None:
    image = frame(48, 80, seed=2)
    engine = _engine(byo_networks.deeplabv3_path)
    assert engine.config.inference_size is None
    runs = _spy_runs(engine)
    expected = reference_labels(byo_networks.deeplabv3, image)
    assert len(np.unique(expected)) >= 3
    assert _agreement(engine.infer(image).labels, expected) >= 0.995
    assert runs == [(1, 3, 48, 80)]
    sized = _engine(byo_networks.deeplabv3_path, inference_size=(64, 96))
    runs = _spy_runs(sized)
    expected = reference_labels(byo_networks.deeplabv3, image, (64, 96))
    assert _agreement(sized.infer(image).labels, expected) >= 0.995
    assert runs == [(1, 3, 64, 96)]


def test_fixed_batch_runs_frames_one_by_one_and_a_dynamic_batch_in_one_run(byo_networks) -> None:
    images = [frame(40, 72, seed=s) for s in range(3)]
    fixed = _engine(byo_networks.lraspp_path)
    alone = [fixed.infer(image).labels for image in images]
    runs = _spy_runs(fixed)
    together = fixed.infer_batch(images, [OutputRequest()] * 3)
    assert runs == [(1, 3, 256, 256)] * 3
    assert all(np.array_equal(a, b.labels) for a, b in zip(alone, together, strict=True))
    dynamic = _engine(byo_networks.deeplabv3_path, inference_size=(64, 96))
    alone = [dynamic.infer(image).labels for image in images]
    runs = _spy_runs(dynamic)
    together = dynamic.infer_batch(images, [OutputRequest()] * 3)
    assert runs == [(3, 3, 64, 96)] and all(r.batch_size == 3 for r in together)
    assert all(_agreement(a, b.labels) >= 0.999 for a, b in zip(alone, together, strict=True))


def test_a_fixed_batch_larger_than_one_is_filled_and_padded(tmp_path: Path) -> None:
    model = TinySeg(classes=4)
    path = export(model, tmp_path / "batch2.onnx", (32, 48), dynamic=False, batch=2)
    engine = _engine(path)
    runs = _spy_runs(engine)
    images = [frame(32, 48, seed=s) for s in range(3)]
    results = engine.infer_batch(images, [OutputRequest()] * 3)
    assert runs == [(2, 3, 32, 48)] * 2
    for image, result in zip(images, results, strict=True):
        assert np.array_equal(result.labels, reference_labels(model, image, (32, 48)))
    assert engine._forward(torch.zeros(3, 3, 32, 48)).shape == (3, 4, 16, 24)  # N in, N out: padding dropped


@pytest.mark.parametrize("keepdim", [False, True])
def test_a_labels_output_is_resized_nearest_and_has_no_confidence(tmp_path: Path, keepdim: bool) -> None:
    """The argmax inside the graph: (N, H, W) int64, or (N, 1, H, W); at half the input's size."""
    model = TinySeg(classes=5, output="labels", keepdim=keepdim)
    path = export(model, tmp_path / "labels.onnx", (32, 48), dynamic=not keepdim)
    engine = _engine(path, num_classes=5)
    assert engine.output_kind == "labels" and len(engine.class_names) == 5
    assert engine.description["confidence"] == "not available: the network outputs labels"
    image = frame(40, 72, seed=4)
    x = _normalised(image)
    if keepdim:  # the fixed one runs at 32x48: the frame is shrunk to it (antialiased), the dynamic one not
        x = torch.nn.functional.interpolate(x, size=(32, 48), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        ids = model(x).reshape(x.shape[-2] // 2, x.shape[-1] // 2).numpy().astype(np.uint8)
    expected = nearest(ids, 40, 72)
    assert len(np.unique(expected)) >= 3
    result = engine.infer(image, ALL)
    assert np.array_equal(result.labels, expected)
    assert result.confidence is None
    assert np.array_equal(result.color, PALETTE[:5][expected])
    with pytest.raises(OnnxContractError, match="crf cpu refines class scores, and this network outputs labels"):
        _engine(path, num_classes=5, crf="cpu")


def _normalised(image: np.ndarray) -> torch.Tensor:
    from byo_support import normalise

    return normalise(image)


def test_label_ids_outside_the_classes_are_published_as_no_class(tmp_path: Path) -> None:
    """A labels network with more ids than it was told: those pixels are 255, never a wrong class."""
    model = TinySeg(classes=5, output="labels")
    path = export(model, tmp_path / "labels.onnx", (32, 48), dynamic=True)
    engine = _engine(path, model_options={"classes": ["a", "b", "c"]})
    image = frame(32, 48, seed=5)
    with torch.no_grad():
        ids = model(_normalised(image))[0].numpy()
    expected = nearest(np.where(ids < 3, ids, 255).astype(np.uint8), 32, 48)
    assert (expected == 255).any() and (expected < 3).any()
    result = engine.infer(image, OutputRequest(color=True))
    assert np.array_equal(result.labels, expected)
    assert (result.color[expected == 255] == 0).all()


def test_probabilities_give_the_confidence_directly_and_logits_through_softmax(tmp_path: Path) -> None:
    model = TinySeg(classes=4, output="probabilities")
    path = export(model, tmp_path / "probs.onnx", (32, 48), dynamic=True)
    image = frame(32, 48, seed=6)
    with torch.no_grad():
        probs = torch.nn.functional.interpolate(model(_normalised(image)), size=(32, 48), mode="bilinear",
                                                align_corners=False)
    expected_labels = probs.argmax(1)[0].numpy()
    as_probabilities = _engine(path, model_options={"output": "probabilities"}).infer(image, ALL)
    assert np.array_equal(as_probabilities.labels, expected_labels)
    expected = (probs.max(1).values[0] * 255).round().numpy()
    assert np.abs(as_probabilities.confidence.astype(float) - expected).max() <= 1
    # Read as logits (the default for a float output), the confidence is their softmax: another number.
    as_logits = _engine(path).infer(image, ALL)
    softmaxed = (probs.softmax(1).max(1).values[0] * 255).round().numpy()
    assert np.array_equal(as_logits.labels, expected_labels)
    assert np.abs(as_logits.confidence.astype(float) - softmaxed).max() <= 1
    assert np.abs(softmaxed - expected).mean() > 5


def test_the_crf_refines_probabilities_as_it_refines_the_logits_they_come_from(tmp_path: Path) -> None:
    """log(softmax(z)) differs from z by one constant per pixel: the same CRF result."""
    image = frame(32, 48, seed=12)
    logits = export(TinySeg(classes=4, seed=13), tmp_path / "logits.onnx", (32, 48), dynamic=True)
    probs = export(TinySeg(classes=4, seed=13, output="probabilities"), tmp_path / "probs.onnx", (32, 48),
                   dynamic=True)
    from_logits = _engine(logits, crf="cpu").infer(image, ALL)
    from_probs = _engine(probs, crf="cpu", model_options={"output": "probabilities"}).infer(image, ALL)
    plain = _engine(logits).infer(image).labels
    assert (from_logits.labels != plain).mean() > 0.01  # the CRF changes the labels
    assert _agreement(from_probs.labels, from_logits.labels) >= 0.999
    # (scores are upsampled before the CRF: bilinear on probabilities is not bilinear on logits)
    assert np.abs(from_probs.confidence.astype(int) - from_logits.confidence.astype(int)).mean() <= 1


def test_a_float_label_map_is_rounded_to_class_ids(tmp_path: Path) -> None:
    """(N, 1, H, W) float labels, as some exporters cast them: 4 * red + 0.4, rounded."""
    scale = numpy_helper.from_array(np.array(4.0, np.float32), "scale")
    offset = numpy_helper.from_array(np.array(0.4, np.float32), "offset")
    starts, ends, axes = (numpy_helper.from_array(np.array([v], np.int64), n)
                          for v, n in ((0, "starts"), (1, "ends"), (1, "axes")))
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["red"]),
             helper.make_node("Mul", ["red", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "offset"], ["y"])]
    path = graph_file(tmp_path / "float_labels.onnx", nodes, [tensor("x", ["n", 3, "h", "w"])],
                      [tensor("y", ["n", 1, "h", "w"])], initializers=[scale, offset, starts, ends, axes])
    engine = _engine(path, model_options={"output": "labels", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                                          "classes": ["a", "b", "c", "d", "e"]})
    image = frame(32, 48, seed=14)
    expected = np.round(4.0 * image[..., 0].astype(np.float32) / 255.0 + 0.4).astype(np.uint8)
    assert len(np.unique(expected)) >= 3 and (np.floor(4.0 * image[..., 0] / 255.0 + 0.4) != expected).any()
    assert _agreement(engine.infer(image).labels, expected) >= 0.999


def test_a_bgr_network_is_fed_bgr(tmp_path: Path) -> None:
    """Named in the file's metadata, or in model_options: the labels are those of BGR input."""
    image = frame(40, 72, seed=7)
    rgb_labels, bgr_labels = identity_labels(image), identity_labels(image, channel_order="bgr")
    assert (rgb_labels != bgr_labels).mean() > 0.2  # the test can tell them apart
    in_file = identity_network(tmp_path / "bgr.onnx", metadata={"channel_order": "bgr"})
    assert _agreement(_engine(in_file).infer(image).labels, bgr_labels) >= 0.99
    plain = identity_network(tmp_path / "plain.onnx")
    assert _agreement(_engine(plain).infer(image).labels, rgb_labels) >= 0.99
    assert _agreement(_engine(plain, model_options={"channel_order": "bgr"}).infer(image).labels, bgr_labels) >= 0.99
    model = TinySeg(classes=5, seed=9)
    path = export(model, tmp_path / "tiny_bgr.onnx", (32, 48), dynamic=True)
    engine = _engine(path, model_options={"channel_order": "bgr", "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]})
    expected = reference_labels(model, image, channel_order="bgr", mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    assert _agreement(engine.infer(image).labels, expected) >= 0.99


def test_the_file_comes_first_then_model_options_then_defaults(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    image = frame(40, 72, seed=8)
    file_norm = {"mean": "[0.6, 0.3, 0.5]", "std": "[0.3, 0.2, 0.25]", "channel_order": "rgb"}
    recorded = identity_network(tmp_path / "recorded.onnx", metadata=file_norm)
    options = {"mean": [0.2, 0.7, 0.4], "std": [0.2, 0.2, 0.2]}
    file_labels = identity_labels(image, (0.6, 0.3, 0.5), (0.3, 0.2, 0.25))
    option_labels = identity_labels(image, (0.2, 0.7, 0.4), (0.2, 0.2, 0.2))
    default_labels = identity_labels(image, MEAN, STD)
    assert (file_labels != option_labels).mean() > 0.1 and (option_labels != default_labels).mean() > 0.1
    with caplog.at_level(logging.INFO, logger="seg_perception"):
        engine = _engine(recorded, model_options=options)
    assert _agreement(engine.infer(image).labels, file_labels) >= 0.99
    assert "model_options mean [0.2, 0.7, 0.4] ignored: the file records [0.6, 0.3, 0.5]" in caplog.text
    plain = identity_network(tmp_path / "plain.onnx")
    assert _agreement(_engine(plain, model_options=options).infer(image).labels, option_labels) >= 0.99
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seg_perception"):
        engine = _engine(plain)
    assert _agreement(engine.infer(image).labels, default_labels) >= 0.99
    defaults = [r.getMessage() for r in caplog.records if "defaults" in r.getMessage()]
    assert len(defaults) == 1 and "mean ImageNet's [0.485, 0.456, 0.406]" in defaults[0]
    assert "channel_order rgb" in defaults[0] and "output logits" in defaults[0]


def test_classes_and_palette_from_model_options_or_the_file(tmp_path: Path) -> None:
    model = TinySeg(classes=3)
    options = {"classes": ["lane", "curb", "other"], "palette": [255, 0, 0, 0, 255, 0, 0, 0, 255]}
    path = export(model, tmp_path / "three.onnx", (32, 48), dynamic=True)
    engine = _engine(path, model_options=options)
    assert tuple(engine.class_names) == ("lane", "curb", "other")
    image = frame(32, 48, seed=10)
    result = engine.infer(image, OutputRequest(color=True))
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    assert np.array_equal(result.color, colours[result.labels])
    named = export(model, tmp_path / "named.onnx", (32, 48), dynamic=True,
                   metadata={"classes": '["road", "kerb", "rest"]'})
    assert tuple(_engine(named, model_options=options).class_names) == ("road", "kerb", "rest")
    assert tuple(_engine(path).class_names) == ("class_0", "class_1", "class_2")


def test_our_own_export_needs_no_options(tmp_path: Path) -> None:
    """``seg-perception export`` records the contract: the file serves with the registered model's labels."""
    from seg_perception.cli import main
    from seg_perception.models import build_model

    torch.manual_seed(5)
    weights = tmp_path / "regseg.pt"
    torch.save(build_model("regseg").state_dict(), weights)
    out = tmp_path / "regseg.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(out), "--size", "64x96",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    engine = _engine(out)
    assert tuple(engine.class_names) == CLASS_NAMES and engine.description["contract"].count("rgb") == 1
    registered = SegmentationEngine(EngineConfig(weights=str(weights), device="cpu", backend="torch"))
    image = frame(64, 96, seed=11)
    assert _agreement(engine.infer(image).labels, registered.infer(image).labels) >= 0.999


def test_the_reference_is_fp32_onnx_runtime_on_the_cpu(byo_networks) -> None:
    config = EngineConfig(model="onnx", weights=str(byo_networks.deeplabv3_path), device="cpu")
    model = load_onnx_model(config)
    assert isinstance(model, OnnxFileModel)
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        got, expected = model(x), byo_networks.deeplabv3(x)
    assert float((got - expected).abs().max()) <= 1e-3 + 1e-3 * float(expected.abs().max())
    reference = onnx_reference_config(EngineConfig(model="onnx", weights="w.onnx", backend="tensorrt",
                                                   device="cuda", precision="fp16"))
    assert (reference.backend, reference.device, reference.precision) == ("onnxruntime", "cpu", "fp32")


def test_device_binding_gives_the_same_output_as_a_plain_run(byo_networks) -> None:
    """The zero-copy path CUDA uses (bound input, output handed over by DLPack), run on the CPU."""
    network = _engine(byo_networks.deeplabv3_path)._forward
    x = torch.randn(2, 3, 40, 56)
    assert torch.equal(network.run_bound(x), network.run_raw(x))


def test_settings_that_cannot_run_an_onnx_file_are_refused_up_front(tmp_path: Path) -> None:
    path = str(identity_network(tmp_path / "net.onnx"))
    for kwargs, message in (({"backend": "torch"}, "backend torch cannot run model onnx"),
                            ({"compile": "torch_compile"}, "compile torch_compile compiles PyTorch models"),
                            ({"weights": ""}, "model onnx needs weights"),
                            ({"model_options": {"scales": [1.0]}}, "unknown option"),
                            ({"model_options": {"mean": [123.7, 116.3, 103.5]}}, "divide 0..255 values")):
        config = EngineConfig(**{"model": "onnx", "weights": path, "device": "cpu", **kwargs})
        with pytest.raises(EngineConfigError, match=message):
            config.validate()
    values = {**_defaults(), "model": "onnx", "weights": path}
    assert validate_params(values) == []
    assert engine_config(values).model == "onnx"
    assert any("needs weights" in p for p in validate_params({**values, "weights": ""}))
    assert any("valid options: mean, std" in p for p in validate_params({**values, "model_options": "{x: 1}"}))
    assert any("backend torch cannot run" in p for p in validate_params({**values, "backend": "torch"}))
    assert any("or onnx" in p for p in validate_params({**values, "model": "onnnx"}))
    many = {**values, "model_options": "{classes: [" + ", ".join(f"c{i}" for i in range(150)) + "]}"}
    assert validate_params(many) == []  # long class lists fit (up to 255 classes)


def _defaults() -> dict[str, Any]:
    from seg_perception.params import defaults

    return defaults()
