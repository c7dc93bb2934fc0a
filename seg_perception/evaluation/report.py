"""The evaluation report: ``report.json`` (every number), ``report.md`` (tables), PNG plots,
overlay images and an optional overlay video.

``report.md`` and the console summary are formatted from the same dict that is written to
``report.json`` by the functions here, so the numbers in the tables are the JSON's numbers.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..cityscapes import CLASS_NAMES, IGNORE_INDEX, PALETTE, label_ids_to_train_ids

UNTRAINED_WARNING = ("UNTRAINED MODEL: no weights are configured, the network has random weights, "
                     "so mIoU and every accuracy number below are NOT meaningful (timing is).")

PLOTS = {
    "class_iou": "class_iou.png",
    "latency_histogram": "latency_histogram.png",
    "latency_over_time": "latency_over_time.png",
    "confusion_matrix": "confusion_matrix.png",
}


# -- images -----------------------------------------------------------------------------------

def write_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 HxW or RGB HxWx3 array as PNG (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    if not cv2.imwrite(str(path), data):
        raise OSError(f"cannot write {path}")


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """Palette colours of train ids; ignored pixels black."""
    color = PALETTE[np.minimum(train_ids, len(PALETTE) - 1)]
    color[train_ids == IGNORE_INDEX] = 0
    return color


def overlay_panel(rgb: np.ndarray, prediction: np.ndarray, gt_label_ids: np.ndarray | None, index: int,
                  alpha: float = 0.5) -> np.ndarray:
    """Input | prediction over input | ground truth, side by side with captions."""
    blend = (rgb.astype(np.float32) * (1 - alpha) + colorize(prediction).astype(np.float32) * alpha)
    panels = [rgb.copy(), blend.round().astype(np.uint8)]
    captions = [f"frame {index}", "prediction"]
    if gt_label_ids is not None:
        panels.append(colorize(label_ids_to_train_ids(gt_label_ids)))
        captions.append("ground truth")
    scale = max(rgb.shape[1] / 1000.0, 0.3)
    thickness = max(1, int(round(scale * 2)))
    for panel, caption in zip(panels, captions, strict=True):
        (w, h), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        cv2.rectangle(panel, (0, 0), (w + 6, h + base + 6), (0, 0, 0), -1)
        cv2.putText(panel, caption, (3, h + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)
    return np.concatenate(panels, axis=1)


class VideoWriter:
    """MP4 of overlay panels (OpenCV's mp4v codec, which every OpenCV build can write)."""

    def __init__(self, path: Path, fps: float, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (shape[1], shape[0]))
        if not self._writer.isOpened():
            raise OSError(f"OpenCV cannot write video {path}")

    def write(self, panel: np.ndarray) -> None:
        if panel.shape == self.shape:
            self._writer.write(cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self._writer.release()


# -- formatting -------------------------------------------------------------------------------

def pct(value: float | None) -> str:
    """A ratio as a percentage with 2 decimals, or n/a."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def json_safe(value: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform(),
                                  "ros_distro": os.environ.get("ROS_DISTRO")}
    for dist in ("seg_perception", "torch", "numpy", "rosbags", "opencv-python-headless", "matplotlib",
                 "ros-rclpy", "cityscapesscripts", "ray"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def input_text(info: dict[str, Any] | None) -> str:
    """How the images were recorded: raw encoding, or compressed codec with its JPEG quality."""
    if not info:
        return "unknown (no frame read)"
    if info["transport"] == "compressed":
        quality = f", JPEG quality {info['jpeg_quality']}" if info.get("jpeg_quality") else ""
        return f"compressed {info['codec']} (format {info['format']!r}{quality})"
    return f"raw {info['encoding']}"


def frames_line(frames: dict[str, Any]) -> str:
    parts = [f"{frames['read']} read", f"{frames['evaluated']} evaluated"]
    for key in ("not_evaluated", "dropped", "rejected"):
        group = frames[key]
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(group["by_reason"].items()) if v)
        parts.append(f"{group['total']} {key.replace('_', ' ')}" + (f" ({reasons})" if reasons else ""))
    if frames["unreadable"]:
        parts.append(f"{frames['unreadable']} unreadable")
    return ", ".join(parts)


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline numbers as (name, value) rows, for the console and report.md."""
    metrics, timing, frames = report["metrics"], report["timing"], report["frames"]
    latency = timing["frame_latency_ms"] or {}
    live = report["mode"] == "live"
    rows = [
        ("mIoU (19 classes) %", pct(metrics["miou"]) + (" (untrained: not meaningful)" if report["untrained"] else "")),
        ("category mIoU %", pct(metrics["category_miou"])),
        ("pixel accuracy %", pct(metrics["pixel_accuracy"])),
        ("latency p50 ms" + (" (end-to-end)" if live else " (engine call)"), ms(latency.get("p50"))),
        ("latency p99 ms" + (" (end-to-end)" if live else " (engine call)"), ms(latency.get("p99"))),
        ("inference p50 ms", ms((timing["stages_ms"].get("inference") or {}).get("p50"))),
        ("throughput FPS", f"{timing['throughput_fps']:.2f}"
         + (f" (input {timing['input_fps']:.2f} FPS)" if live else "")),
        ("drop rate %", pct(frames["drop_rate"])),
        ("frames", frames_line(frames)),
    ]
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def notice_lines(report: dict[str, Any]) -> list[str]:
    """The block quotes a reader must see before any number: the untrained warning and the notes."""
    out = [f"> **{UNTRAINED_WARNING}**", ""] if report["untrained"] else []
    for note in report["notes"]:
        out += [f"> **Note:** {note}", ""]
    return out


def summary_table(report: dict[str, Any]) -> str:
    return markdown_table(("metric", "value"), summary_rows(report), "ll")


def _bag_name(report: dict[str, Any]) -> str:
    """The bag folder with its parent (bags are often all called ``bag``)."""
    path = Path(report["bag"]["path"]).resolve()
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _stat_row(name: str, s: dict[str, float] | None) -> list[str]:
    s = s or {}
    return [name, ms(s.get("p50")), ms(s.get("p90")), ms(s.get("p99")), ms(s.get("max")), str(s.get("count", 0))]


def markdown(report: dict[str, Any]) -> str:
    """report.md: the same numbers as report.json, as tables, with the plots and overlays."""
    engine, metrics, timing, frames = report["engine"], report["metrics"], report["timing"], report["frames"]
    live = report["mode"] == "live"
    out = [f"# Segmentation evaluation: `{_bag_name(report)}`", ""]
    how = (f"live: replayed through seg_node over DDS at {timing['speed']:g}x the recorded rate"
           if live else "offline: frames through the engine directly, as fast as possible")
    out += [f"- mode: {how}",
            f"- model: {engine['model']} {engine['variant']} ({engine['parameters']:,} parameters), "
            f"weights: {engine['weights']}",
            f"- device: {engine['device']}, precision {engine['precision']}",
            f"- bag: {report['bag']['path']} ({report['bag']['storage']}, {report['bag']['image_count']} images "
            f"on {report['bag']['image_topic']}, ground truth on {report['bag']['gt_topic']})",
            f"- images: {input_text(report['bag'].get('input'))}",
            f"- created: {report['created']}", ""]
    out += notice_lines(report)
    out += ["## Summary", "", summary_table(report), ""]
    out += ["## Per-class IoU (Cityscapes protocol, 19 train ids, ignored labels excluded)", "",
            f"![per-class IoU]({PLOTS['class_iou']})", ""]
    rows = [[name, pct(metrics["class_iou"][name])] for name in CLASS_NAMES]
    rows.append(["**mean**", pct(metrics["miou"])])
    out += [markdown_table(("class", "IoU %"), rows), ""]
    rows = [[name, pct(v)] for name, v in metrics["category_iou"].items()]
    rows.append(["**mean**", pct(metrics["category_miou"])])
    out += ["## Category IoU", "", markdown_table(("category", "IoU %"), rows), "",
            f"Pixel accuracy {pct(metrics['pixel_accuracy'])} %, mean class accuracy "
            f"{pct(metrics['mean_class_accuracy'])} %, over {metrics['evaluated_pixels']:,} evaluated pixels. "
            f"Confusion matrix (rows: ground truth) in report.json and "
            f"![confusion matrix]({PLOTS['confusion_matrix']})", ""]
    rows = [_stat_row(stage, s) for stage, s in timing["stages_ms"].items()]
    kind = "end-to-end (stamp -> labels received)" if live else "engine call (wall)"
    rows.append(_stat_row(f"**{kind}**", timing["frame_latency_ms"]))
    if live:
        rows.append(_stat_row("node end-to-end (stamp -> publish)", timing.get("node_end_to_end_ms")))
    out += ["## Timing (ms)", "", markdown_table(("stage", "p50", "p90", "p99", "max", "frames"), rows), "",
            f"Throughput {timing['throughput_fps']:.2f} FPS"
            + (f" out, for {timing['input_fps']:.2f} FPS in." if live else "."), "",
            f"![latency histogram]({PLOTS['latency_histogram']}) ![latency over time]({PLOTS['latency_over_time']})",
            ""]
    rows = [["frames in bag (metadata)", frames["in_bag"]], ["frames read", frames["read"]],
            ["evaluated", frames["evaluated"]]]
    for key in ("not_evaluated", "dropped", "rejected"):
        rows.append([key.replace("_", " "), frames[key]["total"]])
        rows += [[f"&nbsp;&nbsp;{reason}", n] for reason, n in sorted(frames[key]["by_reason"].items())]
    rows.append(["unreadable (in metadata, not readable)", frames["unreadable"]])
    out += ["## Frame accounting", "", markdown_table(("frames", "count"), rows), ""]
    if live:
        books = report["live"]["node_accounting"]
        rec = report["live"]["reconciliation"]
        out += [f"Node accounting: received {books['received']}, processed {books['processed']}, "
                f"dropped {books['dropped']}, rejected {books['rejected']}, in flight {books['in_flight']}; "
                f"published {report['live']['published']}, lost in transport {report['live']['transport_lost']}, "
                f"labels received {report['live']['results_received']}. All frames accounted for: "
                f"**{'yes' if rec['all_accounted'] else 'NO'}**.", ""]
    if report["files"]["overlays"]:
        out += ["## Overlays", ""] + [f"![{Path(p).stem}]({p})" for p in report["files"]["overlays"]] + [""]
    if report["files"]["video"]:
        out += [f"Overlay video: [{report['files']['video']}]({report['files']['video']})", ""]
    config_rows = [[k, f"`{v}`"] for k, v in report["config"].items()]
    out += ["## Configuration", "", markdown_table(("parameter", "value"), config_rows, "ll"), ""]
    out += ["## Versions", "", markdown_table(("package", "version"),
                                              [[k, v or "-"] for k, v in report["versions"].items()], "ll"), ""]
    return "\n".join(out)


# -- plots ------------------------------------------------------------------------------------

def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_class_iou(report: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    metrics = report["metrics"]
    values = [metrics["class_iou"][n] for n in CLASS_NAMES]
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    y = np.arange(len(CLASS_NAMES))
    heights = [0.0 if v is None else 100 * v for v in values]
    ax.barh(y, heights, color=PALETTE / 255.0, edgecolor="black", linewidth=0.5)
    for yi, v in zip(y, values, strict=True):
        ax.text((0 if v is None else 100 * v) + 1, yi, "n/a" if v is None else f"{100 * v:.1f}", va="center",
                fontsize=8)
    if metrics["miou"] is not None:
        ax.axvline(100 * metrics["miou"], color="black", linestyle="--", label=f"mIoU {100 * metrics['miou']:.2f}")
        ax.legend(loc="lower right")
    ax.set_yticks(y, CLASS_NAMES)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("IoU %")
    title = f"Per-class IoU: {report['engine']['model']} on {_bag_name(report)}"
    if report["untrained"]:
        title += "\nUNTRAINED MODEL: not meaningful"
    ax.set_title(title, color="red" if report["untrained"] else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_latency(report: dict[str, Any], per_frame: list[dict[str, Any]], hist_path: Path, time_path: Path) -> None:
    plt = _pyplot()
    live = report["mode"] == "live"
    label = "end-to-end latency ms (stamp -> labels)" if live else "engine call ms"
    done = [r for r in per_frame if r["latency_ms"] is not None]
    lat = [r["latency_ms"] for r in done]
    stats = report["timing"]["frame_latency_ms"]
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
    ax.set_title(f"Latency ({report['mode']}, {report['engine']['device']})")
    fig.tight_layout()
    fig.savefig(hist_path)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    if done:
        ax.plot([r["sent_s"] for r in done], lat, "o-", markersize=3, label="evaluated / returned")
    lost = [r for r in per_frame if r["status"] in ("dropped", "rejected") and r["sent_s"] is not None]
    if lost:
        ax.plot([r["sent_s"] for r in lost], [0.0] * len(lost), "rx", label=f"dropped or rejected ({len(lost)})")
    ax.set_xlabel("time since first frame sent, s" if live else "time since start, s")
    ax.set_ylabel(label)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left")
    ax.set_title("Latency over time")
    fig.tight_layout()
    fig.savefig(time_path)
    plt.close(fig)


def plot_confusion(report: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    matrix = np.asarray(report["metrics"]["confusion_matrix"], dtype=np.float64)
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


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write report.json, report.md and the plots into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    report = json_safe(report)
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    plot_class_iou(report, out / PLOTS["class_iou"])
    plot_latency(report, report["per_frame"], out / PLOTS["latency_histogram"], out / PLOTS["latency_over_time"])
    plot_confusion(report, out / PLOTS["confusion_matrix"])
    paths.update({name: out / file for name, file in PLOTS.items()})
    paths["json"].write_text(json.dumps(report, indent=2, allow_nan=False))
    paths["markdown"].write_text(markdown(report))
    return paths
