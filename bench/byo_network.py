"""Networks brought as ONNX files (``model: onnx``) beside the registered RegSeg, on this machine.

Variants, all built first, then timed **interleaved** frame by frame in one process (one engine
runs at a time, so load from other processes hits every variant alike):

* ``regseg``: the registered RegSeg with the shipped ``synthetic_street`` weights, ``backend:
  auto`` (ONNX Runtime on the CPU), the default deployment;
* ``regseg_onnx_file``: the same network exported by ``seg-perception export`` and served as
  ``model: onnx``: what the bring-your-own path itself costs (same runtime, same graph: the same
  labels and time are expected);
* ``lraspp_mobilenetv3``: torchvision's LR-ASPP MobileNetV3-Large exported at a fixed HxW with
  ``torch.onnx.export`` (random weights: speed only);
* ``deeplabv3_mobilenetv3``: torchvision's DeepLabV3-MobileNetV3-Large exported with dynamic
  batch, height and width (random weights: speed only).

Per variant: engine latency p50/p90 (sum of the engine's stage timings, the number the node
reports), inference stage p50, start (engine construction + first frame), parameter count, and the
label agreement with ``regseg`` (meaningful for ``regseg_onnx_file`` only). The machine and its
load average at start and end are recorded.

    PYTHONPATH=. python bench/byo_network.py                      # 512x1024, 10 rounds
    PYTHONPATH=. python bench/byo_network.py --size 256x512 --iterations 5 --out /tmp/byo.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seg_perception.benchmark import interleave, machine_info, make_frames
from seg_perception.cli import main as cli_main
from seg_perception.cli import parse_size
from seg_perception.engine import EngineConfig, SegmentationEngine
from seg_perception.stats import percentiles

ROOT = Path(__file__).resolve().parents[1]


class _Out(nn.Module):
    """torchvision's segmentation models return a dict; the exported graph returns ``out``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def export_torchvision(name: str, path: Path, size: tuple[int, int], dynamic: bool) -> Path:
    """Export a torchvision segmentation network (random weights) as a user would."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large

    builder = {"lraspp": lraspp_mobilenet_v3_large, "deeplabv3": deeplabv3_mobilenet_v3_large}[name]
    torch.manual_seed(0)
    model = _Out(builder(weights=None, weights_backbone=None, num_classes=19)).eval()
    axes = {"image": {0: "n", 2: "h", 3: "w"}, "out": {0: "n"}} if dynamic else None
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, *size),), buffer, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["out"], dynamic_axes=axes)
    path.write_bytes(buffer.getvalue())
    return path


def variants(folder: Path, size: tuple[int, int]) -> dict[str, EngineConfig]:
    """The engines compared, with their files exported into ``folder``."""
    regseg = folder / "regseg_synthetic_street.onnx"
    if cli_main(["export", "--weights", "synthetic_street", "--out", str(regseg), "--size", f"{size[0]}x{size[1]}",
                 "--cache-dir", str(folder / "cache")]) != 0:
        raise RuntimeError("seg-perception export failed")
    lraspp = export_torchvision("lraspp", folder / "lraspp_mobilenetv3_fixed.onnx", size, dynamic=False)
    deeplab = export_torchvision("deeplabv3", folder / "deeplabv3_mobilenetv3_dynamic.onnx", (256, 512), dynamic=True)
    common = {"device": "cpu", "precision": "fp32", "cache_dir": str(folder / "cache")}
    return {
        "regseg": EngineConfig(weights="synthetic_street", **common),
        "regseg_onnx_file": EngineConfig(model="onnx", weights=str(regseg), **common),
        "lraspp_mobilenetv3": EngineConfig(model="onnx", weights=str(lraspp), **common),
        "deeplabv3_mobilenetv3": EngineConfig(model="onnx", weights=str(deeplab), **common),
    }


def run(size: tuple[int, int], iterations: int, folder: Path) -> dict[str, Any]:
    frames = make_frames(*size)
    engines: dict[str, SegmentationEngine] = {}
    results: dict[str, dict[str, Any]] = {}
    for name, config in variants(folder, size).items():
        print(f"  {name}: start ...", flush=True)
        start = time.perf_counter()
        engine = SegmentationEngine(config)
        engine.infer(frames[0])
        engines[name] = engine
        results[name] = {"start_s": time.perf_counter() - start, "engine": engine.description}
    for name, timed in interleave(engines, frames, iterations, "regseg", f"{size[0]}x{size[1]} interleaved").items():
        agreement = timed.pop("agreement")
        results[name].update(timed, agreement_with_regseg=agreement)
    base = percentiles(results["regseg"]["total_ms"])["p50"]
    for r in results.values():
        r["total_ms"], r["inference_ms"] = percentiles(r["total_ms"]), percentiles(r["inference_ms"])
        r["agreement_with_regseg"] = float(np.mean(r["agreement_with_regseg"]))
        r["p50_relative_to_regseg"] = r["total_ms"]["p50"] / base
    return {"size": list(size), "iterations": iterations, "variants": results}


def format_table(case: dict[str, Any]) -> str:
    rows = ["| variant | parameters | engine p50 ms | p90 ms | inference p50 ms | vs RegSeg p50 | "
            "labels = RegSeg's | start s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in case["variants"].items():
        rows.append(f"| {name} | {r['engine']['parameters']:,} | {r['total_ms']['p50']:.1f} | "
                    f"{r['total_ms']['p90']:.1f} | {r['inference_ms']['p50']:.1f} | "
                    f"{r['p50_relative_to_regseg']:.2f}x | "
                    f"{100 * r['agreement_with_regseg']:.2f} % | {r['start_s']:.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=(512, 1024), help="HEIGHTxWIDTH of the frames")
    parser.add_argument("--iterations", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime intra-op threads")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "byo_network_cpu.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "command": " ".join(sys.argv), "machine": machine_info(torch.device("cpu")),
        "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "note": "variants interleaved frame by frame in one process; engine latency = sum of stage timings; "
                "torchvision networks have random weights (speed only)",
    }
    with tempfile.TemporaryDirectory(prefix="seg_byo_bench_") as folder:
        report["case"] = run(args.size, args.iterations, Path(folder))
    report["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nload average at start {report['load_average_at_start']}, at end {report['load_average_at_end']} on "
          f"{report['cpu_count']} CPUs, {report['machine']['cpu_threads']} threads\n")
    print(format_table(report["case"]))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
