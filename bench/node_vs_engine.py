"""Does ``seg_node`` slow its own inference? Node per-frame stage times vs the engine offline.

    python bench/node_vs_engine.py --frames 24 --size 256x512 --threads 1

Renders the sample drive, evaluates it offline (the engine alone, frames back to back) and then
live (``seg_node`` as its own process, fed by this one over DDS) at a replay rate slow enough that
the node never has two frames waiting (``--load`` of its capacity, from the offline time), so both
runs do the same work per frame. The node's stage percentiles come from its ``/diagnostics``.
Target: node inference p50 within 15% of the engine's. Prints a table and writes
``bench/results/node_vs_engine.json``. Run it on an otherwise idle machine: under CPU contention
from other processes both numbers move, and not by the same amount.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

from seg_perception.cli_args import parse_size
from seg_perception.evaluation.evaluate import EvalOptions, evaluate, resolve_params
from seg_perception.evaluation.sample_drive import make_sample_drive

TARGET_RATIO = 1.15
STAGES = ("preprocess", "inference", "postprocess")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=parse_size, default=(256, 512), help="HEIGHTxWIDTH")
    parser.add_argument("--model", default="regseg")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, in the node and offline")
    parser.add_argument("--load", type=float, default=0.5, help="replay rate as a fraction of capacity")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "node_vs_engine.json")
    args = parser.parse_args()

    values = resolve_params(model=args.model, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        drive = make_sample_drive(work / "drive", args.frames, args.size, progress=False)
        common = {"bag": drive.bag, "threads": args.threads, "progress": False, "overlays": 0}
        offline, _ = evaluate(EvalOptions(out=work / "offline", mode="offline", **common), values)
        per_frame_s = offline["pooled"]["timing"]["latency_ms"]["p50"] / 1e3
        recorded_hz = (args.frames - 1) / offline["drives"][0]["cameras"]["camera"]["duration_s"]
        speed = min(1.0, args.load / per_frame_s / recorded_hz)
        started = time.monotonic()
        live, _ = evaluate(EvalOptions(out=work / "live", mode="live", speed=speed, **common), values)
        live_s = time.monotonic() - started

    rows = []
    for stage in STAGES:
        engine = offline["pooled"]["timing"]["stages_ms"][stage]["p50"]
        node = (live["pooled"]["timing"]["stages_ms"].get(stage) or {}).get("p50")
        rows.append({"stage": stage, "engine_p50_ms": engine, "node_p50_ms": node,
                     "ratio": node / engine if node and engine else None})
    inference = next(r for r in rows if r["stage"] == "inference")
    result = {
        "settings": {"model": args.model, "size": list(args.size), "device": args.device,
                     "threads": args.threads, "frames": args.frames, "speed": speed,
                     "input_fps": live["pooled"]["timing"]["input_fps"]},
        "stages": rows,
        "node_dropped": live["pooled"]["frames"]["dropped"],
        "live_wall_s": live_s,
        "target_ratio": TARGET_RATIO,
        "within_target": inference["ratio"] is not None and inference["ratio"] <= TARGET_RATIO,
        "machine": offline["machine"],
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(f"{args.model} {args.size[0]}x{args.size[1]} {args.device}, {args.threads} thread(s), "
          f"live at {result['settings']['input_fps']:.2f} FPS, load average {os.getloadavg()[0]:.1f}")
    print("| stage | engine p50 ms | node p50 ms | node/engine |\n|---|---:|---:|---:|")
    for r in rows:
        node = "n/a" if r["node_p50_ms"] is None else f"{r['node_p50_ms']:.1f}"
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"| {r['stage']} | {r['engine_p50_ms']:.1f} | {node} | {ratio} |")
    print(f"inference within {TARGET_RATIO - 1:.0%}: {'yes' if result['within_target'] else 'NO'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
