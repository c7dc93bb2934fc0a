"""Network backends side by side in one run: latency, label agreement, start-up time.

CPU comparison (default): per model and size, the engine with ``backend: torch`` (eager),
``torch`` + ``compile: torch_compile`` and ``backend: onnxruntime``, all fed the same rotating
frames and **interleaved** (one frame per variant in turn), so load from other processes hits
every variant alike. Per variant: engine latency p50/p90 (sum of the engine's stage timings, the
number the node reports) and of the inference stage alone, pixel agreement of the labels with
torch eager fp32 on the same frames, first start (engine construction + first frame, with an
empty export cache: export + session creation, or TorchInductor compilation) and cached start
(the same again with the cache warm).

GPU comparison (``--gpu``): torch fp16 + CUDA graphs, ONNX Runtime's CUDA provider and
TensorRT fp16 (ONNX Runtime's TensorRT provider), agreement against torch fp32 eager on the GPU.
Skipped with a message when torch sees no CUDA device; a variant whose provider is not installed
is skipped with the reason.

RegSeg runs with the golden weights (``../shared/reference/regseg/...``) when present; other
models with seeded random weights (agreement on random weights is a weaker check: their logits
are less separated). Each case runs in a fresh temporary cache folder.

Run from the repository root with the package importable (installed, or ``PYTHONPATH=.``):

    python bench/backends.py                                   # every model at 512x1024, RegSeg also 1024x2048
    python bench/backends.py --models regseg --sizes 512x1024 --iterations 20
    python bench/backends.py --gpu --sizes 1024x2048 512x1024  # on the GPU machine

Prints a markdown table and writes JSON after every case (``--out``, default
``bench/results/backends_cpu.json`` / ``backends_gpu.json``), so an interrupted run keeps what
it finished.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seg_perception.backends import backend_problem
from seg_perception.benchmark import interleave, machine_info, make_frames
from seg_perception.cli import parse_size
from seg_perception.engine import EngineConfig, EngineConfigError, SegmentationEngine
from seg_perception.models import list_models
from seg_perception.stats import percentiles

ROOT = Path(__file__).resolve().parents[1]

GOLDEN = ROOT.parent / "shared" / "reference" / "regseg" / "regseg_exp48_decoder26_cityscapes_random_state.pt"
#: Models that are slow on a CPU (seconds per 512x1024 frame): fewer iterations by default.
LARGE_MODELS = ("deeplabv3plus", "refinenet", "deeplabv1", "hrnet_ocr")

#: name -> EngineConfig overrides; "reference" is what agreement is measured against.
CPU_VARIANTS = {
    "torch_eager": {"backend": "torch"},
    "torch_compile": {"backend": "torch", "compile": "torch_compile"},
    "onnxruntime": {"backend": "onnxruntime"},
}
GPU_VARIANTS = {
    "torch_fp32_eager": {"backend": "torch", "precision": "fp32"},
    "torch_fp16_cuda_graph": {"backend": "torch", "precision": "fp16", "compile": "cuda_graph"},
    "onnxruntime_cuda": {"backend": "onnxruntime", "precision": "fp32"},
    "tensorrt_fp16": {"backend": "tensorrt", "precision": "fp16"},
}


def timed_start(config: EngineConfig, frame: np.ndarray) -> tuple[SegmentationEngine, float]:
    """Engine construction + first frame, in seconds (what a node's start-up costs)."""
    torch.manual_seed(0)  # same random weights for every variant of a model without a file
    start = time.perf_counter()
    engine = SegmentationEngine(config)
    engine.infer(frame)
    return engine, time.perf_counter() - start


def run_case(model: str, size: tuple[int, int], variants: dict[str, dict[str, Any]], device: str,
             iterations: int, reference: str) -> dict[str, Any]:
    """One model at one size: every variant built, then timed interleaved frame by frame."""
    frames = make_frames(*size)
    weights = str(GOLDEN) if model == "regseg" and GOLDEN.exists() else ""
    engines: dict[str, SegmentationEngine] = {}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="seg_backends_") as cache_dir:
        for name, overrides in variants.items():
            config = replace(EngineConfig(model=model, weights=weights, device=device, precision="fp32",
                                          inference_size=size, cache_dir=cache_dir), **overrides)
            problem = _problem(config)
            if problem:
                print(f"  {model} {size[0]}x{size[1]} {name}: skipped ({problem})")
                results[name] = {"skipped": problem}
                continue
            print(f"  {model} {size[0]}x{size[1]} {name}: first start ...", flush=True)
            _, first = timed_start(config, frames[0])
            gc.collect()
            engine, cached = timed_start(config, frames[0])
            engines[name] = engine
            results[name] = {"first_start_s": first, "cached_start_s": cached, "backend": engine.description["backend"]}
        for name, timed in interleave(engines, frames, iterations, reference,
                                      f"{model} {size[0]}x{size[1]} interleaved").items():
            results[name].update(timed)
    for name in engines:
        r = results[name]
        r["total_ms"], r["inference_ms"] = percentiles(r["total_ms"]), percentiles(r["inference_ms"])
        r["agreement"] = {"mean": float(np.mean(r["agreement"])), "min": float(np.min(r["agreement"]))}
    base = results.get(reference, {}).get("total_ms")
    for r in results.values():
        if base and "total_ms" in r:
            r["speedup_p50_vs_reference"] = base["p50"] / r["total_ms"]["p50"]
    del engines
    gc.collect()
    return {"model": model, "size": list(size), "iterations": iterations, "reference": reference,
            "weights": weights or "seeded random init", "variants": results}


