"""The GPU benchmark scripts (bench/gpu_pipeline.py, bench/node_latency.py) and the engine's
compile modes, exercised on the CPU at tiny sizes so a GPU run only has to run them.

Tests marked ``cuda`` need a GPU and are skipped without one; bench/run_gpu_session.sh runs them first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, reference
from torch import nn

from seg_perception.cli import build_parser
from seg_perception.cli import main as cli_main
from seg_perception.engine import EngineConfig, EngineConfigError, OutputRequest, SegmentationEngine
from seg_perception.models import build_model, list_models

sys.path.insert(0, str(REPO_ROOT / "bench"))

import gpu_pipeline
import node_latency

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GOLDEN = "regseg_exp48_decoder26_cityscapes_random_state.pt"


# -- gpu_pipeline: end to end on the CPU ---------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    weights = reference("regseg", GOLDEN)
    out = tmp_path_factory.mktemp("bench") / "pipeline.json"
    argv = ["--device", "cpu", "--sizes", "64x128", "--modes", "naive,engine", "--iterations", "3",
            "--throughput-frames", "4", "--naive-iterations", "2", "--warmup", "1", "--frames", "3",
            "--weights", str(weights), "--no-probe", "--out", str(out)]
    assert gpu_pipeline.main(argv) == 0
    return json.loads(out.read_text())


def test_pipeline_naive_and_engine_agree_with_fp32_reference(pipeline_report: dict) -> None:
    (run,) = pipeline_report["runs"]
    assert run["model"] == "regseg" and run["size"] == [64, 128] and run["weights"].endswith(GOLDEN)
    for mode in ("naive", "engine"):
        assert run["modes"][mode]["agreement"]["mean"] >= 0.995, mode
        assert run["modes"][mode]["agreement"]["min"] >= 0.99, mode


def test_pipeline_report_has_every_measurement(pipeline_report: dict) -> None:
    assert pipeline_report["schema"] == "gpu_pipeline/1"
    assert {"torch", "python"} <= set(pipeline_report["machine"])
    (run,) = pipeline_report["runs"]
    engine = run["modes"]["engine"]
    for key in ("latency_ms", "wall_ms", "submit_host_ms", "throughput_fps", "overlap_ratio", "stages_ms",
                "setup_s", "first_frame_ms", "engine"):
        assert key in engine, key
    assert engine["latency_ms"]["p50"] > 0 and engine["throughput_fps"] > 0
    assert engine["latency_ms"]["p50"] <= engine["latency_ms"]["p99"]
    assert engine["throughput_depth"] == 2 and run["modes"]["naive"]["throughput_depth"] == 1
    assert set(engine["stages_ms"]) == {"upload", "preprocess", "inference", "postprocess", "download"}
    assert "targets" not in run  # targets are for 1024x2048 only
    assert run["cost"]["gflops"] > 0


def test_strict_fp32_restores_tf32_flags() -> None:
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with gpu_pipeline.strict_fp32():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_a_failing_mode_is_recorded_and_the_others_still_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("capture failed")

    monkeypatch.setattr(gpu_pipeline, "make_pipeline", broken)
    args = gpu_pipeline.parse_args(["--device", "cpu", "--modes", "engine", "--no-probe"])
    frames = gpu_pipeline.make_frames(32, 64, count=1)
    result = gpu_pipeline.run_mode("engine", nn.Identity(), ("regseg", "exp48_decoder26"), frames,
                                   [np.zeros((32, 64), np.uint8)], torch.device("cpu"), args)
    assert result["error"] == "RuntimeError: capture failed" and "traceback" in result


# -- gpu_pipeline: measurement helpers -----------------------------------------------------------
class _FakePending:
    def __init__(self, log: dict) -> None:
        self.log, self.done = log, False
        log["in_flight"] += 1
        log["max"] = max(log["max"], log["in_flight"])

    def result(self) -> _FakePending:
        if not self.done:
            self.done = True
            self.log["in_flight"] -= 1
            self.log["results"] += 1
        return self


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_throughput_keeps_at_most_depth_frames_in_flight(depth: int) -> None:
    log = {"in_flight": 0, "max": 0, "results": 0}
    fps = gpu_pipeline.measure_throughput(lambda frame: _FakePending(log), [np.zeros(1)], 10, depth)
    assert log["max"] == depth and log["results"] == 10 and log["in_flight"] == 0 and fps > 0


def test_throughput_rejects_zero_depth() -> None:
    with pytest.raises(ValueError, match="depth"):
        gpu_pipeline.measure_throughput(lambda frame: None, [np.zeros(1)], 1, 0)


def test_label_agreement() -> None:
    a = np.zeros((4, 5), np.uint8)
    b = a.copy()
    b[0, :2] = 1  # 2 of 20 pixels differ in the second frame
    agreement = gpu_pipeline.label_agreement([a, b], [a, a])
    assert agreement == {"mean": pytest.approx(0.95), "min": pytest.approx(0.9)}
    with pytest.raises(ValueError, match="shape"):
        gpu_pipeline.label_agreement([a], [np.zeros((5, 4), np.uint8)])


def _mode(p50: float, fps: float, agreement: float = 1.0) -> dict:
    return {"latency_ms": {"p50": p50}, "overlap_ratio": fps * p50 / 1e3, "agreement": {"mean": agreement}}


def test_targets_are_judged_against_the_stated_figures() -> None:
    modes = {"naive": _mode(30.0, 33.0), "engine": _mode(4.0, 400.0, 0.997),
             "engine_cuda_graph": _mode(3.0, 300.0, 0.996), "engine_torch_compile": {"error": "x"}}
    targets = gpu_pipeline.evaluate_targets(modes)
    assert targets["engine_p50_ms"]["met"] and targets["engine_p50_ms"]["value"] == 4.0
    assert targets["compiled_p50_ms"]["met"] and targets["compiled_p50_ms"]["value"] == 3.0
    assert targets["speedup_vs_naive_p50"]["value"] == pytest.approx(7.5) and targets["speedup_vs_naive_p50"]["met"]
    assert targets["overlap_ratio"]["value"] == pytest.approx(1.6) and targets["overlap_ratio"]["met"]
    assert targets["agreement"]["value"] == pytest.approx(0.996) and targets["agreement"]["met"]
    slow = gpu_pipeline.evaluate_targets({"naive": _mode(10.0, 100.0), "engine": _mode(6.0, 170.0, 0.99)})
    assert not slow["engine_p50_ms"]["met"] and not slow["speedup_vs_naive_p50"]["met"]
    assert not slow["overlap_ratio"]["met"] and not slow["agreement"]["met"]
    assert slow["compiled_p50_ms"]["met"] is None  # not measured is not a failure nor a pass


def test_regseg_cost_matches_the_reference_flop_count() -> None:
    cost = gpu_pipeline.model_cost("regseg", "exp48_decoder26", 1024, 2048)
    assert cost["gflops"] == pytest.approx(76.706373120, abs=1e-6)  # FACTS.md, FlopCounterMode
    assert cost["weights_mb_fp16"] == pytest.approx(cost["weights_mb_fp32"] / 2)
    assert 0 < cost["leaf_output_mb_fp16"] < cost["leaf_io_mb_fp16"]
    # The final logits alone (19 x 1024 x 2048 in FP16) are part of what the forward writes.
    assert cost["leaf_output_mb_fp16"] > 19 * 1024 * 2048 * 2 / 1e6


def test_parse_models() -> None:
    pairs = gpu_pipeline.parse_models("all")
    assert pairs == [(n, v) for n, e in list_models().items() for v in e.variants]
    assert gpu_pipeline.parse_models("regseg") == [("regseg", "exp48_decoder26")]
    assert gpu_pipeline.parse_models("regseg:exp53_decoder29") == [("regseg", "exp53_decoder29")]
    with pytest.raises(SystemExit, match="unknown model"):
        gpu_pipeline.parse_models("nope")
    with pytest.raises(SystemExit, match="unknown variant"):
        gpu_pipeline.parse_models("regseg:nope")


def test_weights_apply_only_to_their_model(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    args = gpu_pipeline.parse_args(["--models", "all", "--weights", str(weights), "--no-probe"])
    assert args.weights_for(("regseg", "exp48_decoder26")) == str(weights)
    assert args.weights_for(("regseg", "exp53_decoder29")) is None
    with pytest.raises(SystemExit, match="does not exist"):
        gpu_pipeline.parse_args(["--weights", str(tmp_path / "missing.pt")])


# -- engine compile modes --------------------------------------------------------------------------
def test_compile_mode_is_validated() -> None:
    with pytest.raises(EngineConfigError, match="compile must be one of"):
        EngineConfig(device="cpu", precision="fp32", compile="tensorrt").validate()
    with pytest.raises(EngineConfigError, match="cuda_graph needs a CUDA device"):
        EngineConfig(device="cpu", precision="fp32", compile="cuda_graph").validate()
    EngineConfig(device="cpu", precision="fp32", compile="torch_compile").validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto resolves to CUDA here")
def test_cuda_graph_on_auto_without_a_gpu_is_refused() -> None:
    with pytest.raises(EngineConfigError, match="cuda_graph"):
        EngineConfig(device="auto", compile="cuda_graph").validate()


def test_bench_cli_takes_compile_and_reports_a_cpu_cuda_graph_error(capsys: pytest.CaptureFixture) -> None:
    assert build_parser().parse_args(["bench", "--compile", "cuda_graph"]).compile == "cuda_graph"
    assert build_parser().parse_args(["bench"]).compile == "none"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--compile", "tensorrt"])
    assert cli_main(["bench", "--device", "cpu", "--compile", "cuda_graph", "--size", "32x64"]) == 2
    assert "cuda_graph needs a CUDA device" in capsys.readouterr().err


class _Tiny(nn.Module):
    """Conv-BN-ReLU-classifier with a stride, so the compiled graph has the usual ops."""

    output_stride = 2

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(inplace=True), nn.Conv2d(8, 19, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.body(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


def test_torch_compile_engine_matches_eager_on_cpu() -> None:
    torch.manual_seed(0)
    model = _Tiny().eval()
    with torch.no_grad():
        model.body[1].running_var.uniform_(0.5, 1.5)
    frame = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    eager = SegmentationEngine(EngineConfig(device="cpu", precision="fp32"), model=model)
    compiled = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", compile="torch_compile"), model=model)
    assert compiled.description["compile"] == "torch_compile"
    assert compiled._forward is not compiled.model  # really compiled, not the eager module
    expected = eager.infer(frame, OutputRequest(confidence=True))
    result = compiled.infer(frame, OutputRequest(confidence=True))
    assert (result.labels == expected.labels).mean() > 0.999
    assert np.abs(result.confidence.astype(int) - expected.confidence.astype(int)).max() <= 1


# -- engine compile modes on the GPU (run by bench/run_gpu_session.sh) ------------------------------
@pytest.fixture(scope="module")
def cuda_regseg() -> nn.Module:
    torch.manual_seed(0)
    return build_model("regseg").eval()


def _engines(model: nn.Module) -> tuple[SegmentationEngine, SegmentationEngine]:
    eager = SegmentationEngine(EngineConfig(device="cuda"), model=model)
    graph = SegmentationEngine(EngineConfig(device="cuda", compile="cuda_graph"), model=model)
    return eager, graph


@needs_cuda
def test_cuda_graph_matches_eager_engine(cuda_regseg: nn.Module) -> None:
    eager, graph = _engines(cuda_regseg)
    frames = gpu_pipeline.make_frames(128, 256, count=3)
    request = OutputRequest(color=True, overlay=True, confidence=True, overlay_alpha=0.3)
    for frame in frames:
        a, b = eager.infer(frame, request), graph.infer(frame, request)
        assert (a.labels == b.labels).mean() > 0.999
        assert np.array_equal(b.color[b.labels == a.labels], a.color[b.labels == a.labels])
        assert np.abs(a.confidence.astype(int) - b.confidence.astype(int)).max() <= 1
        assert set(b.timings_ms) == set(a.timings_ms) and all(v >= 0 for v in b.timings_ms.values())


@needs_cuda
def test_cuda_graph_recaptures_per_shape_and_request(cuda_regseg: nn.Module) -> None:
    eager, graph = _engines(cuda_regseg)
    for shape, request in [((128, 256), OutputRequest()), ((96, 160), OutputRequest()),
                           ((128, 256), OutputRequest(color=True)), ((128, 256), OutputRequest())]:
        frame = gpu_pipeline.make_frames(*shape, count=1)[0]
        result = graph.infer(frame, request)
        assert result.labels.shape == shape
        assert (result.labels == eager.infer(frame, request).labels).mean() > 0.999
    assert len(graph._captured) == 3


@needs_cuda
def test_cuda_graph_frames_in_flight_keep_their_own_results(cuda_regseg: nn.Module) -> None:
    _, graph = _engines(cuda_regseg)
    frames = gpu_pipeline.make_frames(128, 256, count=4)
    alone = [graph.infer(f).labels for f in frames]
    pending = [graph.submit(f) for f in frames]  # all queued before any is collected
    for expected, p in zip(alone, pending, strict=True):
        assert np.array_equal(p.result().labels, expected)


@needs_cuda
def test_cuda_batches_equal_single_frames_and_device_frames_skip_the_upload(cuda_regseg: nn.Module) -> None:
    eager, graph = _engines(cuda_regseg)
    frames = gpu_pipeline.make_frames(128, 256, count=3) + gpu_pipeline.make_frames(96, 160, count=1)
    requests = [OutputRequest(), OutputRequest(color=True), OutputRequest(overlay=True, overlay_alpha=0.3),
                OutputRequest(confidence=True)]
    for engine in (eager, graph):
        for _ in range(2):  # the second round replays the graphs captured for the first
            results = engine.infer_batch(frames, requests)
        assert [r.batch_size for r in results] == [3, 3, 3, 1]
        for frame, request, result in zip(frames, requests, results, strict=True):
            alone = eager.infer(frame, request)
            assert (result.labels == alone.labels).mean() > 0.999
            assert (result.color is None) == (alone.color is None)
            assert result.queue_ms >= 0 and all(v >= 0 for v in result.timings_ms.values())
    on_device = torch.from_numpy(frames[0]).cuda()
    result = eager.infer(on_device)
    assert (result.labels == eager.infer(frames[0]).labels).mean() > 0.999
    assert result.timings_ms["upload"] < 0.05  # nothing copied


@needs_cuda
def test_pipeline_cuda_modes_at_small_size(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    argv = ["--sizes", "128x256", "--modes", "naive,engine,engine_cuda_graph", "--iterations", "5",
            "--throughput-frames", "5", "--naive-iterations", "3", "--warmup", "1", "--frames", "2",
            "--no-probe", "--out", str(out)]
    assert gpu_pipeline.main(argv) == 0
    (run,) = json.loads(out.read_text())["runs"]
    for mode in ("engine", "engine_cuda_graph"):
        assert "error" not in run["modes"][mode], run["modes"][mode].get("error")
        assert run["modes"][mode]["timer"] == "cuda_events"
        assert run["modes"][mode]["peak_gpu_memory_mb"] > 0


# -- node_latency: plain logic ---------------------------------------------------------------------
def _phase(rate: float, drops: int, published: int = 100) -> dict:
    return {"rate_hz": rate, "drops": drops, "published": published}


def test_highest_zero_drop_rate() -> None:
    assert node_latency.highest_zero_drop_rate([_phase(30, 0), _phase(45, 0), _phase(60, 3)]) == 45
    assert node_latency.highest_zero_drop_rate([_phase(60, 0), _phase(30, 0)]) == 60  # order-free
    assert node_latency.highest_zero_drop_rate([_phase(30, 1), _phase(45, 0)]) is None  # not monotone: no
    assert node_latency.highest_zero_drop_rate([_phase(30, 0, published=0)]) is None
    assert node_latency.highest_zero_drop_rate([]) is None


def test_sweep_goes_up_and_stops_at_the_first_dropping_rate() -> None:
    tried = []

    def measure(rate: float) -> dict:
        tried.append(rate)
        return _phase(rate, 0 if rate < 60 else 5)

    results = node_latency.sweep_rates(measure, [90, 45, 60, 120])
    assert tried == [45, 60] and [r["rate_hz"] for r in results] == [45, 60]
    tried.clear()
    assert len(node_latency.sweep_rates(measure, [90, 45, 60], stop_after_drop=False)) == 3


def test_summarize_phase_counts_drops_and_duplicates() -> None:
    records = [(0, 10.0), (1, 12.0), (1, 12.5), (3, 20.0)]
    summary = node_latency.summarize_phase(30.0, {"published": 5, "achieved_rate_hz": 29.9}, records)
    assert summary["received"] == 3 and summary["drops"] == 2 and summary["duplicates"] == 1
    assert summary["drop_ratio"] == pytest.approx(0.4)
    assert summary["latency_ms"]["p50"] == pytest.approx(12.25) and summary["latency_ms"]["count"] == 4
    assert node_latency.summarize_phase(30.0, {"published": 3}, [])["latency_ms"] is None


def test_drops_are_attributed_with_the_node_counters() -> None:
    before = {"frames_received": "10", "frames_processed": "9", "dropped_superseded": "1", "input_rate_hz": "30"}
    after = {"frames_received": "108", "frames_processed": "100", "dropped_superseded": "8", "frames_in_flight": "0"}
    delta = node_latency.diagnostics_delta(before, after)
    assert delta == {"frames_received": 98, "frames_processed": 91, "dropped_superseded": 7}
    assert node_latency.attribute_drops(100, 90, delta) == {"input_transport": 2, "node": 7, "output_transport": 1}
    assert node_latency.attribute_drops(100, 90, {}) is None


def test_target_commands() -> None:
    args = node_latency.build_parser().parse_args(
        ["--weights", "/w.pt", "--node-param", "device:=cuda", "--qos", "reliable"])
    node = node_latency.target_command("seg_node", args)
    assert node[1:4] == ["-m", "seg_perception.process", "--ros-args"]
    for param in ("weights:=/w.pt", "device:=cuda", "qos_reliability:=reliable", "image_topic:=camera/image_raw"):
        assert param in node
    relay = node_latency.target_command("relay", args)
    assert "--role" in relay and relay[relay.index("--role") + 1] == "relay"


# -- node_latency: end to end over DDS (relay and seg_node on the CPU, tiny frames) ----------------
@pytest.mark.ros
def test_node_latency_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("rclpy")
    out = tmp_path / "nl.json"
    argv = ["--size", "48x64", "--rate", "10", "--duration", "2", "--relay-duration", "1.5", "--warmup", "1",
            "--sweep", "20", "--sweep-duration", "1", "--sweep-targets", "relay",
            "--node-param", "device:=cpu", "--node-param", "precision:=fp32",
            "--fastdds-profile", str(REPO_ROOT / "config/fastdds_large_images.xml"),
            "--log-dir", str(tmp_path), "--out", str(out)]
    assert node_latency.main(argv) == 0
    report = json.loads(out.read_text())
    relay, node = report["targets"]["relay"], report["targets"]["seg_node"]
    assert relay["main"]["published"] == 15 and relay["main"]["received"] >= 14
    assert [p["rate_hz"] for p in relay["sweep"]] == [10, 20]
    assert node["main"]["published"] == 20 and node["main"]["received"] >= 18
    assert 0 < relay["main"]["latency_ms"]["p50"] < node["main"]["latency_ms"]["p50"] < 2000
    assert node["main"]["node_counters"]["frames_received"] >= node["main"]["received"]
    assert "processing_p50_ms_estimate" in report and relay["exit_code"] == 0 and node["exit_code"] == 0
