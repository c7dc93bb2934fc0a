"""What a compiled engine's preparation costs the frames being served.

Two measurements, variants side by side in one run, with ``compile=torch_compile``:

* ``first_frames``: latency of the first three frames of a camera resolution after the engine
  starts (warmed up at the node's warm-up size, as the node does) and after a reload (a new
  engine), for ``inline`` (the shape is compiled on the serving thread by the first frame: the old
  behaviour), ``background`` (served eagerly while compiled in the background, then switched) and,
  for the reload, ``prepared`` (the loader calls ``new.prepare(*batch)`` for every
  ``old.recent_batches()`` before the swap, as the scheduler should).
* ``serving_during_reload``: an eager engine serves frames at ``--rate`` on one thread while a
  loader thread builds and prepares a torch_compile engine: ``none`` (no reload, the baseline),
  ``plain`` (preparation without yielding: the old loader thread) and ``yielding`` (the engine's
  ``prepare``, which pauses while frames are being served). Serving latency p50/p99/max.

    python bench/engine_prepare.py --device cpu --size 128x256 --model regseg
    python bench/engine_prepare.py --device cpu --size 32x64 --model tiny --serve-frames 10   # seconds

Writes JSON to ``--out`` (default ``bench/results/engine_prepare.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from seg_perception import engine as engine_module
from seg_perception import preparation
from seg_perception.benchmark import machine_info, make_frames
from seg_perception.engine import EngineConfig, OutputRequest, SegmentationEngine
from seg_perception.models import build_model
from seg_perception.stats import percentiles

#: The node warms a new engine up at this size when inference_size follows the frames.
NODE_WARMUP_SIZE = (64, 64)


class TinyNet(nn.Module):
    """A few convolutions: compiles in seconds, for the dry run and CI."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 19, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.body(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return (TinyNet() if name == "tiny" else build_model(name)).eval()


def make_engine(model: nn.Module, device: str, compile_mode: str, background: bool) -> SegmentationEngine:
    precision = "fp16" if device == "cuda" else "fp32"
    config = EngineConfig(device=device, precision=precision, compile=compile_mode, background_prepare=background)
    return SegmentationEngine(config, model=copy.deepcopy(model))


def timed_frames(engine: SegmentationEngine, frames: Sequence[np.ndarray], count: int = 3) -> list[float]:
    out = []
    for i in range(count):
        t0 = time.perf_counter()
        engine.infer(frames[i % len(frames)])
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def first_frames(model: nn.Module, args: argparse.Namespace, frames: Sequence[np.ndarray]) -> dict[str, Any]:
    """First three frames after start and after a reload, per variant."""
    report: dict[str, Any] = {}
    for variant in ("inline", "background", "prepared"):
        print(f"  first frames: {variant} ...", flush=True)
        torch._dynamo.reset()  # each variant starts cold in this process (inductor's disk cache stays)
        background = variant != "inline"
        t0 = time.perf_counter()
        old = make_engine(model, args.device, "torch_compile", background)
        old.warmup(*NODE_WARMUP_SIZE)
        start_s = time.perf_counter() - t0
        after_start = timed_frames(old, frames)
        old.wait_prepared(args.timeout)
        t0 = time.perf_counter()
        new = make_engine(model, args.device, "torch_compile", background)
        new.warmup(*NODE_WARMUP_SIZE)
        if variant == "prepared":
            for batch in old.recent_batches():
                new.prepare(*batch)
        reload_s = time.perf_counter() - t0
        after_reload = timed_frames(new, frames)
        new.wait_prepared(args.timeout)
        steady = timed_frames(new, frames, 5)
        report[variant] = {"start_s": start_s, "after_start_ms": after_start, "reload_s": reload_s,
                           "after_reload_ms": after_reload, "steady_ms_p50": float(np.median(steady))}
        old.close()
        new.close()
    return report


@contextlib.contextmanager
def without_yielding() -> Iterator[None]:
    """The old loader thread: preparation holds the interpreter as long as Python lets it."""
    saved = engine_module.yielding_to_serving, preparation.yielding_to_serving
    engine_module.yielding_to_serving = preparation.yielding_to_serving = lambda *a, **k: contextlib.nullcontext()
    try:
        yield
    finally:
        engine_module.yielding_to_serving, preparation.yielding_to_serving = saved