def _problem(config: EngineConfig) -> str | None:
    if config.compile == "cuda_graph" and not torch.cuda.is_available():
        return "cuda_graph needs CUDA"
    problem = backend_problem(config.backend, config.device, config.compile)
    if problem:
        return problem
    try:
        config.validate()
    except EngineConfigError as exc:
        return str(exc)
    return None


def format_table(cases: list[dict[str, Any]]) -> str:
    rows = ["| model | size | variant | engine p50 ms | p90 ms | inference p50 ms | speed-up p50 | "
            "agreement mean / min | first start s | cached start s |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for case in cases:
        size = f"{case['size'][0]}x{case['size'][1]}"
        for name, r in case["variants"].items():
            if "skipped" in r:
                rows.append(f"| {case['model']} | {size} | {name} | skipped: {r['skipped'][:80]} ||||||| ")
                continue
            rows.append(
                f"| {case['model']} | {size} | {name} | {r['total_ms']['p50']:.1f} | {r['total_ms']['p90']:.1f} | "
                f"{r['inference_ms']['p50']:.1f} | {r.get('speedup_p50_vs_reference', float('nan')):.2f}x | "
                f"{100 * r['agreement']['mean']:.3f}% / {100 * r['agreement']['min']:.3f}% | "
                f"{r['first_start_s']:.1f} | {r['cached_start_s']:.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="all", help="comma-separated registry names, or all")
    parser.add_argument("--sizes", nargs="*", type=parse_size, default=None,
                        help="HEIGHTxWIDTH ... (default 512x1024, and 1024x2048 for regseg)")
    parser.add_argument("--iterations", type=int, default=10, help="interleaved rounds per case")
    parser.add_argument("--large-iterations", type=int, default=3,
                        help=f"rounds for the slow models ({', '.join(LARGE_MODELS)}) on the CPU")
    parser.add_argument("--variants", default=None, help="comma-separated subset of the variants")
    parser.add_argument("--compile-models", default="regseg",
                        help="models that also get the torch_compile variant on the CPU (all, or a list; "
                             "TorchInductor takes minutes per large model)")
    parser.add_argument("--compile-sizes", nargs="*", type=parse_size, default=[(512, 1024)],
                        help="sizes that get the torch_compile variant (compilation is per frame shape)")
    parser.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime intra-op threads")
    parser.add_argument("--gpu", action="store_true", help="the GPU comparison instead of the CPU one")
    parser.add_argument("--out", default=None)
    parser.add_argument("--resume", action="store_true", help="keep the cases already in --out, run the rest")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu and not torch.cuda.is_available():
        print("GPU comparison skipped: torch sees no CUDA device (run with --gpu on the NVIDIA machine).")
        return 0
    variants = GPU_VARIANTS if args.gpu else CPU_VARIANTS
    if args.variants:
        variants = {k: v for k, v in variants.items() if k in args.variants.split(",")}
    reference = "torch_fp32_eager" if args.gpu else "torch_eager"
    if reference not in variants:
        parser.error(f"the reference variant {reference} must be included")
    models = list(list_models()) if args.models == "all" else args.models.split(",")
    compile_models = set(models) if args.compile_models == "all" else set(args.compile_models.split(","))
    out = Path(args.out or ROOT / "bench" / "results" / f"backends_{'gpu' if args.gpu else 'cpu'}.json")
    report: dict[str, Any] = {
        "command": " ".join(sys.argv), "machine": machine_info(torch.device("cuda" if args.gpu else "cpu")),
        "load_average_at_start": os.getloadavg(), "cpu_count": os.cpu_count(),
        "note": "variants interleaved frame by frame in one process; engine latency = sum of stage timings",
        "date": time.strftime("%Y-%m-%d %H:%M"), "cases": [],
    }
    if args.resume and out.exists():
        previous = json.loads(out.read_text())
        report["cases"] = previous["cases"]
        report["load_average_at_start"] = previous["load_average_at_start"]
    done = {(c["model"], tuple(c["size"])) for c in report["cases"]}
    for model in models:
        sizes = args.sizes or ([(512, 1024), (1024, 2048)] if model == "regseg" else [(512, 1024)])
        for size in sizes:
            if (model, tuple(size)) in done:
                continue
            iterations = args.large_iterations if (model in LARGE_MODELS and not args.gpu) else args.iterations
            case_variants = {k: v for k, v in variants.items()
                             if args.gpu or "compile" not in v
                             or (model in compile_models and size in args.compile_sizes)}
            report["cases"].append(run_case(model, size, case_variants, "cuda" if args.gpu else "cpu",
                                            iterations, reference))
            report["load_average_at_end"] = os.getloadavg()
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nload average at start {report['load_average_at_start']}, at end {report['load_average_at_end']} "
          f"on {report['cpu_count']} CPUs\n")
    print(format_table(report["cases"]))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
