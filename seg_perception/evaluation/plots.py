"""The report's PNG plots: per-class IoU, confusion matrix, latency histogram and latency over
time, and mIoU per camera, per drive and per tag value when there are several. Drawn from the
report dict (the numbers of ``report.json``) and the per-frame rows of ``frames.csv``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..cityscapes import CLASS_NAMES, PALETTE

#: Every plot a report can have; ``report.json``'s ``files.plots`` lists the ones it has.
PLOTS = {
    "class_iou": "class_iou.png",
    "confusion_matrix": "confusion_matrix.png",
    "latency_histogram": "latency_histogram.png",
    "latency_over_time": "latency_over_time.png",
    "camera_miou": "camera_miou.png",
    "drive_miou": "drive_miou.png",
    "tag_miou": "tag_miou.png",
}
#: Series drawn one by one (with a legend) in the latency-over-time plot; more are drawn as one.
MAX_SERIES = 8


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(title: str, untrained: bool) -> tuple[str, str]:
    return (title + "\nUNTRAINED MODEL: not meaningful" if untrained else title), ("red" if untrained else "black")


def plot_class_iou(metrics: dict[str, Any], title: str, untrained: bool, path: Path) -> None:
    """IoU per class in the class colours, with the mIoU as a dashed line."""
    miou = metrics["miou"]
    _bars(path, list(CLASS_NAMES), [metrics["class_iou"][n] for n in CLASS_NAMES], title, untrained,
          colors=PALETTE / 255.0, xlabel="IoU %", figsize=(8, 6), label_size=None,
          reference=None if miou is None else (miou, "mIoU"))


def plot_confusion(metrics: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    matrix = np.asarray(metrics["confusion_matrix"], dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    normalized = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=100)
    image = ax.imshow(normalized, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=90, fontsize=7)
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("Confusion matrix (row-normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_latency(report: dict[str, Any], frames: list[dict[str, Any]], hist_path: Path, time_path: Path) -> None:
    """Histogram of every frame's latency, and latency against time since the start of its
    camera's run (one series per drive and camera), dropped and rejected frames marked."""
    plt = _pyplot()
    live = report["mode"] == "live"
    label = "end-to-end latency ms (stamp -> labels)" if live else "engine call ms"
    done = [r for r in frames if r["latency_ms"] is not None]
    lat = [r["latency_ms"] for r in done]
    stats = report["pooled"]["timing"]["latency_ms"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if lat:
        ax.hist(lat, bins=min(40, max(5, len(lat) // 2)), color="tab:blue", edgecolor="black", linewidth=0.5)
        for key, style in (("p50", "--"), ("p99", ":")):
            ax.axvline(stats[key], color="black", linestyle=style, label=f"{key} {stats[key]:.1f} ms")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no frame came back", ha="center", transform=ax.transAxes)
    ax.set_xlabel(label)
    ax.set_ylabel("frames")
    ax.set_title(f"Latency ({report['mode']}, {(report['engine'] or {}).get('device')})")
    fig.tight_layout()
    fig.savefig(hist_path)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in done:
        series.setdefault((r["drive"], r["camera"]), []).append(r)
    several = len(series) > 1
    for index, ((drive, camera), rows) in enumerate(series.items()):
        name = f"{drive} {camera}" if several else "evaluated / returned"
        ax.plot([r["sent_s"] for r in rows], [r["latency_ms"] for r in rows], "o-", markersize=3,
                label=name if index < MAX_SERIES else None, color=None if index < MAX_SERIES else "tab:gray")
    lost = [r for r in frames if r["status"] in ("dropped", "rejected") and r["sent_s"] is not None]
    if lost:
        ax.plot([r["sent_s"] for r in lost], [0.0] * len(lost), "rx", label=f"dropped or rejected ({len(lost)})")
    ax.set_xlabel("time since first frame sent, s" if live else "time since start, s")
    ax.set_ylabel(label)
    ax.set_ylim(bottom=0)
    if done or lost:
        ax.legend(loc="upper left", fontsize=7 if several else None)
    ax.set_title("Latency over time")
    fig.tight_layout()
    fig.savefig(time_path)
    plt.close(fig)


def plot_bars(path: Path, labels: list[str], values: list[float | None], title: str, untrained: bool,
              reference: float | None = None) -> None:
    """Horizontal bars of mIoU percentages (None drawn as n/a), one per label."""
    _bars(path, labels, values, title, untrained, colors="tab:blue", xlabel="mIoU %",
          figsize=(8, max(2.5, 0.35 * len(labels) + 1.2)), label_size=8,
          reference=None if reference is None else (reference, "pooled"))


def _bars(path: Path, labels: list[str], values: list[float | None], title: str, untrained: bool, *,
          colors: Any, xlabel: str, figsize: tuple[float, float], label_size: int | None,
          reference: tuple[float, str] | None) -> None:
    """The one horizontal bar chart of fractions as percentages (None drawn as n/a), with an
    optional dashed reference line (value, name)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=figsize, dpi=100)
    y = np.arange(len(labels))
    ax.barh(y, [0.0 if v is None else 100 * v for v in values], color=colors, edgecolor="black", linewidth=0.5)
    for yi, v in zip(y, values, strict=True):
        ax.text((0 if v is None else 100 * v) + 1, yi, "n/a" if v is None else f"{100 * v:.1f}", va="center",
                fontsize=8)
    if reference is not None:
        value, name = reference
        ax.axvline(100 * value, color="black", linestyle="--", label=f"{name} {100 * value:.2f}")
        ax.legend(loc="lower right")
    ax.set_yticks(y, labels, fontsize=label_size)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel(xlabel)
    text, color = _title(title, untrained)
    ax.set_title(text, color=color)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def wanted_plots(report: dict[str, Any]) -> dict[str, str]:
    """The plots this report has: always class IoU, confusion matrix and latency; mIoU per camera,
    drive or tag value when there is more than one (or tags at all)."""
    names = ["class_iou", "confusion_matrix", "latency_histogram", "latency_over_time"]
    if len(report["cameras"]) > 1:
        names.append("camera_miou")
    if len(report["drives"]) > 1:
        names.append("drive_miou")
    if report["tags"]:
        names.append("tag_miou")
    return {name: PLOTS[name] for name in names}


def write_plots(report: dict[str, Any], frames: list[dict[str, Any]], out: Path) -> None:
    """Every plot listed in ``report["files"]["plots"]``, into ``out``."""
    wanted = report["files"]["plots"]
    pooled, untrained = report["pooled"]["metrics"], report["untrained"]
    engine = report["engine"] or {}
    plot_class_iou(pooled, f"Per-class IoU: {engine.get('model')} on {report['title']}", untrained,
                   out / PLOTS["class_iou"])
    plot_confusion(pooled, out / PLOTS["confusion_matrix"])
    plot_latency(report, frames, out / PLOTS["latency_histogram"], out / PLOTS["latency_over_time"])
    if "camera_miou" in wanted:
        cams = report["cameras"]
        plot_bars(out / PLOTS["camera_miou"], list(cams), [c["metrics"]["miou"] for c in cams.values()],
                  "mIoU per camera", untrained, pooled["miou"])
    if "drive_miou" in wanted:
        ok = [d for d in report["drives"] if d["status"] == "ok"]
        plot_bars(out / PLOTS["drive_miou"], [d["name"][:40] for d in ok], [d["miou"] for d in ok],
                  "mIoU per drive", untrained, pooled["miou"])
    if "tag_miou" in wanted:
        labels, values = [], []
        for key, tag_values in report["tags"].items():
            for value, v in tag_values.items():
                labels.append(f"{key}={value}"[:40])
                values.append(v["miou"])
        plot_bars(out / PLOTS["tag_miou"], labels, values, "mIoU per tag value", untrained, pooled["miou"])
