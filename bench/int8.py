"""INT8 against fp32 on the CPU, side by side in one run: latency, label agreement, mIoU.

**Engines** (``SegmentationEngine``, what the node runs): ONNX Runtime fp32 and ONNX Runtime int8
(same backend), plus PyTorch fp32, the reference labels are compared with. The int8 engine is
calibrated on a sample drive the model was trained on (seed 1, 256x512; ``calibration_frames``
16 of its 64 frames), and measured on drives it never saw: the ``make demo`` drive (seed 0,
256x512, 32 frames) and the model card's test drive rendered at 512x1024 (seed 777, 16 frames).
Per size: mIoU against the ground truth (Cityscapes protocol) and label agreement with PyTorch
fp32 over every frame of the drive, then latency with the variants **interleaved** (one frame per
variant in turn, the same frames), several rounds, so load from other processes hits them alike.
Engine latency = the sum of the engine's stage timings (what the node reports); the inference
stage alone is listed too. At the end the headline ratio is measured **again** (``recheck``).

**Why these quantization settings** (``--methods``): the network alone through ONNX Runtime
sessions, quantized with each calibration method (MinMax, Entropy, Percentile), format (QDQ,
QOperator), weight granularity (per-channel, per-tensor) and activation type (uint8, int8) on the
same calibration inputs: agreement with fp32 on the held-out demo frames, latency interleaved,
calibration time. Also ``calibration_frames`` 4/16/64 and a deliberately broken calibration
(uniform noise frames), which shows what the parity gate has to catch.

**OpenVINO** (``--openvino``, needs ``pip install openvino nncf``): OpenVINO fp32, bf16
(``INFERENCE_PRECISION_HINT``) and INT8 (NNCF post-training quantization on the same calibration
inputs), against ONNX Runtime fp32 and int8, network alone, interleaved; compiled per size (static
shapes, OpenVINO's fast path). NNCF's usage telemetry is switched off (``NNCF_CI``).

**Your own ONNX file** (``--onnx-files``): ``model: onnx`` in fp32 against the same file in int8
(quantized by the engine on the same calibration drive, gated against the fp32 file on the CPU):
RegSeg with ``synthetic_street`` exported by ``seg-perception export`` (trained: mIoU means
something) and torchvision's LR-ASPP MobileNetV3 (a foreign architecture; random weights, so only
its speed and its int8/fp32 agreement mean something), on the demo drive, interleaved.

Run from the repository root with the package importable (``PYTHONPATH=.``)::

    python bench/int8.py --threads 1 --methods --openvino --onnx-files   # writes bench/results/int8_cpu.json

Prints markdown tables; the JSON records the machine and the load average at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("NNCF_CI", "1")  # NNCF sends usage telemetry unless told it runs in CI

from seg_perception.backends.calibration import read_calibration  # noqa: E402
from seg_perception.backends.quantize import QuantizationSettings, calibration_inputs, quantize_int8  # noqa: E402
from seg_perception.benchmark import machine_info  # noqa: E402
from seg_perception.engine import EngineConfig, SegmentationEngine  # noqa: E402
from seg_perception.evaluation.metrics import ConfusionMatrix, summarize  # noqa: E402
from seg_perception.evaluation.sample_drive import make_sample_drive, render_drive  # noqa: E402
from seg_perception.stats import percentiles  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = "synthetic_street"
#: (name, seed, frames, (H, W)) of the held-out drives.
DRIVES = (("demo drive (seed 0)", 0, 32, (256, 512)), ("test drive (seed 777)", 777, 16, (512, 1024)))
#: The quantization variants of --methods (the first is the shipped setting).
METHODS = {
    "qdq_perchannel_percentile_u8 (shipped)": QuantizationSettings(),
    "qdq_perchannel_minmax_u8": QuantizationSettings(method="minmax"),
    "qdq_perchannel_entropy_u8": QuantizationSettings(method="entropy"),
    "qdq_pertensor_percentile_u8": QuantizationSettings(per_channel=False),
    "qdq_perchannel_percentile_s8": QuantizationSettings(activations="int8"),
    "qoperator_perchannel_percentile_u8": QuantizationSettings(format="qoperator"),
    "qoperator_perchannel_minmax_u8": QuantizationSettings(format="qoperator", method="minmax"),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {message}", flush=True)


def interleave(runs: dict[str, Callable[[Any], Any]], frames: list[Any], rounds: int) -> dict[str, list[float]]:
    """Wall milliseconds of each run on each frame, the runs taking turns frame by frame."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(rounds):
        frame = frames[index % len(frames)]
        for name, run in runs.items():
            started = time.perf_counter()
            run(frame)
            samples[name].append((time.perf_counter() - started) * 1e3)
    return samples


