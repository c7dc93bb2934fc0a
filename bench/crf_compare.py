"""Compare the exact CPU dense CRF (pydensecrf2) with the PyTorch mean field on the same inputs.

Inputs are synthetic street-like frames with known labels (road, sidewalk, building, vegetation,
sky, car, pole; textured colours) and "network-like" logits: the one-hot labels seen at stride 8
(block average, bilinear upsample, so boundaries are blurred) plus spatially correlated noise.
Optionally also the logits of a randomly initialised DeepLab v1 (nearly uniform unaries, a stress
test of the pairwise terms only). Reports agreement of the two CRFs' labels, time per frame, and
mIoU against the synthetic ground truth before and after each CRF.

    python bench/crf_compare.py [--sizes 256x512 512x1024] [--device cpu] [--model]

Writes ``bench/results/crf_compare_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seg_perception.crf import CRFConfig, build_crf

#: Class colours (RGB) of the synthetic scene: road, sidewalk, building, vegetation, sky, car, pole.
CLASS_COLOURS = np.array(
    [[128, 64, 128], [200, 180, 190], [110, 100, 95], [70, 130, 40], [130, 180, 235],
     [30, 40, 150], [160, 160, 160]], dtype=np.float32,
)


def street_scene(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A street-like RGB frame (uint8 HxWx3) and its labels (int64 HxW), scaled to the size."""
    rng = np.random.default_rng(seed)
    labels = np.full((height, width), 4, np.int64)  # sky
    ys, xs = np.mgrid[0:height, 0:width]
    horizon = int(0.45 * height)
    # Buildings with a ragged roofline on both sides, trees in between.
    heights = rng.integers(0.1 * height, 0.35 * height, size=width // 32 + 1)
    roof = horizon - heights.repeat(32)[:width]
    labels[(ys >= roof[None, :]) & (ys < horizon)] = 2
    for cx in rng.integers(0, width, size=3):
        r = int(rng.integers(0.06 * height, 0.12 * height))
        labels[(ys - (horizon - r)) ** 2 + (xs - cx) ** 2 < r * r] = 3
    # Road trapezoid with sidewalks on both sides.
    below = ys >= horizon
    half = (ys - horizon) / max(1, height - horizon) * 0.5 * width + 0.05 * width
    labels[below] = 1
    labels[below & (np.abs(xs - width / 2) < half)] = 0
    # Cars (boxes) on the road, poles (thin bars) on the sidewalk.
    for _ in range(3):
        cy = int(rng.integers(horizon + 0.1 * height, 0.9 * height))
        cx = int(rng.integers(0.3 * width, 0.7 * width))
        h, w = int(0.08 * height * cy / horizon), int(0.12 * width * cy / height)
        labels[max(0, cy - h):cy, max(0, cx - w // 2):cx + w // 2] = 5
    for px in (int(0.12 * width), int(0.88 * width)):
        labels[int(0.25 * height):int(0.8 * height), px:px + max(2, width // 200)] = 6
    colours = CLASS_COLOURS[labels]
    shading = rng.normal(0, 12, (height // 8 + 1, width // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)
    image = colours + shading[:height, :width] + rng.normal(0, 6, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), labels


def noisy_logits(labels: np.ndarray, classes: int, seed: int) -> torch.Tensor:
    """Logits a stride-8 network might give: blurred one-hot evidence plus correlated noise."""
    rng = np.random.default_rng(seed)
    height, width = labels.shape
    onehot = torch.from_numpy(np.eye(classes, dtype=np.float32)[labels]).permute(2, 0, 1)[None]
    coarse = F.interpolate(F.avg_pool2d(onehot, 8, ceil_mode=True), size=(height, width),
                           mode="bilinear", align_corners=False)
    blobs = torch.from_numpy(rng.normal(0, 1.2, (1, classes, height // 16 + 1, width // 16 + 1)))
    blobs = F.interpolate(blobs.float(), size=(height, width), mode="bilinear", align_corners=False)
    pixel = torch.from_numpy(rng.normal(0, 0.6, (1, classes, height, width)).astype(np.float32))
    return 3.0 * coarse + blobs + pixel


def model_logits(image: np.ndarray, classes: int) -> torch.Tensor:
    """Logits of a randomly initialised DeepLab v1 (seed 0) on the ImageNet-normalised frame."""
    from seg_perception.models import build_model

    torch.manual_seed(0)
    model = build_model("deeplabv1", classes).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - mean) / std
    with torch.no_grad():
        return model(x)


def miou(pred: np.ndarray, labels: np.ndarray, classes: int) -> float:
    ious = []
    for c in range(classes):
        union = np.logical_or(pred == c, labels == c).sum()
        if union:
            ious.append(np.logical_and(pred == c, labels == c).sum() / union)
    return float(np.mean(ious))


def timed(crf, logits: torch.Tensor, image: np.ndarray, repeats: int) -> tuple[torch.Tensor, float]:
    """Refined probabilities (on the CPU) and the median time per frame."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        probs = crf(logits, image)
        if probs.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return probs.cpu(), float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["256x512", "512x1024"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device of the logits (where mode 'gpu' runs)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", action="store_true", help="also random-init DeepLab v1 logits")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    exact = build_crf(CRFConfig(mode="cpu"))
    approx = build_crf(CRFConfig(mode="gpu"), device=args.device)
    classes = len(CLASS_COLOURS)
    rows = []
    for size in args.sizes:
        height, width = map(int, size.split("x"))
        image, labels = street_scene(height, width, seed=height)
        inputs = {"noisy": noisy_logits(labels, classes, seed=width)}
        if args.model:
            inputs["deeplabv1_random"] = model_logits(image, classes)
        for name, logits in inputs.items():
            logits = logits.to(args.device)
            raw = logits.argmax(1)[0].cpu().numpy()
            cpu_probs, cpu_s = timed(exact, logits, image, args.repeats)
            gpu_probs, gpu_s = timed(approx, logits, image, args.repeats)
            cpu_pred, gpu_pred = cpu_probs.argmax(1)[0].numpy(), gpu_probs.argmax(1)[0].numpy()
            rows.append({
                "size": size, "logits": name,
                "agreement_pct": 100.0 * float((cpu_pred == gpu_pred).mean()),
                "max_abs_prob_diff": float((cpu_probs - gpu_probs).abs().max()),
                "cpu_s": cpu_s, "gpu_s": gpu_s,
                "miou_raw": miou(raw, labels, classes),
                "miou_cpu": miou(cpu_pred, labels, classes),
                "miou_gpu": miou(gpu_pred, labels, classes),
            })
            r = rows[-1]
            print(f"{size:>9} {name:<17} agree {r['agreement_pct']:6.2f}% "
                  f"(max |dp| {r['max_abs_prob_diff']:.1e})  cpu {cpu_s:7.3f}s  "
                  f"gpu({args.device}) {gpu_s:7.3f}s  mIoU raw {r['miou_raw']:.3f} "
                  f"cpu {r['miou_cpu']:.3f} gpu {r['miou_gpu']:.3f}", flush=True)

    result = {
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": args.threads, "device": args.device, "crf_defaults": vars(CRFConfig()),
        "rows": rows,
    }
    out = Path(__file__).resolve().parent / "results" / f"crf_compare_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
