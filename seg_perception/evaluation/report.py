"""The ONE evaluation report, whatever was evaluated (offline or live, one camera or many, one
drive or hundreds): ``report.json`` (every number), ``report.md`` (the same numbers as tables),
``frames.csv`` (one row per frame of every camera of every drive), PNG plots (:mod:`.plots`) and,
for one camera, overlay images and an optional overlay video (:mod:`.overlays`).

``report.json`` holds:

* ``pooled``: ``metrics`` (Cityscapes metrics and the confusion matrix), ``frames`` (frame
  accounting: read, evaluated, not_evaluated/dropped/rejected with reasons, drop rate, whether
  every frame is accounted for), ``timing`` (frame latency and per-stage percentiles, throughput),
  ``drives_ok``/``drives_failed``: over every camera of every drive, from the SUM of confusion
  matrices;
* ``cameras``: the same per camera name over all drives (with the node's books when live);
* ``drives``: per drive its numbers, confusion matrix, tags and cameras, or why it failed;
* ``tags``: mIoU per tag value; ``execution``: who ran the frames (this process, Ray workers,
  or ``seg_node`` over DDS) and how fast; ``live``: the node process and DDS of a live run;
* ``mode``, ``engine``, ``config``, ``versions``, ``machine``, ``notes``, ``files``.

The tables of ``report.md`` and the console summary are formatted from that dict, so they show
the JSON's numbers. Per-frame records go to the CSV rather than the JSON so the JSON stays readable
for hundreds of drives; :func:`read_frames` reads them back typed.
"""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import math
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..cityscapes import CLASS_NAMES
from ..stats import percentiles
from .ledger import RECORD_FIELDS
from .plots import PLOTS, wanted_plots, write_plots
from .results import drive_rows, frame_rows, join_samples, pool

SCHEMA_VERSION = 2
FRAMES_CSV = "frames.csv"
#: frames.csv columns.
FRAME_COLUMNS = ("drive", "camera", *RECORD_FIELDS)
#: Parameters that describe the label set, not the run; left out of the report's config.
LABEL_PARAMS = ("class_names", "palette")
UNTRAINED_WARNING = ("UNTRAINED MODEL: no weights are configured, the network has random weights, "
                     "so mIoU and every accuracy number below are NOT meaningful (timing is).")
LATENCY_KINDS = {"offline": "wall time of one engine call (offline)",
                 "live": "end-to-end: header stamp (set at publish) -> labels received"}

__all__ = ["FRAMES_CSV", "PLOTS", "build_report", "read_frames", "summary_table", "write_report"]


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


def _short_input(info: dict[str, Any] | None) -> str:
    if not info:
        return "-"
    if info.get("transport") == "compressed":
        return f"{info.get('codec')}" + (f" q{info['jpeg_quality']}" if info.get("jpeg_quality") else "")
    return str(info.get("encoding", "raw"))