# -- engines ---------------------------------------------------------------------------------------
def engine_comparison(calibration: Path, drives: dict[str, list[tuple[np.ndarray, np.ndarray]]], rounds: int,
                      cache: Path) -> dict[str, Any]:
    common = {"device": "cpu", "weights": WEIGHTS, "cache_dir": str(cache)}
    configs = {
        "torch_fp32 (reference)": EngineConfig(precision="fp32", backend="torch", **common),
        "onnxruntime_fp32": EngineConfig(precision="fp32", backend="onnxruntime", **common),
        "onnxruntime_int8": EngineConfig(precision="int8", backend="onnxruntime", calibration=str(calibration),
                                         **common),
    }
    engines, build_s = {}, {}
    for name, config in configs.items():
        started = time.perf_counter()
        engines[name] = SegmentationEngine(config)
        build_s[name] = time.perf_counter() - started
        log(f"built {name} in {build_s[name]:.1f} s")
    out: dict[str, Any] = {"engines": {n: e.description for n, e in engines.items()}, "build_s": build_s, "sizes": []}
    for drive, frames in drives.items():
        size = list(frames[0][0].shape[:2])
        case: dict[str, Any] = {"drive": drive, "size": size, "frames": len(frames), "variants": {}}
        reference_labels = []
        for name, engine in engines.items():
            confusion, agreement = ConfusionMatrix(), []
            for index, (rgb, gt) in enumerate(frames):
                labels = engine.infer(rgb).labels
                confusion.update_label_ids(labels, gt)
                if name.startswith("torch"):
                    reference_labels.append(labels)
                else:
                    agreement.append(float((labels == reference_labels[index]).mean()))
            metrics = summarize(confusion.matrix)
            case["variants"][name] = {"miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"],
                                      "agreement_mean": float(np.mean(agreement)) if agreement else 1.0,
                                      "agreement_min": float(np.min(agreement)) if agreement else 1.0}
            log(f"{drive} {size}: {name} mIoU {100 * metrics['miou']:.2f} %")
        timed = {n: e for n, e in engines.items() if not n.startswith("torch")}
        for name, stats in time_engines(timed, [f[0] for f in frames], rounds).items():
            case["variants"][name].update(stats)
        fp32, int8 = case["variants"]["onnxruntime_fp32"], case["variants"]["onnxruntime_int8"]
        case["speedup_p50"] = fp32["engine_ms"]["p50"] / int8["engine_ms"]["p50"]
        case["inference_speedup_p50"] = fp32["inference_ms"]["p50"] / int8["inference_ms"]["p50"]
        case["miou_delta_points"] = 100 * (int8["miou"] - fp32["miou"])
        log(f"{drive} {size}: int8 {case['speedup_p50']:.2f}x engine p50 ({case['inference_speedup_p50']:.2f}x "
            f"inference), mIoU {case['miou_delta_points']:+.2f} points")
        out["sizes"].append(case)
    out["_engines"] = engines
    return out


