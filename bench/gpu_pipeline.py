"""Naive Python pipeline vs our engine vs the engine compiled, on the same frames in one process.

Modes, each fed the same rotating uint8 RGB frames (:func:`seg_perception.benchmark.make_frames`,
varied content, never zeros):

* ``naive``: what a typical Python node does: numpy float conversion and ImageNet normalisation
  on the CPU, a pageable upload, the FP32 eager model (logits upsampled to full resolution),
  argmax on the GPU, int64 labels back to the host;
* ``engine``: :class:`~seg_perception.engine.SegmentationEngine` as the node runs it (pinned
  buffers, uint8 upload, GPU preprocessing, FP16 channels_last, GPU argmax, upload and compute
  streams);
* ``engine_cuda_graph`` / ``engine_torch_compile``: the same with ``EngineConfig.compile``.

Per mode: single-frame latency (host frame in -> host labels out; CUDA events, wall clock as a
cross-check), per-stage engine timings, host time spent in ``submit`` (launch cost), sustained
throughput with ``--depth`` frames in flight, peak GPU memory, and label agreement with a strict
FP32 reference (TF32 off) of the same weights. Give the golden RegSeg weights with ``--weights``
(``../shared/reference/regseg/regseg_exp48_decoder26_cityscapes_random_state.pt`` is used when
present); other models run with seeded random weights.

    python bench/gpu_pipeline.py --models regseg --sizes 1024x2048 512x1024
    python bench/gpu_pipeline.py --models all --sizes 1024x2048 --modes naive,engine,engine_cuda_graph

Prints one markdown table per model and size and writes JSON (after every model, so an
interrupted run keeps what it finished) to ``--out`` (default ``bench/results/gpu_pipeline.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import shlex
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from seg_perception.benchmark import machine_info, make_frames
from seg_perception.engine import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    STAGES,
    EngineConfig,
    OutputRequest,
    SegmentationEngine,
)
from seg_perception.models import build_model, list_models, load_checkpoint
from seg_perception.stats import percentiles

MODES = ("naive", "engine", "engine_cuda_graph", "engine_torch_compile")
ENGINE_COMPILE = {"engine": "none", "engine_cuda_graph": "cuda_graph", "engine_torch_compile": "torch_compile"}
GOLDEN_WEIGHTS = REPO_ROOT.parent / "shared/reference/regseg/regseg_exp48_decoder26_cityscapes_random_state.pt"
#: The model the targets are stated for, and the size they hold at.
TARGET_MODEL, TARGET_SIZE = ("regseg", "exp48_decoder26"), (1024, 2048)
TARGETS = {
    "engine_p50_ms": 5.0,
    "compiled_p50_ms": 3.5,
    "speedup_vs_naive_p50": 4.0,
    "overlap_ratio": 1.5,
    "agreement": 0.995,
}


# -- pipelines ----------------------------------------------------------------------------------
class _Done:
    """A finished result with the ``PendingResult.result`` interface (naive mode is synchronous)."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def result(self) -> _Done:
        return self


class NaivePipeline:
    """The baseline: per-frame numpy preprocessing, FP32 eager model, int64 labels downloaded."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.device = device
        self.model = model.eval().to(device, torch.float32)
        self.mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
        self.std = np.asarray(IMAGENET_STD, dtype=np.float32)

    @torch.no_grad()
    def __call__(self, frame: np.ndarray) -> np.ndarray:
        x = (frame.astype(np.float32) / 255.0 - self.mean) / self.std
        tensor = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(self.device)
        logits = self.model(tensor)
        if logits.shape[-2:] != tensor.shape[-2:]:
            logits = F.interpolate(logits, size=tensor.shape[-2:], mode="bilinear", align_corners=False)
        return logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)

    def submit(self, frame: np.ndarray) -> _Done:
        return _Done(self(frame))


class EnginePipeline:
    """The engine behind the same call/submit interface, keeping the last frame's stage timings."""

    def __init__(self, engine: SegmentationEngine) -> None:
        self.engine = engine

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return self.engine.infer(frame).labels

    def submit(self, frame: np.ndarray) -> Any:
        return self.engine.submit(frame)

    def submit_batch(self, frames: Sequence[np.ndarray]) -> list[Any]:
        return self.engine.submit_batch(frames, [OutputRequest()] * len(frames))