def frames_line(frames: dict[str, Any]) -> str:
    """Frame accounting in one line: read, evaluated, and every other outcome with its reasons."""
    parts = [f"{frames['read']} read", f"{frames['evaluated']} evaluated"]
    for key in ("not_evaluated", "dropped", "rejected"):
        group = frames[key]
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(group["by_reason"].items()) if v)
        parts.append(f"{group['total']} {key.replace('_', ' ')}" + (f" ({reasons})" if reasons else ""))
    if frames["unreadable"]:
        parts.append(f"{frames['unreadable']} unreadable")
    if frames.get("gt_without_image"):
        parts.append(f"{frames['gt_without_image']} ground truth without image")
    return ", ".join(parts)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _several(report: dict[str, Any]) -> bool:
    """More than one camera or drive (or a failed drive): the per-camera/per-drive views matter."""
    return len(report["cameras"]) > 1 or len(report["drives"]) > 1


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline numbers as (name, value) rows, for the console and report.md."""
    pooled = report["pooled"]
    metrics, timing, frames = pooled["metrics"], pooled["timing"], pooled["frames"]
    latency = timing["latency_ms"] or {}
    live = report["mode"] == "live"
    kind = " (end-to-end)" if live else " (engine call)"
    rows = [
        ("mIoU (19 classes) %", pct(metrics["miou"]) + (" (untrained: not meaningful)" if report["untrained"] else "")),
        ("category mIoU %", pct(metrics["category_miou"])),
        ("pixel accuracy %", pct(metrics["pixel_accuracy"])),
        ("latency p50 ms" + kind, ms(latency.get("p50"))),
        ("latency p99 ms" + kind, ms(latency.get("p99"))),
        ("inference p50 ms", ms(((timing["stages_ms"] or {}).get("inference") or {}).get("p50"))),
        ("throughput FPS",
         f"{timing['throughput_fps']:.2f}" + (f" (input {timing['input_fps']:.2f} FPS)" if live else "")),
        ("drop rate %", pct(frames["drop_rate"])),
        ("frames", frames_line(frames)),
    ]
    if _several(report) or pooled["drives_failed"]:
        rows += [("drives evaluated / failed", f"{pooled['drives_ok']} / {pooled['drives_failed']}"),
                 ("all frames accounted for", "yes" if frames["all_accounted"] else "NO")]
    return rows


def summary_table(report: dict[str, Any]) -> str:
    return markdown_table(("metric", "value"), summary_rows(report), "ll")


def notice_lines(report: dict[str, Any]) -> list[str]:
    """The block quotes a reader must see before any number: the untrained warning and the notes."""
    out = [f"> **{UNTRAINED_WARNING}**", ""] if report["untrained"] else []
    for note in report["notes"]:
        out += [f"> **Note:** {note}", ""]
    return out


def _stat_row(name: str, s: dict[str, float] | None) -> list[str]:
    s = s or {}
    return [name, ms(s.get("p50")), ms(s.get("p90")), ms(s.get("p99")), ms(s.get("max")), str(s.get("count", 0))]


def _how(report: dict[str, Any]) -> str:
    execution = report["execution"]
    if report["mode"] == "live":
        who = ("every camera replayed through one multi-camera seg_node" if report["live"]["multi_camera"]
               else "replayed through seg_node")
        return f"live: {who} over DDS at {execution['speed']:g}x the recorded rate"
    return (f"offline: frames through the engine directly, as fast as possible ({execution['runner']} runner, "
            f"{execution['workers']} worker(s))")


def _sources(report: dict[str, Any]) -> list[str]:
    """Where the frames came from: the bag and its topics (one drive), or how many drives."""
    drives = report["drives"]
    if len(drives) != 1 or drives[0]["status"] != "ok":
        return [f"- drives: {len(drives)} ({report['pooled']['drives_ok']} evaluated, "
                f"{report['pooled']['drives_failed']} failed)"]
    drive = drives[0]
    cams = drive["cameras"]
    if len(cams) == 1:
        (cam,) = cams.values()
        where = (f"{cam['frames']['in_bag']} images on {cam['image_topic']}, ground truth on {cam['gt_topic']}")
    else:
        where = f"cameras {', '.join(cams)}"
    storage = next(iter(cams.values()))["storage"] if cams else "?"
    return [f"- bag: {drive['path']} ({storage}, {where})"]


def _camera_sections(report: dict[str, Any]) -> list[str]:
    if len(report["cameras"]) < 2:
        return []
    rows = [[name, c["drives"], pct(c["metrics"]["miou"]), pct(c["metrics"]["pixel_accuracy"]), c["frames"]["read"],
             c["frames"]["evaluated"], ms((c["latency_ms"] or {}).get("p50")), ms((c["latency_ms"] or {}).get("p99"))]
            for name, c in report["cameras"].items()]
    return ["## Per camera", "", markdown_table(
        ("camera", "drives", "mIoU %", "pixel acc %", "frames", "evaluated", "p50 ms", "p99 ms"), rows), "",
        f"![mIoU per camera]({PLOTS['camera_miou']})", ""]


def _drive_sections(report: dict[str, Any]) -> list[str]:
    drives = report["drives"]
    if len(drives) < 2:
        return []
    rows = []
    for d in drives:
        tags = ", ".join(f"{k}={v}" for k, v in d["tags"].items()) or "-"
        if d["status"] != "ok":
            rows.append([d["name"], f"**FAILED** after {d['attempts']} attempt(s): {d['reason']}", tags,
                         "-", "-", "-", "-"])
            continue
        cams = ", ".join(f"{n} ({_short_input(c['input'])})" for n, c in d["cameras"].items())
        rows.append([d["name"], "ok" + (f" (retried: {len(d['retries'])})" if d["retries"] else ""), tags,
                     cams, d["frames"]["evaluated"], pct(d["miou"]), pct(d["pixel_accuracy"])])
    out = ["## Per drive", "", markdown_table(
        ("drive", "status", "tags", "cameras (input)", "evaluated", "mIoU %", "pixel acc %"), rows, "lllllrr"), "",
        f"![mIoU per drive]({PLOTS['drive_miou']})", ""]
    multi_camera = [d for d in drives if d["status"] == "ok" and len(d["cameras"]) > 1]
    if multi_camera:
        rows = [[d["name"], name, pct(c["miou"]), c["frames"]["evaluated"], ms((c["latency_ms"] or {}).get("p50"))]
                for d in multi_camera for name, c in d["cameras"].items()]
        out += ["### Per drive and camera", "", markdown_table(
            ("drive", "camera", "mIoU %", "evaluated", "p50 ms"), rows, "llrrr"), ""]
    return out


def _tag_sections(report: dict[str, Any]) -> list[str]:
    if not report["tags"]:
        return []
    out = ["## By tag", "", "mIoU of each tag value from the SUM of its drives' confusion matrices.", ""]
    for key, values in report["tags"].items():
        rows = [[value, v["drives"], v["failed_drives"], v["frames"], pct(v["miou"]), pct(v["pixel_accuracy"])]
                for value, v in values.items()]
        header = (key, "drives", "failed", "frames", "mIoU %", "pixel acc %")
        out += [f"### {key}", "", markdown_table(header, rows), ""]
    return out + [f"![mIoU per tag]({PLOTS['tag_miou']})", ""]


def _live_section(report: dict[str, Any]) -> list[str]:
    """Per camera: what was published, what the node did with it (its own books) and what came back."""
    live = report["live"]
    rows = []
    for name, c in report["cameras"].items():
        cam, books = c["live"], c["live"]["node_accounting"]
        rows.append([name, cam["published"], books["received"], books["processed"], books["dropped_total"],
                     books["rejected_total"], cam["transport_lost"], cam["results_received"],
                     ms((cam["node_end_to_end_ms"] or {}).get("p50")), f"{cam['throughput_fps']:.2f}",
                     "yes" if cam["reconciliation"]["all_accounted"] else "**NO**"])
    process = live["node_process"]
    return ["## Live run", "",
            f"One seg_node process (`{' '.join(process['command'])}`, exit code {process['exit_code']}, log "
            f"`{process['log']}`); DDS domain {live['dds']['domain_id']}, replay {live['dds']['replay_qos']}, node "
            f"input {live['dds']['node_input_qos']}; {live['warmup_frames']} warm-up frames per camera, not counted. "
            f"The node's books are read from its /diagnostics.",
            "", markdown_table(("camera", "published", "node received", "processed", "dropped", "rejected",
                                "transport lost", "labels back", "node e2e p50 ms", "FPS out", "accounted"), rows), ""]


def _execution_section(report: dict[str, Any]) -> list[str]:
    execution = report["execution"]
    rows = [[w["worker"], w["node"], w["pid"], w["tasks"], w["frames"], f"{w['busy_s']:.1f}", f"{w['fps']:.2f}",
             "yes" if w.get("alive", True) else "died"] for w in execution["per_worker"]]
    return ["## Execution", "", f"Runner {execution['runner']}"
            + (f", Ray {execution['ray_version']} ({execution['connection']}), cluster resources "
               f"`{execution['cluster_resources']}`" if execution["runner"] == "ray" else "")
            + f"; {execution['tasks']} task(s); {execution['elapsed_s']:.1f} s wall.", "",
            markdown_table(("worker", "node", "pid", "tasks", "frames", "busy s", "FPS", "alive"), rows), ""]


def markdown(report: dict[str, Any]) -> str:
    """report.md: the same numbers as report.json, as tables, with the plots and overlays."""
    engine, pooled = report["engine"] or {}, report["pooled"]
    metrics, timing, frames = pooled["metrics"], pooled["timing"], pooled["frames"]
    live = report["mode"] == "live"
    out = [f"# Segmentation evaluation: {report['title']}", ""]
    out += [f"- mode: {_how(report)}",
            f"- model: {engine.get('model')} {engine.get('variant')} ({engine.get('parameters', 0):,} parameters), "
            f"weights: {engine.get('weights')}",
            f"- device: {engine.get('device')}, precision {engine.get('precision')}",
            *([f"- parity gate: {engine['parity']}"] if engine.get("parity") else []),
            *([f"- **parity gate refused the requested engine**: {engine['parity_fallback']}"]
              if engine.get("parity_fallback") else []),
            *_sources(report),
            f"- images: {', '.join(report['inputs']['transports'])}",
            f"- created: {report['created']}", ""]
    out += notice_lines(report)
    out += ["## Summary", ""]
    if _several(report):
        out += ["Pooled numbers come from the SUM of the per-camera and per-drive confusion matrices.", ""]
    out += [summary_table(report), ""]
    out += ["## Per-class IoU (Cityscapes protocol, 19 train ids, ignored labels excluded)", "",
            f"![per-class IoU]({PLOTS['class_iou']})", ""]
    rows = [[name, pct(metrics["class_iou"][name])] for name in CLASS_NAMES] + [["**mean**", pct(metrics["miou"])]]
    out += [markdown_table(("class", "IoU %"), rows), ""]
    rows = [[name, pct(v)] for name, v in metrics["category_iou"].items()]
    rows.append(["**mean**", pct(metrics["category_miou"])])
    out += ["## Category IoU", "", markdown_table(("category", "IoU %"), rows), "",
            f"Pixel accuracy {pct(metrics['pixel_accuracy'])} %, mean class accuracy "
            f"{pct(metrics['mean_class_accuracy'])} %, over {metrics['evaluated_pixels']:,} evaluated pixels. "
            f"Confusion matrix (rows: ground truth) in report.json and "
            f"![confusion matrix]({PLOTS['confusion_matrix']})", ""]
    rows = [_stat_row(stage, s) for stage, s in (timing["stages_ms"] or {}).items()]
    kind = "end-to-end (stamp -> labels received)" if live else "engine call (wall)"
    rows.append(_stat_row(f"**{kind}**", timing["latency_ms"]))
    if timing.get("node_end_to_end_ms"):
        rows.append(_stat_row("node end-to-end (stamp -> publish)", timing["node_end_to_end_ms"]))
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
    rows.append(["all accounted for", "yes" if frames["all_accounted"] else "**NO**"])
    out += ["## Frame accounting", "", markdown_table(("frames", "count"), rows), "",
            f"Per-frame records (status, reason, latency, pixel accuracy): [{FRAMES_CSV}]({FRAMES_CSV}).", ""]
    out += _camera_sections(report) + _drive_sections(report) + _tag_sections(report)
    out += _live_section(report) if live else _execution_section(report)
    files = report["files"]
    if files["overlays"]:
        out += ["## Overlays", ""] + [f"![{Path(p).stem}]({p})" for p in files["overlays"]] + [""]
    if files["video"]:
        out += [f"Overlay video: [{files['video']}]({files['video']})", ""]
    config_rows = [[k, f"`{v}`"] for k, v in report["config"].items()]
    out += ["## Configuration", "", markdown_table(("parameter", "value"), config_rows, "ll"), ""]
    out += ["## Versions", "", markdown_table(("package", "version"),
                                              [[k, v or "-"] for k, v in report["versions"].items()], "ll"), ""]
    return "\n".join(out)


# -- assembling -------------------------------------------------------------------------------

def _title(drives: list[dict[str, Any]]) -> str:
    """One drive: its bag folder with that folder's parent (bags are often all called ``bag``)."""
    if len(drives) == 1:
        cameras = drives[0].get("cameras") or {}
        path = Path(drives[0]["path"]).resolve()
        name = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
        return f"`{name}`" + (f", {len(cameras)} cameras" if len(cameras) > 1 else "")
    return f"{len(drives)} drives"


