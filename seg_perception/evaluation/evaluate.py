"""One evaluation run: settings -> replay (offline or live) -> report dict -> files in ``out``."""

from __future__ import annotations

import datetime
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import params as P
from ..benchmark import machine_info
from ..engine import SegmentationEngine, resolve_device
from . import report as R
from .bag_images import describe_input
from .bag_io import GT_TOPIC, IMAGE_TOPIC, DriveBag
from .metrics import summarize
from .replay import LIVE_INPUT_DEPTH, MODES, Ledger, check_model_classes, records_as_dicts, run_live, run_offline

#: Parameters that describe the label set, not the run; left out of the report's config.
LABEL_PARAMS = ("class_names", "palette")


def resolve_params(config: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Node parameters from a ROS params file (or the defaults) with command-line overrides.

    On the CPU, fp16 (the shipped default) becomes fp32 unless it was asked for explicitly.
    """
    values = P.load_params_file(config) if config else P.defaults()
    for name, value in overrides.items():
        if value is not None:
            values[name] = value
    if overrides.get("precision") is None and values["precision"] == "fp16" \
            and resolve_device(values["device"]).type == "cpu":
        values["precision"] = "fp32"
    problems = P.validate_params(values)
    if problems:
        raise ValueError("invalid settings: " + "; ".join(problems))
    return values


def node_overrides(values: dict[str, Any], frames: int) -> dict[str, Any]:
    """Parameters to start the node with: every non-default value, typed like its declaration.

    The latency window is widened to the whole drive so the per-stage percentiles cover every
    frame, not only the last few hundred.
    """
    out: dict[str, Any] = {}
    for spec in P.PARAMS:
        value = values[spec.name]
        if spec.read_only or value == spec.default:
            continue
        if isinstance(spec.default, float) and isinstance(value, int):
            value = float(value)
        elif isinstance(spec.default, list):
            value = [type(spec.default[0])(v) for v in value] if spec.default else list(value)
        out[spec.name] = value
    window_range = P.PARAMS_BY_NAME["latency_window"].range
    out["latency_window"] = int(min(window_range[1], max(values["latency_window"], frames)))
    return out


@dataclass
class EvalOptions:
    bag: Path
    out: Path
    mode: str = "live"
    speed: float = 1.0
    overlays: int = 4
    video: bool = False
    save_predictions: bool = False
    domain_id: int | None = None
    seed: int = 0
    #: torch intra-op threads; None keeps torch's default.
    threads: int | None = None
    progress: bool = True
    image_topic: str = IMAGE_TOPIC
    gt_topic: str = GT_TOPIC
    #: The node's input QoS in a live run: reliable measures the node, not the transport.
    input_qos: str = "reliable"


def _clean_outputs(out: Path) -> None:
    """Remove images a previous run left in ``out`` (only files this tool writes)."""
    for sub in ("overlays", "predictions"):
        for path in (out / sub).glob("*.png"):
            path.unlink()
    for name in ("overlay.mp4",):
        (out / name).unlink(missing_ok=True)


def _frames_section(ledger: Ledger, bag: DriveBag, live: dict[str, Any] | None) -> dict[str, Any]:
    groups: dict[str, Counter] = {"not_evaluated": Counter(), "dropped": Counter(), "rejected": Counter()}
    for record in ledger.records:
        if record.status in groups:
            groups[record.status][record.reason or "unattributed"] += 1
    totals = {k: sum(v.values()) for k, v in groups.items()}
    if live is not None:  # the node knows why it dropped or rejected; per frame we only see absence
        books = live["node_accounting"]
        groups["dropped"] = Counter(books["dropped"])
        for lost in ("transport_lost", "output_lost"):
            if live[lost]:
                groups["dropped"][lost] = live[lost]
        groups["rejected"] = Counter(books["rejected"])
        # The node's totals: it may reject a frame the evaluator could not judge (a compressed
        # frame that does not decode), which the ledger holds as absent (dropped).
        totals.update({k: sum(groups[k].values()) for k in ("dropped", "rejected")})
    read = len(ledger.records)
    return {
        "in_bag": bag.info.image_count,
        "read": read,
        "evaluated": ledger.counts()["evaluated"],
        **{k: {"total": totals[k], "by_reason": dict(groups[k])} for k in groups},
        "unreadable": bag.pairing.unreadable_images,
        "gt_without_image": bag.pairing.gt_without_image,
        "drop_rate": (totals["dropped"] + totals["rejected"]) / read if read else None,
    }


def _first_input(options: EvalOptions) -> dict[str, Any] | None:
    """How the bag's images are stored (raw encoding, or codec and JPEG quality), from frame 0."""
    with DriveBag(options.bag, options.image_topic, options.gt_topic) as bag:
        first = next(bag.frames(), None)
    return describe_input(first.image) if first is not None else None


def evaluate(options: EvalOptions, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path]]:
    """Run the evaluation and write the report; returns the report dict and the file paths."""
    threads = torch.get_num_threads()
    try:
        return _evaluate(options, values)
    finally:
        torch.set_num_threads(threads)


