"""The export cache is trusted only on proof, bounded in size, never holds random weights, and its
folder is set at launch only.

An entry is served when its sidecar records the requested key, the file's SHA-256 is the one
recorded when it was exported, its ONNX metadata names the requested network, and a parity probe
(one deterministic frame through ONNX Runtime and PyTorch) agrees. The attacks below each beat
the checks before the one that catches them: a file copied over an entry, the sidecar rewritten
to its digest, the metadata forged, a network with other classes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from rclpy.parameter import Parameter
from reliability_support import FakeEngine, NodeHarness

from seg_perception.backends.cache import ArtifactCache, CacheKey, content_sha256
from seg_perception.backends.export import read_metadata
from seg_perception.backends.parity import (
    CACHE_MIN_AGREEMENT,
    label_parity,
    logits_parity,
    parity_probe,
    probe_input,
)
from seg_perception.cli import main
from seg_perception.diagnostics import engine_report
from seg_perception.engine import EngineConfig, SegmentationEngine
from seg_perception.models import build_model
from seg_perception.normalization import IMAGENET

SHIPPED = "synthetic_street"


def _ort(cache: Path, weights: str, **kwargs: Any) -> SegmentationEngine:
    return SegmentationEngine(EngineConfig(device="cpu", precision="fp32", backend="onnxruntime",
                                           cache_dir=str(cache), weights=weights, **kwargs))


def _random_weights(path: Path, seed: int, num_classes: int = 19) -> str:
    torch.manual_seed(seed)
    torch.save(build_model("regseg", num_classes).state_dict(), path)
    return str(path)


def _street(engine: SegmentationEngine) -> np.ndarray:
    from seg_perception.backends.parity import probe_frame

    return engine.infer(probe_frame(96, 160)).labels


@pytest.fixture(scope="module")
def reference() -> SegmentationEngine:
    return SegmentationEngine(EngineConfig(device="cpu", precision="fp32", backend="torch", weights=SHIPPED))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Exported once: a cache holding the shipped network, another network's export, and a
    7-class network's export."""
    root = tmp_path_factory.mktemp("exports")
    weights = {"other": _random_weights(root / "other.pt", seed=1),
               "seven": _random_weights(root / "seven.pt", seed=2, num_classes=7)}
    return {"cache": _ort(root / "cache", SHIPPED)._forward.path.parents[1],
            "other": _ort(root / "other", weights["other"])._forward.path,
            "seven": _ort(root / "seven", weights["seven"], num_classes=7)._forward.path}


@pytest.fixture
def planted(tmp_path: Path, exported: dict[str, Path]) -> dict[str, Path]:
    """A private copy of the cache holding the shipped network's export; the others to plant."""
    cache = shutil.copytree(exported["cache"], tmp_path / "cache")
    entry = next((cache / "onnx").glob("*.onnx"))
    return {"cache": cache, "entry": entry, "other": exported["other"], "seven": exported["seven"]}


def _forge(entry: Path, network: bytes, metadata_from: Path | None = None) -> None:
    """Write ``network`` over ``entry`` as a careful attacker would: with the entry's own metadata
    (when ``metadata_from`` is given) and the sidecar's digest rewritten to match the new bytes."""
    proto = onnx.load_from_string(network)
    if metadata_from is not None:
        del proto.metadata_props[:]
        for key, value in read_metadata(metadata_from).items():
            entry_prop = proto.metadata_props.add()
            entry_prop.key, entry_prop.value = key, value
    entry.write_bytes(proto.SerializeToString())
    sidecar = entry.with_name(entry.name + ".json")
    record = json.loads(sidecar.read_text())
    record["sha256"] = content_sha256(entry)
    sidecar.write_text(json.dumps(record))


def _assert_rebuilt(engine: SegmentationEngine, reference: SegmentationEngine, why: str) -> None:
    artifact = engine.description["artifact"]
    assert not engine._forward.cache_hit
    assert "rebuilt" in artifact and why in artifact, artifact
    assert (_street(engine) == _street(reference)).mean() >= 0.999
    shown = engine_report(stages={}, engine=engine.description)  # the node's /diagnostics engine status
    assert why in shown.values["artifact"]


