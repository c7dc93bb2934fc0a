"""Engine latency benchmark: per-stage p50/p90/p99 on varied frames, as a table and JSON.

Frames rotate through several buffers of street-like noise (never zeros, never one frame
repeated), because constant inputs flatter caches and some kernels.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .engine import STAGES, EngineConfig, OutputRequest, SegmentationEngine
from .stats import percentiles


def make_frames(height: int, width: int, count: int = 4, seed: int = 0) -> list[np.ndarray]:
    """``count`` different uint8 RGB frames with smooth structure plus noise."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (max(height // 32, 2), max(width // 32, 2), 3), dtype=np.uint8)
        up = np.kron(coarse, np.ones((32, 32, 1), dtype=np.uint8))[:height, :width]
        up = np.pad(up, ((0, height - up.shape[0]), (0, width - up.shape[1]), (0, 0)), mode="edge")
        noise = rng.integers(-12, 13, up.shape)
        frames.append(np.clip(up.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return frames


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def run_benchmark(
    config: EngineConfig, height: int, width: int, iterations: int = 20, warmup: int = 3,
    outputs: OutputRequest | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Time ``iterations`` frames one at a time (submit then wait), after ``warmup`` frames."""
    outputs = outputs or OutputRequest()
    engine = SegmentationEngine(config)
    frames = make_frames(height, width)
    for i in range(warmup):
        engine.infer(frames[i % len(frames)], outputs)
    stage_samples: dict[str, list[float]] = {s: [] for s in STAGES}
    totals, walls = [], []
    loop = range(iterations)
    if progress:
        from tqdm import tqdm

        loop = tqdm(loop, desc=f"bench {config.model} {height}x{width}", unit="frame")
    for i in loop:
        start = time.perf_counter()
        result = engine.infer(frames[i % len(frames)], outputs)
        walls.append((time.perf_counter() - start) * 1e3)
        for stage, ms in result.timings_ms.items():
            stage_samples[stage].append(ms)
        totals.append(result.total_ms)
    return {
        "config": {**asdict(config), "inference_size": config.inference_size},
        "engine": engine.description,
        "size": [height, width],
        "iterations": iterations,
        "stages_ms": {s: percentiles(v) for s, v in stage_samples.items()},
        "total_ms": percentiles(totals),
        "wall_ms": percentiles(walls),
        "fps_from_p50": 1e3 / percentiles(walls)["p50"],
        "peak_gpu_memory_mb": (torch.cuda.max_memory_allocated(engine.device) / 2**20
                               if engine.device.type == "cuda" else None),
        "machine": machine_info(engine.device),
        "date": time.strftime("%Y-%m-%d"),
    }


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of the per-stage percentiles."""
    rows = ["| stage | p50 ms | p90 ms | p99 ms |", "|---|---:|---:|---:|"]
    for stage, s in report["stages_ms"].items():
        rows.append(f"| {stage} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} |")
    for name in ("total_ms", "wall_ms"):
        s = report[name]
        rows.append(f"| **{name[:-3]}** | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} |")
    return "\n".join(rows)


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    return path


def interleave(engines: dict[str, Any], frames: list[np.ndarray], iterations: int, reference: str,
               desc: str) -> dict[str, dict[str, list[float]]]:
    """Run every engine on the same frame, one after the other, for ``iterations`` rounds (so load
    changes hit all variants alike): per engine its ``total_ms`` and ``inference_ms`` per round and
    the fraction of its labels equal to the ``reference`` engine's (``agreement``)."""
    from tqdm import tqdm

    out: dict[str, dict[str, list[float]]] = {name: {"total_ms": [], "inference_ms": [], "agreement": []}
                                              for name in engines}
    for i in tqdm(range(iterations), desc=desc, unit="round"):
        frame = frames[i % len(frames)]
        labels = {}
        for name, engine in engines.items():
            result = engine.infer(frame)
            labels[name] = result.labels
            out[name]["total_ms"].append(result.total_ms)
            out[name]["inference_ms"].append(result.timings_ms["inference"])
        for name in engines:
            out[name]["agreement"].append(float((labels[name] == labels[reference]).mean()))
    return out