def time_engines(engines: dict[str, SegmentationEngine], frames: list[np.ndarray], rounds: int) -> dict[str, Any]:
    """Engine latency (sum of stage timings), inference stage and wall time per engine, interleaved."""
    totals: dict[str, list[float]] = {n: [] for n in engines}
    inference: dict[str, list[float]] = {n: [] for n in engines}

    def runner(name: str) -> Callable[[np.ndarray], None]:
        def run(rgb: np.ndarray) -> None:
            result = engines[name].infer(rgb)
            totals[name].append(result.total_ms)
            inference[name].append(result.timings_ms["inference"])
        return run

    for engine in engines.values():  # warm-up
        engine.infer(frames[0])
    walls = interleave({n: runner(n) for n in engines}, frames, rounds)
    return {n: {"engine_ms": percentiles(totals[n]), "inference_ms": percentiles(inference[n]),
                "wall_ms": percentiles(walls[n])} for n in engines}


def recheck(engines: dict[str, SegmentationEngine], frames: list[np.ndarray], rounds: int) -> dict[str, Any]:
    """The headline ratio once more, at the end of the run."""
    totals: dict[str, list[float]] = {"onnxruntime_fp32": [], "onnxruntime_int8": []}
    runs = {n: (lambda rgb, n=n: totals[n].append(engines[n].infer(rgb).total_ms)) for n in totals}
    interleave(runs, frames, rounds)
    p50 = {n: percentiles(v)["p50"] for n, v in totals.items()}
    return {"size": list(frames[0].shape[:2]), "rounds": rounds, "engine_ms_p50": p50,
            "speedup_p50": p50["onnxruntime_fp32"] / p50["onnxruntime_int8"], "load_average": os.getloadavg()}