def _pooled_timing(mode: str, drives: list[dict[str, Any]], execution: dict[str, Any],
                   live: dict[str, Any] | None) -> dict[str, Any]:
    cameras = [c for d in drives if d["status"] == "ok" for c in d["cameras"].values()]
    latency = percentiles([r[4] for c in cameras for r in c["records"] if r[4] is not None])
    timing: dict[str, Any] = {"latency_ms": latency, "latency_kind": LATENCY_KINDS[mode],
                              "throughput_fps": execution["throughput_fps"]}
    if live is not None:
        timing["stages_ms"] = live["stages_ms"]
        timing["node_end_to_end_ms"] = cameras[0]["live"]["node_end_to_end_ms"] if len(cameras) == 1 else None
        timing["input_fps"] = execution["input_fps"]
        timing["speed"] = execution["speed"]
    else:
        samples = join_samples(camera["stage_samples"] for camera in cameras)
        timing["stages_ms"] = {stage: percentiles(values) for stage, values in samples.items()}
    return timing


def _notes(drives: list[dict[str, Any]], pooled: dict[str, Any], notes: Iterable[str]) -> list[str]:
    out = list(notes)
    several_drives = len(drives) > 1
    for d in drives:
        if d["status"] != "ok":
            out.append(f"drive {d['name']} FAILED and is not in the pooled numbers: {d['reason']}")
            continue
        several_cameras = len(d["cameras"]) > 1
        for cam, c in d["cameras"].items():
            where = ", ".join(([f"drive {d['name']}"] if several_drives else [])
                              + ([f"camera {cam}"] if several_cameras or several_drives else []))
            out += [f"{where}: {n}" if where else n for n in c["notes"]]
    frames = pooled["frames"]
    if frames["not_evaluated"]["total"]:
        out.append(f"{frames['not_evaluated']['total']} frames came back but could not be evaluated: "
                   f"{frames['not_evaluated']['by_reason']}")
    if frames["gt_without_image"]:
        out.append(f"{frames['gt_without_image']} ground-truth messages have no image with the same stamp")
    if not frames["all_accounted"]:
        out.append("frame accounting does not add up (see the per-camera and per-drive frames)")
    if not frames["evaluated"]:
        out.append("no frame was evaluated: the accuracy numbers are undefined")
    return out