def _evaluate(options: EvalOptions, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path]]:
    if options.mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {options.mode!r}")
    check_model_classes(int(values["num_classes"]))
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    _clean_outputs(out)
    torch.manual_seed(options.seed)  # random-weight runs are reproducible
    if options.threads:
        torch.set_num_threads(options.threads)
    notes: list[str] = []
    with DriveBag(options.bag, options.image_topic, options.gt_topic) as bag:
        rate = (bag.info.image_count - 1) / bag.info.duration_s if bag.info.duration_s > 0 else 17.0
        ledger = Ledger(out, bag.info.image_count, options.overlays, options.save_predictions,
                        options.video, rate)
        live = None
        if options.mode == "offline":
            engine = SegmentationEngine(P.engine_config(values))
            engine_description = engine.description
            timing = run_offline(bag, engine, ledger, values["max_pixels"], options.progress)
        else:
            params = {**node_overrides(values, bag.info.image_count), "qos_reliability": options.input_qos}
            if options.input_qos == "reliable":  # a starved node shows as superseded, not as queue overflow
                params["qos_depth"] = max(values["qos_depth"], LIVE_INPUT_DEPTH)
            live = run_live(bag, params, ledger, options.speed, options.domain_id, options.progress,
                            threads=options.threads, seed=None if values["weights"] else options.seed)
            engine_description = live.pop("engine")
            timing = {k: live.pop(k) for k in ("stages_ms", "node_end_to_end_ms", "frame_latency_ms",
                                                "frame_latency_kind", "throughput_fps", "input_fps")}
            if live["node_process"]["exit_code"] != 0:
                notes.append(f"seg_node exited with code {live['node_process']['exit_code']} "
                             f"(log: {live['node_process']['log']})")
            if live["transport_lost"] or live["output_lost"]:
                notes.append(
                    f"{live['transport_lost']} frames never reached the node's callback and {live['output_lost']} "
                    f"labels never came back. Over shared memory with reliable QoS this means the node's input "
                    f"queue ({live['dds']['node_input_qos']}) overflowed while its executor was starved of CPU "
                    f"(with best_effort input: DDS loss). Profile: {live['dds']['fastdds_profile']}")
            if not live["reconciliation"]["all_accounted"]:
                notes.append(f"frame accounting does not reconcile: {live['reconciliation']}")
        video = ledger.close()
        notes += bag.pairing.notes
        frames = _frames_section(ledger, bag, live)
    timing["speed"] = options.speed
    if frames["not_evaluated"]["total"]:
        notes.append(f"{frames['not_evaluated']['total']} frames came back but could not be evaluated: "
                     f"{frames['not_evaluated']['by_reason']}")
    if frames["gt_without_image"]:
        notes.append(f"{frames['gt_without_image']} ground-truth messages have no image with the same stamp")
    if not frames["evaluated"]:
        notes.append("no frame was evaluated: the accuracy numbers are undefined")
    report = {
        "schema_version": 1,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": options.mode,
        "bag": {**bag.info.as_dict(), "input": _first_input(options)},
        "untrained": not values["weights"],
        "config": {k: v for k, v in values.items() if k not in LABEL_PARAMS},
        "engine": engine_description,
        "versions": R.versions(),
        "machine": machine_info(resolve_device(values["device"])),
        "frames": frames,
        "metrics": summarize(ledger.confusion.matrix),
        "timing": timing,
        "live": live,
        "notes": notes,
        "files": {"overlays": ledger.overlay_files, "video": video,
                  "predictions": "predictions" if options.save_predictions else None,
                  "plots": dict(R.PLOTS)},
        "per_frame": records_as_dicts(ledger.records),
    }
    paths = R.write_report(report, out)
    return R.json_safe(report), paths