def test_a_verified_entry_is_served_and_says_so(planted: dict[str, Path], reference: SegmentationEngine,
                                               caplog: pytest.LogCaptureFixture) -> None:
    engine = _ort(planted["cache"], SHIPPED)
    assert engine._forward.cache_hit and engine._forward.path == planted["entry"]
    assert (_street(engine) == _street(reference)).mean() >= 0.999
    assert engine.description["artifact"].startswith("cache hit, verified")
    assert "unusable" not in caplog.text


def test_a_different_network_copied_over_an_entry_is_rebuilt_and_the_engine_says_why(
        planted: dict[str, Path], reference: SegmentationEngine, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copyfile(planted["other"], planted["entry"])
    _assert_rebuilt(_ort(planted["cache"], SHIPPED), reference, "content digest")
    assert "unusable" in caplog.text  # logged too


def test_a_planted_file_with_a_rewritten_sidecar_is_caught_by_its_metadata(
        planted: dict[str, Path], reference: SegmentationEngine) -> None:
    _forge(planted["entry"], planted["other"].read_bytes())
    _assert_rebuilt(_ort(planted["cache"], SHIPPED), reference, "ONNX metadata does not match (cache_key)")


def test_a_planted_file_with_forged_metadata_and_sidecar_fails_the_parity_probe(
        planted: dict[str, Path], reference: SegmentationEngine) -> None:
    original = planted["entry"].with_name("original.onnx")
    shutil.copyfile(planted["entry"], original)
    _forge(planted["entry"], planted["other"].read_bytes(), metadata_from=original)
    _assert_rebuilt(_ort(planted["cache"], SHIPPED), reference, "parity probe")


def test_a_7_class_network_under_the_right_name_is_rebuilt(
        planted: dict[str, Path], reference: SegmentationEngine) -> None:
    original = planted["entry"].with_name("original.onnx")
    shutil.copyfile(planted["entry"], original)
    _forge(planted["entry"], planted["seven"].read_bytes(), metadata_from=original)
    _assert_rebuilt(_ort(planted["cache"], SHIPPED), reference, "outputs 7 classes, expected 19")


def test_a_tampered_file_is_caught_with_its_good_sidecar_and_by_the_probe_with_a_rewritten_one(
        planted: dict[str, Path], reference: SegmentationEngine) -> None:
    proto = onnx.load(str(planted["entry"]))
    bias = next(t for t in proto.graph.initializer if t.name.endswith("classifier.bias"))
    values = numpy_helper.to_array(bias).copy()
    values[0] += 50.0  # every pixel becomes class 0: valid file, same metadata, other network
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    tampered = proto.SerializeToString()
    planted["entry"].write_bytes(tampered)
    _assert_rebuilt(_ort(planted["cache"], SHIPPED), reference, "content digest")
    _forge(planted["entry"], tampered)  # the sidecar now vouches for the tampered bytes
    _assert_rebuilt(_ort(planted["cache"], SHIPPED), reference, "parity probe")


# -- the parity functions ---------------------------------------------------------------------------
def test_label_parity_reports_agreement_and_mean_iou() -> None:
    reference = np.array([[0, 0, 1, 1]])
    report = label_parity(np.array([[0, 1, 1, 1]]), reference)
    assert report.agreement == pytest.approx(0.75)
    assert report.mean_iou == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert report.passed(0.75) and not report.passed(0.76)
    assert label_parity(reference, reference).mean_iou == 1.0
    assert "shape" in label_parity(np.zeros((2, 2)), reference).problem


def test_logits_parity_refuses_another_class_count_and_probe_survives_a_failing_network() -> None:
    reference = torch.randn(1, 19, 8, 8)
    assert logits_parity(reference.clone(), reference).agreement == 1.0
    assert "outputs 7 classes, expected 19" in logits_parity(torch.randn(1, 7, 8, 8), reference).problem
    model = build_model("regseg").eval()

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no kernel")

    report = parity_probe(broken, model, probe_input((64, 96), IMAGENET))
    assert not report.passed(0.0) and "failed on the probe frame: RuntimeError" in report.problem
    assert parity_probe(model, model, probe_input((64, 96), IMAGENET)).agreement == 1.0
    assert 0.5 < CACHE_MIN_AGREEMENT < 1.0


# -- size cap, random weights, restart-only folder ---------------------------------------------------
def _key(i: int) -> CacheKey:
    return CacheKey("onnx", f"m{i}", "v", 19, "{}", f"file:{i}", "dynamic", "test")


def test_the_cache_evicts_the_least_recently_used_entries_past_its_cap(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path, max_mb=1)
    write = lambda tmp: tmp.write_bytes(b"x" * 400_000)  # noqa: E731
    first, second = cache.store(_key(0), ".onnx", write), cache.store(_key(1), ".onnx", write)
    for age, path in ((300, first), (200, second)):  # both stored a while ago, the first earlier
        os.utime(cache.sidecar(path), (os.path.getmtime(path) - age,) * 2)
    foreign = tmp_path / "onnx" / "notes.txt"
    foreign.write_text("not ours")
    stale = tmp_path / "onnx" / ".m9.onnx.1.abc.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (1, 1))
    assert cache.lookup(_key(0), ".onnx") == first  # used now: the second is the least recent
    third = cache.store(_key(2), ".onnx", write)
    assert cache.lookup(_key(1), ".onnx") is None and not second.exists()
    assert first.exists() and third.exists() and cache.total_bytes() <= 1 << 20
    assert foreign.exists() and not stale.exists()  # other files stay; crashed builds' leftovers go
    assert cache.evictions == []  # size evictions are not trust failures


def test_random_weights_and_a_zero_cap_write_nothing_to_disk(tmp_path: Path, reference: SegmentationEngine) -> None:
    cache = tmp_path / "cache"
    random_engine = _ort(cache, "")
    assert "in memory only (random weights are never cached)" in random_engine.description["artifact"]
    uncached = _ort(cache, SHIPPED, cache_max_mb=0)
    assert "in memory only (cache_max_mb is 0)" in uncached.description["artifact"]
    assert (_street(uncached) == _street(reference)).mean() >= 0.999
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_export_of_random_weights_goes_to_out_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    args = ["export", "--model", "regseg", "--size", "64x128", "--cache-dir", str(cache)]
    assert main(args) == 2
    assert "never cached" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "random.onnx")]) == 0
    assert read_metadata(tmp_path / "random.onnx")["weights"] == "(random init)"
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_cache_dir_is_refused_at_run_time_with_the_reason(tmp_path: Path) -> None:
    target = tmp_path / "planted_here"
    with NodeHarness(engine_factory=FakeEngine) as harness:
        result = harness.node.set_parameters([Parameter("cache_dir", value=str(target))])[0]
    assert not result.successful and "cache_dir takes effect only on restart" in result.reason
    assert not target.exists()


