"""What one small compressed image that declares 4096x4096 costs the node's worker: time and memory.

A JPEG (a few hundred KB) or a PNG (tens of KB) can declare exactly the default ``max_pixels``
(4096 x 4096 = 16.7 MP) and still be accepted. This measures, in a fresh process per run (the
shape it runs in on a car), what the worker does with it: decode it with the node's decoder
(:func:`seg_perception.compressed.decode_to_rgb`) and run the engine the node builds by default
(RegSeg with the shipped ``synthetic_street`` weights, backend ``auto``: ONNX Runtime on the CPU):

* ``unbounded``: ``max_inference_pixels`` = 4096 x 4096, so the frame runs at its declared size,
  as every frame did before the working size existed (no memory given back afterwards);
* ``bounded``: the default ``max_inference_pixels`` (1024 x 2048): the frame runs at its working
  size, the labels come back at 4096 x 4096, and the memory it took is given back.

Each run first serves a few 512x1024 frames (steady state), then the huge frame, then another
512x1024 frame. Reported: worker milliseconds (decode + engine), the network input shape, resident
memory (RSS) in steady state, at its peak, right after the frame, 1 s and 3 s later. Variants
alternate run by run.

    python bench/oversize_frame.py [--rounds 2] [--formats jpeg png]

Writes ``bench/results/oversize_frame_cpu.json`` (with the machine) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
SIDE = 4096
VARIANTS = {"unbounded": SIDE * SIDE, "bounded": None}


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident (``VmRSS``) or peak resident (``VmHWM``) memory in MB."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not found")


def payload(fmt: str) -> bytes:
    """A small file declaring SIDE x SIDE: smooth content, which compresses to almost nothing."""
    ys, xs = np.mgrid[0:SIDE, 0:SIDE]
    image = np.stack([(xs // 16) % 256, (ys // 16) % 256, ((xs + ys) // 64) % 256], axis=-1).astype(np.uint8)
    ok, data = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", image,
                            [cv2.IMWRITE_JPEG_QUALITY, 90] if fmt == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return data.tobytes()


class _Recording:
    """The engine's network, unchanged, noting the shape of every input it runs."""

    def __init__(self, network: Any) -> None:
        self.network, self.shapes = network, []
        self.name, self.origin = network.name, network.origin

    def __call__(self, x: Any) -> Any:
        self.shapes.append(tuple(x.shape))
        return self.network(x)

    def release_memory(self) -> None:
        self.network.release_memory()


def child(variant: str, fmt: str) -> dict[str, Any]:
    """One run in this (fresh) process; returns its measurements."""
    from seg_perception.compressed import decode_to_rgb
    from seg_perception.engine import SegmentationEngine
    from seg_perception.engine_api import DEFAULT_MAX_INFERENCE_PIXELS, EngineConfig

    limit = VARIANTS[variant] or DEFAULT_MAX_INFERENCE_PIXELS
    engine = SegmentationEngine(EngineConfig(device="cpu", weights="synthetic_street", max_inference_pixels=limit))
    engine._forward = _Recording(engine._forward)  # the network, noting each input's shape
    steady = np.random.default_rng(0).integers(0, 256, (512, 1024, 3), dtype=np.uint8)
    for _ in range(3):
        engine.infer(steady)
    steady_ms = engine.infer(steady).total_ms
    data = payload(fmt)
    rss_steady = rss_mb()
    started = time.perf_counter()
    rgb = decode_to_rgb(fmt, data, SIDE * SIDE)
    decoded = time.perf_counter()
    result = engine.infer(rgb)
    worker_ms = (time.perf_counter() - started) * 1e3
    labels_shape = result.labels.shape
    del rgb, result
    rss_after = rss_mb()
    time.sleep(1.0)
    rss_1s = rss_mb()
    time.sleep(2.0)
    rss_3s = rss_mb()
    after_ms = engine.infer(steady).total_ms
    return {
        "variant": variant, "format": fmt, "payload_bytes": len(data), "max_inference_pixels": limit,
        "decode_ms": (decoded - started) * 1e3, "worker_ms": worker_ms,
        "network_input": list(engine._forward.shapes[-2]),
        "labels_shape": list(labels_shape), "steady_frame_ms": steady_ms, "steady_frame_after_ms": after_ms,
        "rss_mb": {"steady": rss_steady, "peak": rss_mb("VmHWM"),
                   "right_after": rss_after, "after_1s": rss_1s, "after_3s": rss_3s},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--formats", nargs="+", default=["jpeg", "png"], choices=("jpeg", "png"))
    parser.add_argument("--out", default=str(RESULTS / "oversize_frame_cpu.json"))
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "FORMAT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    runs = []
    for round_ in range(args.rounds):
        for fmt in args.formats:
            order = list(VARIANTS) if round_ % 2 == 0 else list(reversed(VARIANTS))
            for variant in order:
                print(f"round {round_ + 1}/{args.rounds}: {variant} {fmt} ...", flush=True)
                out = subprocess.run([sys.executable, __file__, "--child", variant, fmt], check=True,
                                     capture_output=True, text=True, env={**os.environ})
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = []
    for fmt in args.formats:
        for variant in VARIANTS:
            mine = [r for r in runs if r["variant"] == variant and r["format"] == fmt]
            rss = {k: statistics.median(r["rss_mb"][k] for r in mine) for k in mine[0]["rss_mb"]}
            summary.append({"variant": variant, "format": fmt, "payload_kb": mine[0]["payload_bytes"] / 1024,
                            "worker_ms": statistics.median(r["worker_ms"] for r in mine),
                            "network_input": mine[0]["network_input"], "labels_shape": mine[0]["labels_shape"],
                            "rss_mb": rss, "after_3s_over_steady": rss["after_3s"] / rss["steady"]})
    document = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_start": list(os.getloadavg())},
        "what": "decode + engine.infer of one 4096x4096 compressed frame (RegSeg synthetic_street, backend auto, "
                "CPU), fresh process per run, variants alternating",
        "summary": summary, "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(document, indent=2))
    print("| variant | format | payload KB | worker ms | network input | RSS steady / peak / +3 s MB | +3 s / steady |")
    print("|---|---|---|---|---|---|---|")
    for row in summary:
        rss = row["rss_mb"]
        print(f"| {row['variant']} | {row['format']} | {row['payload_kb']:.0f} | {row['worker_ms']:.0f} | "
              f"{'x'.join(map(str, row['network_input']))} | {rss['steady']:.0f} / {rss['peak']:.0f} / "
              f"{rss['after_3s']:.0f} | {row['after_3s_over_steady']:.2f} |")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
