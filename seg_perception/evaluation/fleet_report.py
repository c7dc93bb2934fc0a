"""The report of a many-drive evaluation: ``report.json``, ``report.md``, PNG plots and
``frames.csv`` (one row per frame of every camera of every drive).

The tables in ``report.md`` are formatted from the dict written to ``report.json``. Per-frame
records go to the CSV rather than the JSON so the JSON stays readable for hundreds of drives.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..cityscapes import CLASS_NAMES
from . import report as R
from .fleet import RECORD_FIELDS

PLOTS = {
    "class_iou": "class_iou.png",
    "drive_miou": "drive_miou.png",
    "camera_miou": "camera_miou.png",
    "tag_miou": "tag_miou.png",
    "confusion_matrix": "confusion_matrix.png",
}
FRAMES_CSV = "frames.csv"


def _input_text(cam: dict[str, Any]) -> str:
    info = cam.get("input") or {}
    if info.get("transport") == "compressed":
        quality = info.get("jpeg_quality")
        return f"{info.get('codec')}" + (f" q{quality}" if quality else "")
    return info.get("encoding", "raw") if info else "-"


def frames_text(frames: dict[str, Any]) -> str:
    text = R.frames_line(frames)
    if frames.get("gt_without_image"):
        text += f", {frames['gt_without_image']} ground truth without image"
    return text


def markdown(report: dict[str, Any]) -> str:
    pooled, execution, engine = report["pooled"], report["execution"], report["engine"] or {}
    metrics, latency = pooled["metrics"], pooled["latency_ms"] or {}
    live = report["mode"] == "live"
    if live:
        title = f"# Segmentation evaluation of `{report['drives'][0]['name']}`, {len(report['cameras'])} cameras"
        how = (f"live: every camera replayed through one multi-camera seg_node over DDS at "
               f"{execution['speed']:g}x the recorded rate")
    else:
        title = f"# Segmentation evaluation of {len(report['drives'])} drives"
        how = (f"offline, frames through the engine directly ({execution['runner']} runner, "
               f"{execution['workers']} worker(s))")
    out = [title, ""]
    out += [f"- mode: {how}",
            f"- model: {engine.get('model')} {engine.get('variant')}, weights: {engine.get('weights')}",
            f"- device: {engine.get('device')}, precision {engine.get('precision')}",
            f"- images: {', '.join(report['inputs']['transports'])}",
            f"- created: {report['created']}", ""]
    out += R.notice_lines(report)
    rows = [
        ("pooled mIoU (19 classes) %", R.pct(metrics["miou"])),
        ("pooled category mIoU %", R.pct(metrics["category_miou"])),
        ("pooled pixel accuracy %", R.pct(metrics["pixel_accuracy"])),
        ("drives evaluated / failed", f"{pooled['drives_ok']} / {pooled['drives_failed']}"),
        ("frames", frames_text(pooled["frames"])),
        ("all frames accounted for", "yes" if pooled["frames"]["all_accounted"] else "NO"),
        (("end-to-end" if live else "engine call") + " p50 / p99 ms",
         f"{R.ms(latency.get('p50'))} / {R.ms(latency.get('p99'))}"),
        ("throughput FPS (all " + ("cameras)" if live else "workers)"), f"{execution['throughput_fps']:.2f}"),
    ]
    out += ["## Summary", "", f"Pooled numbers come from the SUM of the per-{'camera' if live else 'drive'} "
            "confusion matrices.", "",
            R.markdown_table(("metric", "value"), rows, "ll"), ""]
    cam_rows = [[name, c["drives"], R.pct(c["metrics"]["miou"]), R.pct(c["metrics"]["pixel_accuracy"]),
                 c["frames"]["read"], c["frames"]["evaluated"],
                 R.ms((c["latency_ms"] or {}).get("p50")), R.ms((c["latency_ms"] or {}).get("p99"))]
                for name, c in report["cameras"].items()]
    out += ["## Per camera", "", R.markdown_table(
        ("camera", "drives", "mIoU %", "pixel acc %", "frames", "evaluated", "p50 ms", "p99 ms"), cam_rows), "",
        f"![mIoU per camera]({PLOTS['camera_miou']})", ""]
    drive_rows = []
    for d in report["drives"]:
        tags = ", ".join(f"{k}={v}" for k, v in d["tags"].items()) or "-"
        if d["status"] != "ok":
            drive_rows.append([d["name"], f"**FAILED** after {d['attempts']} attempt(s): {d['reason']}", tags,
                               "-", "-", "-", "-"])
            continue
        cams = ", ".join(f"{n} ({_input_text(c)})" for n, c in d["cameras"].items())
        drive_rows.append([d["name"], "ok" + (f" (retried: {len(d['retries'])})" if d["retries"] else ""), tags,
                           cams, d["frames"]["evaluated"], R.pct(d["miou"]), R.pct(d["pixel_accuracy"])])
    out += ["## Per drive", "", R.markdown_table(
        ("drive", "status", "tags", "cameras (input)", "evaluated", "mIoU %", "pixel acc %"), drive_rows,
        "lllllrr"), "", f"![mIoU per drive]({PLOTS['drive_miou']})", ""]
    multi_camera = [d for d in report["drives"] if d["status"] == "ok" and len(d["cameras"]) > 1]
    if multi_camera:
        rows = [[d["name"], name, R.pct(c["miou"]), c["frames"]["evaluated"], R.ms((c["latency_ms"] or {}).get("p50"))]
                for d in multi_camera for name, c in d["cameras"].items()]
        out += ["### Per drive and camera", "", R.markdown_table(
            ("drive", "camera", "mIoU %", "evaluated", "p50 ms"), rows, "llrrr"), ""]
    if report["tags"]:
        out += ["## By tag", "", "mIoU of each tag value from the SUM of its drives' confusion matrices.", ""]
        for key, values in report["tags"].items():
            rows = [[value, v["drives"], v["failed_drives"], v["frames"], R.pct(v["miou"]), R.pct(v["pixel_accuracy"])]
                    for value, v in values.items()]
            out += [f"### {key}", "", R.markdown_table((key, "drives", "failed", "frames", "mIoU %", "pixel acc %"),
                                                       rows), ""]
        out += [f"![mIoU per tag]({PLOTS['tag_miou']})", ""]
    rows = [[name, R.pct(metrics["class_iou"][name])] for name in CLASS_NAMES] + [["**mean**", R.pct(metrics["miou"])]]
    out += ["## Pooled per-class IoU", "", f"![per-class IoU]({PLOTS['class_iou']})", "",
            R.markdown_table(("class", "IoU %"), rows), "", f"![confusion matrix]({PLOTS['confusion_matrix']})", ""]
    out += _live_section(report) if live else _execution_section(report)
    config_rows = [[k, f"`{v}`"] for k, v in report["config"].items()]
    out += ["## Configuration", "", R.markdown_table(("parameter", "value"), config_rows, "ll"), ""]
    out += ["## Versions", "", R.markdown_table(("package", "version"),
                                                [[k, v or "-"] for k, v in report["versions"].items()], "ll"), ""]
    return "\n".join(out)


def _live_section(report: dict[str, Any]) -> list[str]:
    """Per camera: what was published, what the node did with it (its own books) and what came back."""
    live = report["live"]
    rows = []
    for name, c in report["cameras"].items():
        cam, books = c["live"], c["live"]["node_accounting"]
        rows.append([name, cam["published"], books["received"], books["processed"], books["dropped_total"],
                     books["rejected_total"], cam["transport_lost"], cam["results_received"],
                     R.ms((cam["node_end_to_end_ms"] or {}).get("p50")), f"{cam['throughput_fps']:.2f}",
                     "yes" if cam["reconciliation"]["all_accounted"] else "**NO**"])
    stages = [[stage, R.ms((s or {}).get("p50")), R.ms((s or {}).get("p99"))] for stage, s in live["stages_ms"].items()]
    process = live["node_process"]
    return ["## Live run", "",
            f"One seg_node process (`{' '.join(process['command'])}`, exit code {process['exit_code']}, log "
            f"`{process['log']}`); DDS domain {live['dds']['domain_id']}, replay {live['dds']['replay_qos']}, node "
            f"input {live['dds']['node_input_qos']}; {live['warmup_frames']} warm-up frames per camera, not counted.",
            "", R.markdown_table(("camera", "published", "node received", "processed", "dropped", "rejected",
                                  "transport lost", "labels back", "node e2e p50 ms", "FPS out", "accounted"), rows),
            "", "Shared engine stages (ms, the node's diagnostics):", "",
            R.markdown_table(("stage", "p50", "p99"), stages), ""]


def _execution_section(report: dict[str, Any]) -> list[str]:
    execution = report["execution"]
    out: list[str] = []
    rows = [[w["worker"], w["node"], w["pid"], w["tasks"], w["frames"], f"{w['busy_s']:.1f}", f"{w['fps']:.2f}",
             "yes" if w.get("alive", True) else "died"] for w in execution["per_worker"]]
    out += ["## Execution", "", f"Runner {execution['runner']}"
            + (f", Ray {execution['ray_version']} ({execution['connection']}), cluster resources "
               f"`{execution['cluster_resources']}`" if execution["runner"] == "ray" else "")
            + f"; {execution['elapsed_s']:.1f} s wall.", "",
            R.markdown_table(("worker", "node", "pid", "tasks", "frames", "busy s", "FPS", "alive"), rows), "",
            f"Per-frame records: [{FRAMES_CSV}]({FRAMES_CSV}).", ""]
    return out


def _bars(path: Path, labels: list[str], values: list[float | None], title: str, untrained: bool,
          reference: float | None = None, xlabel: str = "mIoU %") -> None:
    """Horizontal bars of percentages (None drawn as n/a), one per label."""
    plt = R._pyplot()
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.35 * len(labels) + 1.2)), dpi=100)
    y = np.arange(len(labels))
    heights = [0.0 if v is None else 100 * v for v in values]
    ax.barh(y, heights, color="tab:blue", edgecolor="black", linewidth=0.5)
    for yi, v in zip(y, values, strict=True):
        ax.text((0 if v is None else 100 * v) + 1, yi, "n/a" if v is None else f"{100 * v:.1f}", va="center",
                fontsize=8)
    if reference is not None:
        ax.axvline(100 * reference, color="black", linestyle="--", label=f"pooled {100 * reference:.2f}")
        ax.legend(loc="lower right")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel(xlabel)
    if untrained:
        title += "\nUNTRAINED MODEL: not meaningful"
    ax.set_title(title, color="red" if untrained else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(report: dict[str, Any], out: Path) -> None:
    pooled, untrained = report["pooled"]["metrics"], report["untrained"]
    _bars(out / PLOTS["class_iou"], list(CLASS_NAMES), [pooled["class_iou"][n] for n in CLASS_NAMES],
          "Pooled per-class IoU", untrained, pooled["miou"], xlabel="IoU %")
    ok = [d for d in report["drives"] if d["status"] == "ok"]
    _bars(out / PLOTS["drive_miou"], [d["name"][:40] for d in ok], [d["miou"] for d in ok], "mIoU per drive",
          untrained, pooled["miou"])
    cams = report["cameras"]
    _bars(out / PLOTS["camera_miou"], list(cams), [c["metrics"]["miou"] for c in cams.values()],
          "mIoU per camera", untrained, pooled["miou"])
    labels, values = [], []
    for key, tag_values in report["tags"].items():
        for value, v in tag_values.items():
            labels.append(f"{key}={value}"[:40])
            values.append(v["miou"])
    _bars(out / PLOTS["tag_miou"], labels or ["(no tags)"], values or [None], "mIoU per tag value", untrained,
          pooled["miou"])
    R.plot_confusion({"metrics": pooled}, out / PLOTS["confusion_matrix"])


def write_report(report: dict[str, Any], frame_rows: Any, out: Path) -> dict[str, Path]:
    """report.json, report.md, plots and frames.csv in ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    report = R.json_safe(report)
    with (out / FRAMES_CSV).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["drive", "camera", *RECORD_FIELDS])
        writer.writerows(frame_rows)
    write_plots(report, out)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "frames_csv": out / FRAMES_CSV}
    paths.update({name: out / file for name, file in PLOTS.items()})
    paths["json"].write_text(json.dumps(report, indent=2, allow_nan=False))
    paths["markdown"].write_text(markdown(report))
    return paths