# -- model: onnx ----------------------------------------------------------------------------------------
def onnx_files(calibration: Path, frames: list[tuple[np.ndarray, np.ndarray]], rounds: int,
               workdir: Path) -> dict[str, Any]:
    """fp32 against int8 of networks given as ONNX files (see the module docstring)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from byo_network import export_torchvision

    from seg_perception.cli import main as cli_main

    size = frames[0][0].shape[:2]
    folder = workdir / "onnx_files"
    folder.mkdir(parents=True, exist_ok=True)
    regseg = folder / "regseg_synthetic_street.onnx"
    if cli_main(["export", "--weights", WEIGHTS, "--out", str(regseg), "--size", f"{size[0]}x{size[1]}",
                 "--cache-dir", str(workdir / "cache")]) != 0:
        raise RuntimeError("seg-perception export failed")
    files = {"regseg (synthetic_street)": (regseg, 0.99),
             # random weights have near-ties everywhere: the gate is off, the agreement is reported
             "lraspp_mobilenetv3 (random weights)": (export_torchvision("lraspp", folder / "lraspp.onnx", size, True),
                                                    0.0)}
    out: dict[str, Any] = {}
    for name, (path, gate) in files.items():
        common = {"model": "onnx", "weights": str(path), "device": "cpu", "cache_dir": str(workdir / "cache"),
                  "parity_min_agreement": gate}
        started = time.perf_counter()
        engines = {"fp32": SegmentationEngine(EngineConfig(precision="fp32", **common))}
        engines["int8"] = SegmentationEngine(EngineConfig(precision="int8", calibration=str(calibration), **common))
        log(f"{name}: int8 built in {time.perf_counter() - started:.1f} s; {engines['int8'].description['parity']}")
        case: dict[str, Any] = {"file": path.name, "size": list(size), "frames": len(frames),
                                "parity": engines["int8"].description["parity"], "variants": {}}
        fp32_labels = [engines["fp32"].infer(rgb).labels for rgb, _ in frames]
        for variant, engine in engines.items():
            confusion = ConfusionMatrix()
            agreement = []
            for (rgb, gt), expected in zip(frames, fp32_labels, strict=True):
                labels = engine.infer(rgb).labels
                confusion.update_label_ids(labels, gt)
                agreement.append(float((labels == expected).mean()))
            case["variants"][variant] = {"miou": summarize(confusion.matrix)["miou"],
                                         "agreement_with_fp32": float(np.mean(agreement))}
        for variant, stats in time_engines(engines, [f[0] for f in frames], rounds).items():
            case["variants"][variant].update(stats)
        fp32_ms, int8_ms = (case["variants"][v]["engine_ms"]["p50"] for v in ("fp32", "int8"))
        case["speedup_p50"] = fp32_ms / int8_ms
        log(f"{name}: int8 {case['speedup_p50']:.2f}x engine p50, agreement "
            f"{100 * case['variants']['int8']['agreement_with_fp32']:.2f} %")
        out[name] = case
    return out


def onnx_files_table(results: dict[str, Any]) -> str:
    rows = ["| file (model: onnx) | size | fp32 p50 ms | int8 p50 ms | speed-up p50 | mIoU fp32 → int8 % | "
            "int8 labels = fp32's |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, case in results.items():
        fp32, int8 = case["variants"]["fp32"], case["variants"]["int8"]
        rows.append(f"| {name} | {case['size'][0]}x{case['size'][1]} | {fp32['engine_ms']['p50']:.1f} | "
                    f"{int8['engine_ms']['p50']:.1f} | {case['speedup_p50']:.2f}x | {100 * fp32['miou']:.2f} → "
                    f"{100 * int8['miou']:.2f} | {100 * int8['agreement_with_fp32']:.2f} % |")
    return "\n".join(rows)


# -- the network alone: quantization settings and OpenVINO --------------------------------------------
class Network:
    """The fp32 ONNX export and the normalised calibration / held-out inputs."""

    def __init__(self, calibration: Path, drives: dict[str, list[tuple[np.ndarray, np.ndarray]]], cache: Path) -> None:
        engine = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", backend="onnxruntime", weights=WEIGHTS,
                                                 cache_dir=str(cache)))
        self.fp32_path = engine.network.path
        self.threads = torch.get_num_threads()

        def prepare(rgbs: list[np.ndarray]) -> list[np.ndarray]:
            with torch.inference_mode():
                return [engine._preprocess(torch.from_numpy(np.ascontiguousarray(r))).numpy() for r in rgbs]

        self.prepare = prepare
        data = read_calibration(calibration, 64, holdout=0)
        self.calibration_64 = prepare(list(data.calibration))
        self.calibration = [self.calibration_64[i] for i in range(2, 64, 4)]  # 16 spread over the drive
        (small, large) = drives.values()
        self.held = {"256x512": prepare([f[0] for f in small]), "512x1024": prepare([f[0] for f in large[:4]])}
        self.ground_truth = {"256x512": [f[1] for f in small], "512x1024": [f[1] for f in large[:4]]}

    def session(self, model: bytes | Path) -> Callable[[np.ndarray], np.ndarray]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
        options.log_severity_level = 3
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                       providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"input": x})[0]

    def compare(self, runs: dict[str, Callable[[np.ndarray], np.ndarray]], rounds: dict[str, int],
                extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Agreement with the first run (fp32) on the held-out inputs, and interleaved latency."""
        reference = next(iter(runs.values()))
        out: dict[str, Any] = {name: dict(extra.get(name, {})) for name in runs}
        for size, inputs in self.held.items():
            expected = [reference(x).argmax(1) for x in inputs]
            for name, run in runs.items():
                labels = [run(x).argmax(1)[0].astype(np.uint8) for x in inputs]
                confusion = ConfusionMatrix()
                for predicted, gt in zip(labels, self.ground_truth[size], strict=True):
                    confusion.update_label_ids(predicted, gt)
                out[name][f"miou_{size}"] = summarize(confusion.matrix)["miou"]
                out[name][f"agreement_{size}"] = float(np.mean([(label == e[0]).mean()
                                                                for label, e in zip(labels, expected, strict=True)]))
            for run in runs.values():
                run(inputs[0])
            walls = interleave(runs, inputs, rounds[size])
            base = percentiles(walls[next(iter(runs))])["p50"]
            for name in runs:
                p50 = percentiles(walls[name])["p50"]
                out[name][f"p50_ms_{size}"] = p50
                out[name][f"speedup_{size}"] = base / p50
        return out


