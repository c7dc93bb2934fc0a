"""Files that cannot serve as a segmentation network are refused at load with one clear, bounded
error that never quotes the file; the contract's options are checked before any file is opened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from byo_support import TinySeg, export, graph_file, identity_network, tensor
from onnx import TensorProto, helper, numpy_helper

from seg_perception.backends.onnx_contract import OnnxContractError, options_problem, read_graph
from seg_perception.engine import EngineConfig, SegmentationEngine

SECRET = "TOP-SECRET-CONTENT"


def _load(path: Path, **kwargs) -> SegmentationEngine:
    return SegmentationEngine(EngineConfig(model="onnx", weights=str(path), device="cpu", **kwargs))


def _conv(path: Path, classes: int) -> Path:
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(classes, 3, 1, 1)).astype(np.float32), "w")
    return graph_file(path, [helper.make_node("Conv", ["x", "w"], ["y"])], [tensor("x", ["n", 3, "h", "w"])],
                      [tensor("y", ["n", classes, "h", "w"])], initializers=[weight])


def _bad_files(folder: Path) -> dict[str, tuple[Path, str, dict]]:
    """name -> (file, expected message, engine settings)."""
    text = folder / "notes.onnx"
    text.write_text(f"{SECRET}\n" * 50)
    checkpoint = folder / "regseg.pt"
    torch.save({"weights": torch.zeros(3), "note": SECRET}, checkpoint)
    x, y = tensor("x", ["n", 3, "h", "w"]), tensor("y", ["n", 3, "h", "w"])
    return {
        "text file": (text, "is not an ONNX model", {}),
        "torch checkpoint": (checkpoint, "is not an ONNX model", {}),
        "missing file": (folder / "absent.onnx", "does not exist", {}),
        "two inputs": (graph_file(folder / "two.onnx", [helper.make_node("Add", ["x", "z"], ["y"])],
                                  [x, tensor("z", ["n", 3, "h", "w"])], [y]),
                       r"the network has 2 inputs \('x', 'z'\); a segmentation network takes one image", {}),
        "uint8 input": (graph_file(folder / "uint8.onnx", [helper.make_node("Cast", ["x"], ["y"], to=1)],
                                   [tensor("x", ["n", 3, "h", "w"], TensorProto.UINT8)], [y]),
                        "is uint8, not a float tensor", {}),
        "3-D input": (identity_network(folder / "rank3.onnx", dims=[3, "h", "w"]), "is 3-D; a segmentation network "
                      r"takes a 4-D image tensor \(N, 3, H, W\)", {}),
        "channels last": (identity_network(folder / "nhwc.onnx", dims=[1, 64, 64, 3]),
                          "has 64 channels in dimension 1; it must take 3 .*channels last", {}),
        "classification output": (graph_file(folder / "classify.onnx", [
            helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])],
            [x], [tensor("y", ["n", 3])]), r"has shape \[1, 3\]; logits must be \(N, classes, H, W\)", {}),
        "300 classes": (_conv(folder / "many.onnx", 300), "predicts 300 classes; at most 255 fit in the mono8", {}),
        "classes of the wrong length": (_conv(folder / "five.onnx", 5),
                                        r"classes \(model_options\) names 3 classes but the network predicts 5",
                                        {"model_options": {"classes": ["a", "b", "c"]}}),
        "palette of the wrong length": (_conv(folder / "five_palette.onnx", 5), "palette .* has 2 colours but the "
                                        "network predicts 5", {"model_options": {"palette": [0, 0, 0, 9, 9, 9]}}),
        "one side dynamic": (identity_network(folder / "half.onnx", dims=["n", 3, "h", 64]),
                             "one side dynamic.* no size to run at is given: set model_options input_size", {}),
        "unknown operator": (graph_file(folder / "custom.onnx", [helper.make_node("Frobnicate", ["x"], ["y"],
                                                                                  domain="com.example")],
                                        [x], [y], domains=[("com.example", 1)]),
                             "ONNX Runtime cannot load the network: .*Frobnicate", {}),
        "future opset": (graph_file(folder / "future.onnx", [helper.make_node("Identity", ["x"], ["y"])], [x], [y],
                                    opset=99), "ONNX Runtime cannot load the network: .*opset", {}),
        "external weights elsewhere": (_external(folder), "keeps weights in a file outside its own folder", {}),
        "unreadable metadata": (identity_network(folder / "meta.onnx", metadata={"mean": SECRET}),
                                "the file's metadata 'mean' is unreadable", {}),
    }


def _external(folder: Path) -> Path:
    weight = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    return graph_file(folder / "external.onnx", [helper.make_node("Conv", ["x", "w"], ["y"])],
                      [tensor("x", ["n", 3, "h", "w"])], [tensor("y", ["n", 3, "h", "w"])], initializers=[weight])


def test_each_bad_file_is_refused_at_load_with_a_clear_bounded_error(tmp_path: Path) -> None:
    for name, (path, message, settings) in _bad_files(tmp_path).items():
        with pytest.raises(OnnxContractError, match=message) as caught:
            _load(path, **settings)
        text = str(caught.value)
        assert len(text) <= 700, name
        assert SECRET not in text, name


def test_a_good_file_loads_beside_the_bad_ones(tmp_path: Path) -> None:
    """The checks refuse what is wrong, not everything: a plain 3-class identity and a 5-class conv."""
    assert len(_load(identity_network(tmp_path / "ok.onnx")).class_names) == 3
    assert len(_load(_conv(tmp_path / "five.onnx", 5)).class_names) == 5
    half = identity_network(tmp_path / "half.onnx", dims=["n", 3, "h", 64])
    assert _load(half, model_options={"input_size": [48, 64]}).config.inference_size == (48, 64)
    assert _load(half, inference_size=(40, 64)).config.inference_size == (40, 64)


def test_the_graph_is_read_without_weights(tmp_path: Path) -> None:
    path = export(TinySeg(classes=4), tmp_path / "tiny.onnx", (32, 48), dynamic=False, input_name="pixels",
                  output_name="scores", metadata={"mean": "[0.5, 0.5, 0.5]", "producer": "x" * 100})
    graph = read_graph(path)
    assert (graph.input_name, graph.output_name, graph.input_type) == ("pixels", "scores", "float32")
    assert (graph.batch, graph.fixed_size, graph.output_dims) == (1, (32, 48), (1, 4, 16, 24))
    assert graph.parameters == sum(p.numel() for p in TinySeg(classes=4).parameters())
    assert graph.metadata == {"mean": "[0.5, 0.5, 0.5]"}  # only the contract's keys are kept


@pytest.mark.parametrize(("options", "message"), [
    ({"mean": [0.5, 0.5]}, "mean must be 3 finite numbers"),
    ({"std": [0.2, 0.0, 0.2]}, "std must be > 0"),
    ({"std": [58.4, 57.1, 57.4]}, "divide 0..255 values"),
    ({"channel_order": "yuv"}, "channel_order must be one of rgb, bgr"),
    ({"input_size": [0, 64]}, "input_size must be"),
    ({"output": "scores"}, "output must be one of logits, probabilities, labels"),
    ({"classes": ["ok", "bad\nname"]}, "printable"),
    ({"palette": [0, 0, 300]}, "integers 0..255"),
    ({"crop": 1}, "unknown option"),
])
def test_bad_options_are_named_before_any_file_is_opened(options: dict, message: str) -> None:
    problem = options_problem(options)
    assert problem is not None and message in problem
    assert options_problem({"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "channel_order": "bgr",
                            "input_size": [512, 1024], "output": "labels", "classes": ["a", "b"],
                            "palette": [0, 0, 0, 255, 255, 255]}) is None


def test_the_tensorrt_engine_of_a_file_is_keyed_by_its_content_and_built_for_its_input(tmp_path: Path) -> None:
    """What can be checked without a GPU: the cache key and the provider's optimisation profile."""
    from seg_perception.backends.cache import file_sha256
    from seg_perception.backends.onnx_model import load_onnx_model, tensorrt_key, tensorrt_providers

    path = export(TinySeg(classes=4), tmp_path / "tiny.onnx", (32, 48), dynamic=False, input_name="pixels")
    contract = load_onnx_model(EngineConfig(model="onnx", weights=str(path), device="cpu")).contract
    key = tensorrt_key(contract, {}, file_sha256(path), torch.device("cpu"), fp16=True)
    digest = f"file:{file_sha256(path)}"
    assert (key.kind, key.model, key.input_size, key.weights) == ("tensorrt", "onnx", "32x48", digest)
    assert "fp16=True" in key.extra and tensorrt_key(contract, {}, "other", torch.device("cpu"), True) != key
    name, options = tensorrt_providers(contract, tmp_path / "engines", fp16=True)[0]
    assert name == "TensorrtExecutionProvider" and options["trt_fp16_enable"]
    assert options["trt_profile_min_shapes"] == options["trt_profile_max_shapes"] == "pixels:1x3x32x48"
    assert options["trt_engine_cache_path"] == str(tmp_path / "engines")