# -- measurements -------------------------------------------------------------------------------
def measure_latency(
    pipeline: NaivePipeline | EnginePipeline, frames: Sequence[np.ndarray], iterations: int, cuda: bool
) -> dict[str, Any]:
    """One frame at a time: submit, wait for host labels; CUDA events bracket the whole call.

    The start event is recorded on the (idle) default stream just before the frame is handed
    over and the end event once the labels are on the host, so event time is host-in to host-out
    measured on the GPU clock; the wall clock is kept as a cross-check. ``submit_host_ms`` is the
    host time until ``submit`` returns: the launch cost that stream overlap cannot hide.
    """
    latency, wall, submit_host, queue = [], [], [], []
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    for i in range(iterations):
        frame = frames[i % len(frames)]
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        pending = pipeline.submit(frame)
        t1 = time.perf_counter()
        result = pending.result()
        t2 = time.perf_counter()
        if cuda:
            end.record()
            end.synchronize()
            latency.append(start.elapsed_time(end))
        else:
            latency.append((t2 - t0) * 1e3)
        wall.append((t2 - t0) * 1e3)
        submit_host.append((t1 - t0) * 1e3)
        for stage, ms in getattr(result, "timings_ms", {}).items():
            stages[stage].append(ms)
        if hasattr(result, "queue_ms"):
            queue.append(result.queue_ms)
    report = {
        "latency_ms": percentiles(latency),
        "wall_ms": percentiles(wall),
        "submit_host_ms": percentiles(submit_host),
        "iterations": iterations,
        "timer": "cuda_events" if cuda else "perf_counter",
    }
    if all(stages.values()):
        report["stages_ms"] = {s: percentiles(v) for s, v in stages.items()}
        report["queue_ms"] = percentiles(queue)
    return report