def methods(net: Network, rounds: dict[str, int]) -> dict[str, Any]:
    runs = {"fp32": net.session(net.fp32_path)}
    extra: dict[str, dict[str, Any]] = {}
    variants: list[tuple[str, QuantizationSettings, list[np.ndarray]]] = [
        (name, settings, net.calibration) for name, settings in METHODS.items()]
    shipped = QuantizationSettings()
    minmax = QuantizationSettings(method="minmax")
    variants += [("shipped, 16 consecutive frames (less varied)", shipped, net.calibration_64[:16]),
                 ("minmax, 16 consecutive frames (less varied)", minmax, net.calibration_64[:16]),
                 ("shipped, 4 calibration frames", shipped, net.calibration[::4]),
                 ("shipped, 64 calibration frames", shipped, net.calibration_64),
                 ("shipped, calibrated on noise (broken)", shipped,
                  [np.random.default_rng(i).uniform(-2, 2, x.shape).astype(np.float32)
                   for i, x in enumerate(net.calibration)])]
    for name, settings, inputs in variants:
        started = time.perf_counter()
        try:
            runs[name] = net.session(quantize_int8(net.fp32_path, inputs, settings))
        except Exception as exc:  # a variant onnxruntime cannot build is reported, not fatal
            extra[name] = {"failed": f"{type(exc).__name__}: {str(exc)[:200]}"}
            log(f"{name}: failed ({exc})")
            continue
        extra[name] = {"calibration_s": time.perf_counter() - started, "calibration_frames": len(inputs)}
        log(f"quantized {name} in {extra[name]['calibration_s']:.1f} s")
    return net.compare(runs, rounds, extra)


def openvino(net: Network, rounds: dict[str, int]) -> dict[str, Any]:
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        return {"skipped": f"{exc}: pip install openvino nncf"}
    core = ov.Core()
    sizes = {"256x512": (256, 512), "512x1024": (512, 1024)}

    def compiled(precision: str, quantize: bool) -> Callable[[np.ndarray], np.ndarray]:
        per_size = {}
        for hw in sizes.values():
            model = core.read_model(str(net.fp32_path))
            model.reshape([1, 3, *hw])
            if quantize:
                inputs = calibration_inputs(net.calibration, hw)
                model = nncf.quantize(model, nncf.Dataset(inputs), subset_size=len(inputs))
            settings = {"INFERENCE_NUM_THREADS": net.threads, "PERFORMANCE_HINT": "LATENCY",
                        "INFERENCE_PRECISION_HINT": precision}
            per_size[hw] = core.compile_model(model, "CPU", settings).create_infer_request()
        return lambda x: per_size[tuple(x.shape[2:])].infer({0: x})[0].copy()

    from seg_perception.backends.quantize import SETTINGS

    runs = {"onnxruntime_fp32": net.session(net.fp32_path),
            "onnxruntime_int8": net.session(quantize_int8(net.fp32_path, net.calibration, SETTINGS))}
    extra: dict[str, dict[str, Any]] = {}
    for name, precision, quantize in (("openvino_fp32", "f32", False), ("openvino_bf16", "bf16", False),
                                      ("openvino_int8_nncf", "f32", True)):
        started = time.perf_counter()
        runs[name] = compiled(precision, quantize)
        extra[name] = {"build_s": time.perf_counter() - started}
        log(f"built {name} in {extra[name]['build_s']:.1f} s")
    return {"openvino": ov.__version__, "nncf": nncf.__version__, **net.compare(runs, rounds, extra)}


