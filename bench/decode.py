"""Decode cost of compressed camera frames: every CPU JPEG decoder side by side, PNG, and nvJPEG.

Frames are synthetic street-like images (smooth regions, edges and sensor noise, so they compress
like camera frames, not like white noise), encoded as image_transport's compressed plugin does
(JPEG quality 90 by default, PNG level 3). For each size it times:

* every CPU JPEG decoder :mod:`seg_perception.compressed` knows (simplejpeg, PyTurboJPEG, OpenCV,
  torchvision), reporting which are missing, and checks they agree with OpenCV's pixels;
* ``decode_to_rgb`` as the node calls it (format parse, header checks, the chosen decoder);
* PNG (8-bit RGB) through OpenCV;
* on CUDA, nvJPEG through ``decode_jpegs_cuda`` at batch 1 and batch 4 (per frame).

    python bench/decode.py [--sizes 512x1024 1024x2048] [--repeats 30] [--quality 90]

Writes ``bench/results/decode_<device>.json`` and prints a table. The preference order in
``compressed.JPEG_DECODER_PREFERENCE`` comes from these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seg_perception import compressed

RESULTS = Path(__file__).resolve().parent / "results"


def street_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 RGB frame with sky, buildings, road and noise: compresses like a camera frame."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frame = np.empty((height, width, 3), np.float32)
    horizon = 0.45 * height
    frame[:] = (130, 180, 235)
    frame[ys > horizon] = (128, 64, 128)
    blocks = rng.integers(60, 200, size=(width // 64 + 1, 3)).repeat(64, axis=0)[:width]
    building = (ys < horizon) & (ys > horizon - 0.3 * height * (1 + np.sin(xs / 97.0)) / 2)
    frame[building] = blocks[xs[building].astype(int)]
    frame += 20 * np.sin(xs / 13.0)[..., None] * (ys > horizon)[..., None]
    frame += rng.normal(0, 4, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def time_interleaved(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """p50/p90/min milliseconds of each candidate, timed in rounds (one call of each per round),
    so that load from other processes on a shared machine hits every candidate alike."""
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():
        fn()  # warm-up: lazy imports, allocator
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    out = {}
    for name, values in samples.items():
        values.sort()
        out[name] = {"p50": statistics.median(values), "p90": values[int(0.9 * (len(values) - 1))],
                     "min": values[0]}
    return out


def bench_size(height: int, width: int, repeats: int, quality: int) -> dict[str, object]:
    rgb = street_frame(height, width)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
    png = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])[1].tobytes()
    view = memoryview(jpeg)
    decoders = compressed.available_jpeg_decoders()
    reference = decoders["opencv"](view)
    row: dict[str, object] = {
        "size": f"{height}x{width}", "jpeg_bytes": len(jpeg), "png_bytes": len(png),
        "missing_decoders": [n for n in compressed.JPEG_DECODER_PREFERENCE if n not in decoders],
        "jpeg_ms": {}, "max_abs_diff_vs_opencv": {},
    }
    fmt = "rgb8; jpeg compressed bgr8"
    candidates: dict[str, Callable[[], object]] = {
        name: (lambda decode=decode: decode(view)) for name, decode in decoders.items()
    }
    candidates["decode_to_rgb_jpeg"] = lambda: compressed.decode_to_rgb(fmt, jpeg)
    candidates["decode_to_rgb_png"] = lambda: compressed.decode_to_rgb("png", png)
    timings = time_interleaved(candidates, repeats)
    for name, decode in decoders.items():
        row["jpeg_ms"][name] = timings[name]
        row["max_abs_diff_vs_opencv"][name] = int(np.abs(decode(view).astype(np.int16) - reference).max())
    row["decode_to_rgb_jpeg_ms"] = timings["decode_to_rgb_jpeg"]
    row["decode_to_rgb_png_ms"] = timings["decode_to_rgb_png"]
    row["chosen_cpu_decoder"] = compressed.jpeg_decoder()[0]
    if torch.cuda.is_available():
        for batch in (1, 4):
            payloads = [(fmt, jpeg)] * batch
            timing = time_interleaved({"nvjpeg": lambda payloads=payloads: compressed.decode_jpegs_cuda(payloads)},
                                      repeats)["nvjpeg"]
            row[f"nvjpeg_batch{batch}_ms_per_frame"] = {k: v / batch for k, v in timing.items()}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for size in args.sizes:
        height, width = (int(v) for v in size.split("x"))
        rows.append(bench_size(height, width, args.repeats, args.quality))
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "opencv": cv2.__version__, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
                    "load_average_at_start": os.getloadavg()},
        "quality": args.quality, "repeats": args.repeats, "results": rows,
    }
    out = args.out or RESULTS / f"decode_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'size':>10} {'decoder':>14} {'p50 ms':>8} {'p90 ms':>8} {'diff':>5}")
    for row in rows:
        for name, timing in row["jpeg_ms"].items():
            diff = row["max_abs_diff_vs_opencv"][name]
            print(f"{row['size']:>10} {name:>14} {timing['p50']:8.2f} {timing['p90']:8.2f} {diff:5d}")
        for key in ("decode_to_rgb_jpeg_ms", "decode_to_rgb_png_ms", "nvjpeg_batch1_ms_per_frame",
                    "nvjpeg_batch4_ms_per_frame"):
            if key in row:
                label = key.replace("_ms_per_frame", "").replace("_ms", "")
                print(f"{row['size']:>10} {label:>14} {row[key]['p50']:8.2f} {row[key]['p90']:8.2f}")
        if row["missing_decoders"]:
            print(f"{row['size']:>10} not installed: {', '.join(row['missing_decoders'])}")
    print(f"chosen CPU JPEG decoder: {rows[0]['chosen_cpu_decoder']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