def test_the_tensorrt_engine_folder_is_cached_found_again_and_rebuilt_once_when_it_disagrees(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TensorRT cache logic run on the CPU: ONNX Runtime without the TensorRT provider falls
    back to the CPU provider, so only the provider check is lifted."""
    from seg_perception.backends import onnx_model
    from seg_perception.backends import tensorrt_backend as trt
    from seg_perception.backends.parity import ParityReport

    monkeypatch.setattr(trt, "_require_tensorrt_provider", lambda network: None)
    path = export(TinySeg(classes=4), tmp_path / "tiny.onnx", (32, 48), dynamic=False)
    config = EngineConfig(model="onnx", weights=str(path), device="cpu", cache_dir=str(tmp_path / "cache"))
    model = onnx_model.load_onnx_model(config)
    cpu = torch.device("cpu")
    network = onnx_model.build_onnx_file_network(model, config, cpu, "fp32", "tensorrt")
    assert "probe vs CPU fp32: label agreement 100.00 %" in network.origin and network.release_size == (32, 48)
    folders = [p for p in (tmp_path / "cache" / "tensorrt").iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0].parent / (folders[0].name + ".json")).exists()
    onnx_model.build_onnx_file_network(model, config, cpu, "fp32", "tensorrt")
    assert [p for p in (tmp_path / "cache" / "tensorrt").iterdir() if p.is_dir()] == folders
    failing = iter([ParityReport(0.1, 0.0, 100)])
    real_probe = onnx_model._probe
    monkeypatch.setattr(onnx_model, "_probe", lambda net, m: next(failing, None) or real_probe(net, m))
    network = onnx_model.build_onnx_file_network(model, config, cpu, "fp32", "tensorrt")
    assert "label agreement 100.00 %" in network.origin  # evicted, rebuilt, then agreed