# -- tables -----------------------------------------------------------------------------------------
def engine_table(engines: dict[str, Any]) -> str:
    rows = ["| drive | size | variant | engine p50 ms | p90 ms | inference p50 ms | speed-up p50 | mIoU % | "
            "agreement with torch fp32 (mean / min) |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for case in engines["sizes"]:
        for name, r in case["variants"].items():
            if "engine_ms" not in r:
                rows.append(f"| {case['drive']} | {case['size'][0]}x{case['size'][1]} | {name} | | | | | "
                            f"{100 * r['miou']:.2f} | reference |")
                continue
            speed = case["speedup_p50"] if name.endswith("int8") else 1.0
            rows.append(f"| {case['drive']} | {case['size'][0]}x{case['size'][1]} | {name} | "
                        f"{r['engine_ms']['p50']:.1f} | {r['engine_ms']['p90']:.1f} | {r['inference_ms']['p50']:.1f} | "
                        f"{speed:.2f}x | {100 * r['miou']:.2f} | {100 * r['agreement_mean']:.3f} % / "
                        f"{100 * r['agreement_min']:.3f} % |")
    return "\n".join(rows)


def network_table(results: dict[str, Any]) -> str:
    rows = ["| variant | agreement 256x512 | agreement 512x1024 | mIoU % 256x512 / 512x1024 | p50 ms 256x512 | "
            "speed-up | p50 ms 512x1024 | speed-up | build s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        if not isinstance(r, dict):
            continue
        if "failed" in r:
            rows.append(f"| {name} | failed: {r['failed'][:80]} ||||||||")
            continue
        build = r.get("calibration_s", r.get("build_s"))
        rows.append(f"| {name} | {100 * r['agreement_256x512']:.3f} % | {100 * r['agreement_512x1024']:.3f} % | "
                    f"{100 * r['miou_256x512']:.2f} / {100 * r['miou_512x1024']:.2f} | {r['p50_ms_256x512']:.1f} | "
                    f"{r['speedup_256x512']:.2f}x | {r['p50_ms_512x1024']:.1f} | "
                    f"{r['speedup_512x1024']:.2f}x | {'' if build is None else f'{build:.1f}'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime / OpenVINO intra-op threads")
    parser.add_argument("--rounds", type=int, default=24, help="interleaved rounds at 256x512 (half at 512x1024)")
    parser.add_argument("--methods", action="store_true", help="also compare quantization settings")
    parser.add_argument("--openvino", action="store_true", help="also measure OpenVINO fp32 / bf16 / INT8")
    parser.add_argument("--onnx-files", action="store_true", help="also measure int8 of networks given as ONNX files")
    parser.add_argument("--workdir", default=None, help="folder for the drives and the cache (default: temporary)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8_cpu.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="seg-int8-bench-"))
    report: dict[str, Any] = {
        "command": " ".join(sys.argv), "machine": machine_info(torch.device("cpu")), "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M"), "weights": WEIGHTS,
        "note": "variants interleaved frame by frame in one process; engine latency = sum of stage timings",
    }
    calibration = make_sample_drive(workdir / "calibration", 64, (256, 512), seed=1, progress=False).bag
    report["calibration"] = f"sample drive seed 1 (training data), 64 frames 256x512, bag {calibration}"
    drives = {name: list(render_drive(frames, *size, seed=seed)) for name, seed, frames, size in DRIVES}
    cache = workdir / "cache"
    rounds = {"256x512": args.rounds, "512x1024": max(4, args.rounds // 2)}

    def write() -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**report, "load_average_at_end": os.getloadavg()}, indent=2,
                                             default=str))

    engines = engine_comparison(calibration, drives, args.rounds, cache)
    live = engines.pop("_engines")
    report["engines"] = engines
    write()
    print("\n" + engine_table(engines) + "\n")
    if args.methods or args.openvino:
        net = Network(calibration, drives, cache)
        if args.methods:
            report["methods"] = methods(net, rounds)
            write()
            print("\n" + network_table(report["methods"]) + "\n")
        if args.openvino:
            report["openvino"] = openvino(net, rounds)
            write()
            print("\n" + network_table(report["openvino"]) + "\n")
    if args.onnx_files:
        report["onnx_files"] = onnx_files(calibration, drives[DRIVES[0][0]], args.rounds, workdir)
        write()
        print("\n" + onnx_files_table(report["onnx_files"]) + "\n")
    report["recheck"] = recheck(live, [f[0] for f in drives[DRIVES[0][0]]], args.rounds)
    write()
    print(f"recheck at 256x512: int8 {report['recheck']['speedup_p50']:.2f}x fp32 (engine p50)")
    print(f"load average at start {report['load_average_at_start']}, at end {os.getloadavg()} on {os.cpu_count()} CPUs")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