def serving_during_reload(model: nn.Module, args: argparse.Namespace, frames: Sequence[np.ndarray]) -> dict:
    """Serving latency of an eager engine while another engine compiles, per variant."""
    report: dict[str, Any] = {}
    serving = make_engine(model, args.device, "none", True)
    timed_frames(serving, frames)
    for variant in ("none", "plain", "yielding"):
        print(f"  serving during reload: {variant} ...", flush=True)
        latencies: list[float] = []
        stop = threading.Event()
        reload: dict[str, float] = {}

        def load(variant: str = variant, reload: dict[str, float] = reload, stop: threading.Event = stop) -> None:
            t0 = time.perf_counter()
            with without_yielding() if variant == "plain" else contextlib.nullcontext():
                engine = make_engine(model, args.device, "torch_compile", True)
                engine.prepare([frames[0].shape[:2]], [OutputRequest()])
            reload["seconds"] = time.perf_counter() - t0
            engine.close()
            stop.set()

        torch._dynamo.reset()  # the loader compiles from scratch, as for a different model
        loader = threading.Thread(target=load) if variant != "none" else None
        if loader is not None:
            loader.start()
        deadline = time.perf_counter() + args.serve_frames / args.rate
        period = 1.0 / args.rate
        i = 0
        while (loader is not None and not stop.is_set()) or (loader is None and time.perf_counter() < deadline):
            t0 = time.perf_counter()
            serving.infer(frames[i % len(frames)])
            latencies.append((time.perf_counter() - t0) * 1e3)
            i += 1
            time.sleep(max(0.0, period - (time.perf_counter() - t0)))
            if loader is not None and time.perf_counter() - t0 > args.timeout:
                break
        if loader is not None:
            loader.join(args.timeout)
        report[variant] = {"latency_ms": percentiles(latencies), "frames": len(latencies), **reload}
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = ["| first frames | start s | after start ms (1, 2, 3) | reload s | after reload ms (1, 2, 3) | steady ms |",
             "|---|---:|---|---:|---|---:|"]
    for variant, r in report["first_frames"].items():
        fmt = ", ".join(f"{v:.0f}" for v in r["after_start_ms"])
        fmt2 = ", ".join(f"{v:.0f}" for v in r["after_reload_ms"])
        lines.append(f"| {variant} | {r['start_s']:.1f} | {fmt} | {r['reload_s']:.1f} | {fmt2} "
                     f"| {r['steady_ms_p50']:.1f} |")
    lines += ["", "| serving during reload | frames | p50 ms | p99 ms | max ms | reload s |",
              "|---|---:|---:|---:|---:|---:|"]
    for variant, r in report["serving_during_reload"].items():
        lat = r["latency_ms"]
        lines.append(f"| {variant} | {r['frames']} | {lat['p50']:.1f} | {lat['p99']:.1f} | {lat['max']:.1f} "
                     f"| {r.get('seconds', float('nan')):.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--size", default="128x256", help="HEIGHTxWIDTH of the camera frames")
    p.add_argument("--model", default="regseg", help="a registered model (default variant) or 'tiny'")
    p.add_argument("--rate", type=float, default=10.0, help="serving rate during the reload, Hz")
    p.add_argument("--serve-frames", type=int, default=30, help="frames served in the no-reload baseline")
    p.add_argument("--timeout", type=float, default=600.0, help="longest wait for one compile, s")
    p.add_argument("--parts", default="first_frames,serving_during_reload")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/engine_prepare.json")
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    frames = make_frames(h, w, count=3)
    model = build(args.model)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    report: dict[str, Any] = {"schema": "engine_prepare/1", "machine": machine_info(torch.device(args.device)),
                              "settings": {**vars(args), "out": str(args.out)},
                              "first_frames": {}, "serving_during_reload": {}}
    if "first_frames" in parts:
        report["first_frames"] = first_frames(model, args, frames)
    if "serving_during_reload" in parts:
        report["serving_during_reload"] = serving_during_reload(model, args, frames)
    print(format_report(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