def build_report(*, mode: str, values: dict[str, Any], drives: list[dict[str, Any]], engine: dict[str, Any] | None,
                 execution: dict[str, Any], live: dict[str, Any] | None, notes: Iterable[str],
                 machine: dict[str, Any], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report dict of an evaluation from its merged drives (:func:`.results.merge_drive`,
    :func:`.results.failed_drive`) and how they were run."""
    pooled = pool(drives)
    ok = [d for d in drives if d["status"] == "ok"]
    transports = sorted({input_text(c["input"]) for d in ok for c in d["cameras"].values()})
    outputs = outputs or {}
    report = {
        "schema_version": SCHEMA_VERSION,
        "title": _title(drives),
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": mode,
        "untrained": not values["weights"],
        "config": {k: v for k, v in values.items() if k not in LABEL_PARAMS},
        "engine": engine,
        "versions": versions(),
        "machine": machine,
        "execution": execution,
        "inputs": {"drives": len(drives), "cameras": list(pooled["cameras"]), "transports": transports or ["-"]},
        "pooled": {"metrics": pooled["metrics"], "frames": pooled["frames"],
                   "timing": _pooled_timing(mode, drives, execution, live),
                   "drives_ok": pooled["drives_ok"], "drives_failed": pooled["drives_failed"]},
        "cameras": pooled["cameras"],
        "tags": pooled["tags"],
        "drives": drive_rows(drives),
        "live": live,
        "notes": _notes(drives, pooled, notes),
        "files": {"plots": {}, "frames_csv": FRAMES_CSV, "overlays": outputs.get("overlays", []),
                  "video": outputs.get("video"), "predictions": outputs.get("predictions")},
    }
    report["files"]["plots"] = wanted_plots(report)
    return report


# -- files ------------------------------------------------------------------------------------

def _typed(column: str, text: str) -> Any:
    if text == "":
        return None
    if column in ("index", "stamp_ns"):
        return int(text)
    if column in ("latency_ms", "pixel_accuracy", "sent_s"):
        return float(text)
    return text


def read_frames(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a report's ``frames.csv`` (a file or the report folder), typed: index and
    stamp as int, latency, pixel accuracy and send time as float, empty cells as None."""
    path = Path(path)
    if path.is_dir():
        path = path / FRAMES_CSV
    with path.open(newline="") as handle:
        return [{k: _typed(k, v) for k, v in row.items()} for row in csv.DictReader(handle)]


def write_report(report: dict[str, Any], drives: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """Write report.json, report.md, frames.csv and the plots into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    report = json_safe(report)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "frames_csv": out / FRAMES_CSV}
    with paths["frames_csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FRAME_COLUMNS)
        writer.writerows(frame_rows(drives))
    write_plots(report, read_frames(paths["frames_csv"]), out)
    paths.update({name: out / file for name, file in report["files"]["plots"].items()})
    paths["json"].write_text(json.dumps(report, indent=2, allow_nan=False))
    paths["markdown"].write_text(markdown(report))
    return paths