def measure_batches(
    pipeline: EnginePipeline, frames: Sequence[np.ndarray], batch_size: int, iterations: int, depth: int
) -> dict[str, Any]:
    """Batches of ``batch_size`` frames (several cameras) through ``submit_batch``: latency of a
    whole batch (submit to the last frame's labels on the host), per-frame stage figures of the
    group, and frames per second with ``depth`` batches in flight."""
    latency, queue = [], []
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    for i in range(iterations):
        batch = [frames[(i + k) % len(frames)] for k in range(batch_size)]
        t0 = time.perf_counter()
        results = [p.result() for p in pipeline.submit_batch(batch)]
        latency.append((time.perf_counter() - t0) * 1e3)
        if results[0].batch_size != batch_size:
            raise RuntimeError(f"engine ran a batch of {results[0].batch_size}, expected {batch_size}")
        queue.append(results[0].queue_ms)
        for stage, ms in results[0].timings_ms.items():
            stages[stage].append(ms)
    fps = measure_throughput(lambda f: _BatchPending(pipeline.submit_batch([f] * batch_size)), frames,
                             max(2, iterations // 2), depth) * batch_size
    return {"batch_size": batch_size, "latency_ms": percentiles(latency),
            "per_frame_ms_p50": percentiles(latency)["p50"] / batch_size, "queue_ms": percentiles(queue),
            "stages_ms": {s: percentiles(v) for s, v in stages.items()}, "throughput_fps": fps}


class _BatchPending:
    """A submitted batch behind the single-frame ``result()`` interface of measure_throughput."""

    def __init__(self, pending: list[Any]) -> None:
        self.pending = pending

    def result(self) -> list[Any]:
        return [p.result() for p in self.pending]


def measure_throughput(
    submit: Callable[[np.ndarray], Any], frames: Sequence[np.ndarray], count: int, depth: int
) -> float:
    """Frames per second with up to ``depth`` frames in flight (the node keeps 2)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    pending: deque[Any] = deque()
    start = time.perf_counter()
    for i in range(count):
        pending.append(submit(frames[i % len(frames)]))
        while len(pending) >= depth:
            pending.popleft().result()
    while pending:
        pending.popleft().result()
    return count / (time.perf_counter() - start)


def label_agreement(labels: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> dict[str, float]:
    """Fraction of equal pixels over all frames, and the worst single frame."""
    if len(labels) != len(reference) or not labels:
        raise ValueError("need the same, non-zero number of label maps and reference maps")
    per_frame = []
    for a, b in zip(labels, reference, strict=True):
        if a.shape != b.shape:
            raise ValueError(f"label map shape {a.shape} differs from reference {b.shape}")
        per_frame.append(float((a == b).mean()))
    return {"mean": float(np.mean(per_frame)), "min": float(np.min(per_frame))}


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Disable TF32 so the reference is true FP32 (cuDNN convolutions use TF32 by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def model_cost(name: str, variant: str, height: int, width: int, num_classes: int = 19) -> dict[str, float]:
    """FLOPs and an estimate of the bytes an unfused FP16 forward moves, on the meta device.

    ``leaf_io_bytes``: every leaf module reads its input and writes its output once (what eager
    execution does); ``leaf_output_bytes``: outputs only (a lower bound for fully fused code that
    still materialises each layer's result). Weights are counted once.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(name, num_classes, variant).eval()
        x = torch.empty(1, 3, height, width)
    io = {"out": 0, "in": 0}

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        outs = output if isinstance(output, (tuple, list)) else [output]
        io["out"] += sum(t.numel() for t in outs if isinstance(t, torch.Tensor))
        io["in"] += sum(t.numel() for t in inputs if isinstance(t, torch.Tensor))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    for handle in handles:
        handle.remove()
    weights = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()
                                                               if b.is_floating_point())
    return {
        "gflops": counter.get_total_flops() / 1e9,
        "weights_mb_fp32": weights * 4 / 1e6,
        "weights_mb_fp16": weights * 2 / 1e6,
        "leaf_output_mb_fp16": io["out"] * 2 / 1e6,
        "leaf_io_mb_fp16": (io["in"] + io["out"]) * 2 / 1e6,
    }


def probe_machine(device: torch.device) -> dict[str, Any]:
    """The GPU's measured copy bandwidths, FP16 matrix rate and kernel launch cost (a few seconds)."""
    info = _probe(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the probe's buffers are gone with _probe's frame
    return info


def _probe(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {}
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True,
        )
        info["nvidia_smi"] = smi.stdout.strip()
        info["driver"] = smi.stdout.split(",")[1].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        info["driver"] = None
    if device.type != "cuda":
        return info
    props = torch.cuda.get_device_properties(device)
    info.update(sm_count=props.multi_processor_count, memory_gb=props.total_memory / 1e9,
                cudnn=torch.backends.cudnn.version())

    def timed(fn: Callable[[], Any], reps: int = 10) -> float:
        fn()
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / reps

    n = 256 * 2**20
    a, b = torch.empty(n, dtype=torch.uint8, device=device), torch.empty(n, dtype=torch.uint8, device=device)
    info["d2d_read_plus_write_gb_s"] = 2 * n / timed(lambda: b.copy_(a)) / 1e9
    frame = 1024 * 2048 * 3
    pinned = torch.empty(frame, dtype=torch.uint8, pin_memory=True)
    pageable = torch.empty(frame, dtype=torch.uint8)
    dev = torch.empty(frame, dtype=torch.uint8, device=device)
    info["h2d_pinned_6mb_gb_s"] = frame / timed(lambda: dev.copy_(pinned, non_blocking=True)) / 1e9
    info["d2h_pinned_6mb_gb_s"] = frame / timed(lambda: pinned.copy_(dev, non_blocking=True)) / 1e9
    info["h2d_pageable_6mb_gb_s"] = frame / timed(lambda: dev.copy_(pageable)) / 1e9
    m = 8192
    x = torch.randn(m, m, dtype=torch.float16, device=device)
    info["fp16_matmul_tflops"] = 2 * m**3 / timed(lambda: x @ x) / 1e12
    small = torch.zeros(16, device=device)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(2000):
        small.add_(1)
    info["launch_host_us"] = (time.perf_counter() - t0) / 2000 * 1e6
    torch.cuda.synchronize(device)
    return info


# -- one model ---------------------------------------------------------------------------------
def build_reference_model(
    name: str, variant: str, weights: str | None, seed: int = 0, num_classes: int = 19
) -> nn.Module:
    """FP32 CPU model: the given checkpoint, or seeded random weights (same for every mode)."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes, variant).eval()
    if weights:
        load_checkpoint(model, weights)
    return model


def _reset_gpu(device: torch.device) -> float:
    gc.collect()
    if device.type != "cuda":
        return 0.0
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device) / 2**20


def make_pipeline(
    mode: str, model: nn.Module, name: str, variant: str, device: torch.device, weights: str | None,
    num_classes: int = 19,
) -> NaivePipeline | EnginePipeline:
    if mode == "naive":
        return NaivePipeline(copy.deepcopy(model), device)
    precision = "fp16" if device.type == "cuda" else "fp32"
    # Prepared inline (first frame pays for compile/capture, reported as first_frame_ms), so the
    # measured frames are all compiled/captured; the node prepares in the background instead.
    config = EngineConfig(model=name, variant=variant, weights=weights or "", device=device.type,
                          precision=precision, compile=ENGINE_COMPILE[mode], background_prepare=False,
                          num_classes=num_classes)
    return EnginePipeline(SegmentationEngine(config, model=copy.deepcopy(model)))


def run_mode(
    mode: str, model: nn.Module, spec: tuple[str, str], frames: Sequence[np.ndarray],
    reference: Sequence[np.ndarray], device: torch.device, args: argparse.Namespace,
) -> dict[str, Any]:
    """Build, warm up (compile/capture included), then measure one mode; errors are recorded."""
    baseline_mb = _reset_gpu(device)
    cuda = device.type == "cuda"
    try:
        t0 = time.perf_counter()
        pipeline = make_pipeline(mode, model, *spec, device, args.weights_for(spec), args.num_classes)
        first = time.perf_counter()
        pipeline(frames[0])
        first_frame_ms = (time.perf_counter() - first) * 1e3
        for i in range(args.warmup):
            pipeline(frames[i % len(frames)])
        setup_s = time.perf_counter() - t0
        iterations = args.naive_iterations if mode == "naive" else args.iterations
        report = measure_latency(pipeline, frames, iterations, cuda)
        depth = 1 if mode == "naive" else args.depth
        count = args.naive_iterations if mode == "naive" else args.throughput_frames
        report["throughput_fps"] = measure_throughput(pipeline.submit, frames, count, depth)
        report["throughput_depth"] = depth
        report["overlap_ratio"] = report["throughput_fps"] * report["latency_ms"]["p50"] / 1e3
        report["agreement"] = label_agreement([pipeline(f) for f in frames], reference)
        report.update(setup_s=setup_s, first_frame_ms=first_frame_ms)
        if cuda:
            report["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            report["baseline_gpu_memory_mb"] = baseline_mb
        if isinstance(pipeline, EnginePipeline):
            report["engine"] = pipeline.engine.description
            report["batches"] = [measure_batches(pipeline, frames, n, max(3, iterations // 4), depth)
                                 for n in args.batch_sizes if n > 1]
        del pipeline
        return report
    except Exception as exc:  # one failing mode must not lose the others' numbers
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}
    finally:
        _reset_gpu(device)


def run_model(
    spec: tuple[str, str], size: tuple[int, int], device: torch.device, args: argparse.Namespace,
    on_mode_done: Callable[[dict[str, Any]], None] = lambda run: None,
) -> dict[str, Any]:
    """All modes for one model and size; ``on_mode_done`` gets the partial run after each mode."""
    name, variant = spec
    height, width = size
    weights = args.weights_for(spec)
    model = build_reference_model(name, variant, weights, args.seed, args.num_classes)
    trained = bool(weights) and args.weights_trained
    frames = make_frames(height, width, count=args.frames, seed=args.seed)
    reference_pipeline = NaivePipeline(copy.deepcopy(model), device)
    with strict_fp32():
        reference = [reference_pipeline(f) for f in frames]
    del reference_pipeline
    run: dict[str, Any] = {
        "model": name, "variant": variant, "size": [height, width],
        "weights": weights or "(seeded random init)",
        # fp16 agreement means something only with trained weights: random weights give logits
        # of ~1,500 whose near-ties flip in fp16 (98-99 % at 1024x2048 without any bug).
        "agreement_judged": trained,
        "cost": model_cost(name, variant, height, width),
        "modes": {},
    }
    for mode in args.modes:
        print(f"  {name}:{variant} {height}x{width} {mode} ...", flush=True)
        run["modes"][mode] = run_mode(mode, model, spec, frames, reference, device, args)
        if "error" in run["modes"][mode]:
            print(f"    FAILED: {run['modes'][mode]['error']}", flush=True)
        run["speedup_vs_naive_p50"] = speedups(run["modes"])
        if spec == TARGET_MODEL and tuple(size) == TARGET_SIZE:
            run["targets"] = evaluate_targets(run["modes"], agreement_judged=trained)
        on_mode_done(run)
    return run


def speedups(modes: dict[str, dict[str, Any]]) -> dict[str, float]:
    """naive p50 / mode p50 for every mode that ran, when naive ran."""
    naive = modes.get("naive", {})
    if "latency_ms" not in naive:
        return {}
    base = naive["latency_ms"]["p50"]
    return {m: base / r["latency_ms"]["p50"] for m, r in modes.items() if "latency_ms" in r}


def evaluate_targets(
    modes: dict[str, dict[str, Any]], agreement_judged: bool = True
) -> dict[str, dict[str, Any]]:
    """The targets for RegSeg at 1024x2048 (stated for an H100), met or not; the
    agreement is reported but not judged (``met`` None) unless the weights are trained."""
    ok = {m: r for m, r in modes.items() if "latency_ms" in r}
    out: dict[str, dict[str, Any]] = {}

    def check(key: str, value: float | None, met: bool | None, note: str) -> None:
        out[key] = {"target": TARGETS[key], "value": value, "met": met, "note": note}

    engine = ok.get("engine")
    compiled = [ok[m] for m in ("engine_cuda_graph", "engine_torch_compile") if m in ok]
    p50 = engine["latency_ms"]["p50"] if engine else None
    check("engine_p50_ms", p50, None if p50 is None else p50 <= TARGETS["engine_p50_ms"], "engine, ms, <=")
    best = min((r["latency_ms"]["p50"] for r in compiled), default=None)
    check("compiled_p50_ms", best, None if best is None else best <= TARGETS["compiled_p50_ms"],
          "best of cuda_graph / torch_compile, ms, <=")
    if engine and "naive" in ok:
        ratio = ok["naive"]["latency_ms"]["p50"] / p50
        check("speedup_vs_naive_p50", ratio, ratio >= TARGETS["speedup_vs_naive_p50"], "naive p50 / engine p50, >=")
    best_overlap = max((r["overlap_ratio"] for m, r in ok.items() if m != "naive"), default=None)
    check("overlap_ratio", best_overlap,
          None if best_overlap is None else best_overlap >= TARGETS["overlap_ratio"],
          "sustained fps / (1 / p50), best engine mode, >=")
    worst = min((r["agreement"]["mean"] for m, r in ok.items() if m != "naive"), default=None)
    if agreement_judged:
        check("agreement", worst, None if worst is None else worst >= TARGETS["agreement"],
              "lowest engine-mode pixel agreement with strict FP32, trained weights, >=")
    else:
        check("agreement", worst, None, "random weights: for information only (judged with trained weights)")
    return out


# -- output -------------------------------------------------------------------------------------
def format_run(run: dict[str, Any]) -> str:
    """Markdown table for one model and size."""
    h, w = run["size"]
    lines = [
        f"### {run['model']} {run['variant']} {h}x{w} ({run['weights']})",
        "",
        "| mode | p50 ms | p90 ms | p99 ms | wall p50 | submit host p50 | fps (in flight) | fps x p50 "
        "| peak GPU MB | agreement % | speedup |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in run["modes"].items():
        if "error" in r:
            lines.append(f"| {mode} | failed: {r['error'][:80]} |||||||||")
            continue
        lat = r["latency_ms"]
        peak = r.get("peak_gpu_memory_mb")
        lines.append(
            f"| {mode} | {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | {r['wall_ms']['p50']:.2f} "
            f"| {r['submit_host_ms']['p50']:.2f} | {r['throughput_fps']:.1f} ({r['throughput_depth']}) "
            f"| {r['overlap_ratio']:.2f} | {'-' if peak is None else f'{peak:.0f}'} "
            f"| {100 * r['agreement']['mean']:.3f} | {run['speedup_vs_naive_p50'].get(mode, float('nan')):.2f}x |"
        )
    for key, t in run.get("targets", {}).items():
        value = "n/a" if t["value"] is None else f"{t['value']:.4g}"
        verdict = {True: "MET", False: "NOT MET", None: "not measured"}[t["met"]]
        lines.append(f"\ntarget {key}: {value} vs {t['target']} ({t['note']}): {verdict}")
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)


def parse_models(text: str) -> list[tuple[str, str]]:
    """``all`` (every registered model and variant) or ``name[:variant],...`` (default variant)."""
    registry = list_models()
    if text == "all":
        return [(name, v) for name, entry in registry.items() for v in entry.variants]
    specs = []
    for item in text.split(","):
        name, _, variant = item.strip().partition(":")
        if name not in registry:
            raise SystemExit(f"unknown model {name!r}; registered: {', '.join(registry)}")
        variant = variant or registry[name].default_variant
        if variant not in registry[name].variants:
            raise SystemExit(f"unknown variant {variant!r} of {name}; valid: {', '.join(registry[name].variants)}")
        specs.append((name, variant))
    return specs


def parse_size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="regseg", help="'all' or name[:variant],... (default regseg)")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(1024, 2048), (512, 1024)])
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--weights", default=None,
                   help="checkpoint for --weights-model (default: the golden RegSeg weights if present)")
    p.add_argument("--weights-model", default="regseg:exp48_decoder26",
                   help="name:variant the --weights file belongs to; other models use random weights")
    p.add_argument("--weights-trained", action="store_true",
                   help="the --weights are trained: judge the fp16 agreement (random weights: information only)")
    p.add_argument("--num-classes", type=int, default=19, help="classes of the --weights checkpoint")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1],
                   help="also measure submit_batch with these batch sizes (engine modes; 1 = single frames only)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--iterations", type=int, default=200, help="latency frames per engine mode")
    p.add_argument("--throughput-frames", type=int, default=300)
    p.add_argument("--naive-iterations", type=int, default=50, help="latency and throughput frames, naive")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--frames", type=int, default=8, help="rotating input buffers")
    p.add_argument("--depth", type=int, default=2, help="frames in flight for throughput")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--no-probe", action="store_true", help="skip the bandwidth/matmul/launch probe")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/gpu_pipeline.json")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        raise SystemExit(f"unknown mode(s) {', '.join(unknown)}; valid: {', '.join(MODES)}")
    args.specs = parse_models(args.models)
    if args.weights is None and GOLDEN_WEIGHTS.exists():
        args.weights = str(GOLDEN_WEIGHTS)
    if args.weights and not Path(args.weights).exists():
        raise SystemExit(f"--weights {args.weights} does not exist")
    name, _, variant = args.weights_model.partition(":")
    weights_spec = (name, variant or list_models()[name].default_variant)
    args.weights_for = lambda spec: args.weights if spec == weights_spec else None
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if "engine_cuda_graph" in args.modes and device.type != "cuda":
        print("engine_cuda_graph needs CUDA; skipped on", device)
        args.modes.remove("engine_cuda_graph")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    report: dict[str, Any] = {
        "schema": "gpu_pipeline/1",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {**machine_info(device), **({} if args.no_probe else probe_machine(device))},
        "settings": {
            "modes": args.modes, "iterations": args.iterations, "throughput_frames": args.throughput_frames,
            "naive_iterations": args.naive_iterations, "warmup": args.warmup, "frames": args.frames,
            "depth": args.depth, "seed": args.seed, "cudnn_benchmark": args.cudnn_benchmark,
            "weights": args.weights, "weights_model": args.weights_model,
            "weights_trained": args.weights_trained, "batch_sizes": args.batch_sizes,
        },
        "runs": [],
    }
    print(json.dumps(report["machine"], indent=1))
    write_report(report, args.out)  # the machine figures survive even if the first model is cut off
    for spec in args.specs:
        for size in args.sizes:
            done = list(report["runs"])

            def on_mode_done(partial: dict[str, Any], done: list[Any] = done) -> None:
                report["runs"] = [*done, partial]
                write_report(report, args.out)

            run = run_model(spec, size, device, args, on_mode_done)
            print(format_run(run), "\n", flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