def test_tensorrt_engine_folders_are_recorded_found_again_and_never_written_for_random_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TensorRT cache logic, run here on the CPU: ONNX Runtime without the TensorRT provider
    falls back to the CPU provider, so only the provider check is lifted."""
    from dataclasses import replace

    from seg_perception.backends import tensorrt_backend as trt
    from seg_perception.backends.export import ExportSpec
    from seg_perception.models import load_checkpoint

    monkeypatch.setattr(trt, "_require_tensorrt_provider", lambda network: None)
    weights = _random_weights(tmp_path / "w.pt", seed=3)
    model = build_model("regseg").eval()
    load_checkpoint(model, weights)
    spec = ExportSpec("regseg", model.variant, 19, {}, weights, (64, 96))
    cache, cpu = ArtifactCache(tmp_path / "cache"), torch.device("cpu")
    trt.build_tensorrt_network(model, spec, cpu, cache, False, (64, 96))
    trt.build_tensorrt_network(model, spec, cpu, cache, False, None)
    folders = sorted(p for p in (tmp_path / "cache" / "tensorrt").iterdir() if p.is_dir())
    assert len(folders) == 2 and all(cache.sidecar(folder).exists() for folder in folders)
    built: list[object] = []
    monkeypatch.setattr(trt, "_build_engine", lambda *args: built.append(args))
    again = ArtifactCache(tmp_path / "cache")
    trt.build_tensorrt_network(model, spec, cpu, again, False, (64, 96))
    trt.build_tensorrt_network(model, spec, cpu, again, False, None)
    assert built == [] and again.evictions == []  # both engine folders found again, none rebuilt
    random_cache = tmp_path / "random"
    network = trt.build_tensorrt_network(model, replace(spec, weights="", size=(32, 160)), cpu,
                                         ArtifactCache(random_cache), False, (32, 160))
    assert "in memory only" in network.origin and network.release_size == (32, 160)
    assert not [p for p in random_cache.rglob("*") if p.is_file()]
    assert trt.tensorrt_provider(None, True, None)[0][1]["trt_engine_cache_enable"] is False
