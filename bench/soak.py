"""Soak run: 10,000 frames at a rate seg_node sustains; memory, objects and threads stay flat.

    .venv/bin/python bench/soak.py --frames 10000 --size 32x64

A real SegmentationNode (RegSeg, random init, CPU fp32 unless told otherwise) and a driver run in
one process over DDS on loopback. The rate defaults to half the node's measured capacity. Samples
RSS, Python objects tracked by the GC, tracemalloc's traced memory, Python and native threads
and (on CUDA) ``torch.cuda.memory_allocated`` at checkpoints; growth is measured from the first
checkpoint (10% of the frames, after warm-up). Prints a table and writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
sys.path.insert(0, str(ROOT / "test"))  # the harness the reliability tests use

import torch
from reliability_support import FakeEngine, NodeHarness, node_capacity, run_soak

RSS_LIMIT_MB = 50.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--size", default="32x64", help="HEIGHTxWIDTH of the frames")
    parser.add_argument("--rate", type=float, default=0.0, help="Hz; 0 = half the measured capacity")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoints", type=int, default=20)
    parser.add_argument("--fake", action="store_true", help="fake engine (node plumbing only)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.size.split("x"))
    params = {"device": args.device, "precision": "fp32" if args.device == "cpu" else "fp16"}
    factory = (lambda c: FakeEngine(c, delay_s=0.002)) if args.fake else None
    with NodeHarness(params, engine_factory=factory, keep_labels=False, history=50) as h:
        capacity = node_capacity(h, shape)
        rate = args.rate or capacity / 2
        print(f"capacity {capacity:.1f} fps; soaking {args.frames} frames of {args.size} at {rate:.1f} Hz "
              f"(~{args.frames / rate / 60:.1f} min)", flush=True)
        result = run_soak(h, args.frames, shape, rate, args.checkpoints)
        description = h.node.scheduler.engine.description
    result.update(capacity_fps=capacity, engine=description, torch=torch.__version__,
                  cpu_count=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M"))

    print(f"{'frames':>7} {'RSS MB':>9} {'GC objects':>11} {'traced MB':>10} {'py threads':>10} "
          f"{'native thr':>10} {'GPU MB':>8}")
    for s in result["samples"]:
        print(f"{s['frames']:>7} {s['rss_mb']:>9.1f} {s['gc_objects']:>11} {s['traced_mb']:>10.2f} "
              f"{s['python_threads']:>10} {s['native_threads']:>10} {s['gpu_mb']:>8.1f}")
    books = result["books"]
    print(f"duration {result['duration_s']:.0f} s; received {books['received']}, processed "
          f"{books['processed']}, dropped {books['dropped']}, rejected {books['rejected']}")
    print(f"growth: RSS {result['rss_growth_mb']:+.1f} MB, GC objects {result['gc_objects_growth']:+d}, "
          f"traced {result['traced_growth_mb']:+.2f} MB, threads {result['python_threads_growth']:+d} "
          f"(native {result['native_threads_growth']:+d}), GPU {result['gpu_growth_mb']:+.1f} MB")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    ok = (result["rss_growth_mb"] < RSS_LIMIT_MB and result["python_threads_growth"] == 0
          and books["in_flight"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
