"""Scaling of many-drive offline evaluation: one process vs Ray with 1 and 2 workers, frames/s.

    .venv/bin/python bench/eval_scaling.py --drives 4 --frames 24 --size 128x256

Renders ``--drives`` synthetic drives, then evaluates all of them (RegSeg, random init, CPU fp32,
one torch thread per worker) three ways in one run: in this process, on a local Ray instance
with 1 worker, and with 2 workers. Throughput counts the frames evaluated between the first task
handed out and the last result (engines already built); ``wall_s`` adds Ray start-up and model
loading, which a real evaluation of hours of data amortises. Every variant must give the same
pooled confusion matrix (checked). Prints a table and writes bench/results/eval_scaling.json.
On a shared machine, the numbers depend on the load: say so when quoting them.
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

from seg_perception.evaluation.drives.plan import collect_drives
from seg_perception.evaluation.drives.ray_runner import RayOptions, import_ray
from seg_perception.evaluation.evaluate import EvalOptions, evaluate, resolve_params
from seg_perception.evaluation.sample_drive import make_sample_drive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drives", type=int, default=4)
    parser.add_argument("--frames", type=int, default=24, help="frames per drive")
    parser.add_argument("--size", default="128x256", help="HEIGHTxWIDTH")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to compare")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_scaling.json"))
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    counts = [int(w) for w in args.workers.split(",")]
    values = resolve_params(device="cpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="eval_scaling_") as tmp:
        root = Path(tmp)
        for i in range(args.drives):
            make_sample_drive(root / f"drive{i}", frames=args.frames, size=size, seed=i, progress=False)
        drives = collect_drives([str(root)])
        ray = import_ray(local=True)
        ray.init(num_cpus=max(counts), include_dashboard=False, object_store_memory=100 * 1024 * 1024,
                 log_to_driver=False)
        try:
            variants = [("one process", None)] + [(f"ray {n} worker(s)", n) for n in counts]
            for name, workers in variants:
                options = EvalOptions(out=root / f"report_{workers or 0}", drives=drives, mode="offline", threads=1,
                                      progress=False, ray=RayOptions(workers=workers, threads=1) if workers else None)
                start = time.perf_counter()
                report, _ = evaluate(options, values)
                wall = time.perf_counter() - start
                execution = report["execution"]
                rows.append({"variant": name, "workers": workers or 1,
                             "frames": report["pooled"]["frames"]["evaluated"],
                             "throughput_fps": execution["throughput_fps"], "wall_s": wall,
                             "per_worker_fps": [w["fps"] for w in execution["per_worker"]],
                             "confusion_matrix": report["pooled"]["metrics"]["confusion_matrix"]})
        finally:
            ray.shutdown()
    identical = all(r["confusion_matrix"] == rows[0]["confusion_matrix"] for r in rows)
    base = rows[0]["throughput_fps"]
    print(f"{'variant':<20} {'frames':>7} {'frames/s':>9} {'speed-up':>9} {'wall s':>8}  per-worker frames/s")
    for r in rows:
        speedup = r["throughput_fps"] / base if base else 0.0
        print(f"{r['variant']:<20} {r['frames']:>7} {r['throughput_fps']:>9.2f} {speedup:>8.2f}x {r['wall_s']:>8.1f}  "
              + ", ".join(f"{v:.2f}" for v in r["per_worker_fps"]))
    print(f"pooled confusion matrices identical across variants: {identical}")
    result = {"drives": args.drives, "frames_per_drive": args.frames, "size": list(size), "cpu_count": os.cpu_count(),
              "load_average": list(os.getloadavg()), "identical": identical,
              "rows": [{k: v for k, v in r.items() if k != "confusion_matrix"} for r in rows]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
