"""Evaluation and data subcommands of ``seg-perception``: ``cityscapes-to-bag``,
``make-sample-drive``, ``eval`` and ``demo``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..backends.base import BACKENDS
from ..cli import parse_size
from .bag_io import IMAGE_TOPIC


def _print_untrained_banner() -> None:
    from .report import UNTRAINED_WARNING

    line = "!" * 100
    print(f"\n{line}\n!!  {UNTRAINED_WARNING}\n!!  Pass --weights CHECKPOINT (or set 'weights' in --config) "
          f"for a meaningful mIoU.\n{line}\n", file=sys.stderr)


def cmd_cityscapes_to_bag(args: argparse.Namespace) -> int:
    from .cityscapes_folder import cityscapes_to_bag

    frames = cityscapes_to_bag(args.root, args.split, args.out, args.cities, args.storage, args.rate,
                               args.frame_id, compressed=args.compressed, jpeg_quality=args.jpeg_quality)
    images = f"{args.compressed} compressed" if args.compressed else "raw"
    print(f"wrote {frames} frames ({images} images) at {args.rate:g} Hz to {args.out} ({args.storage})")
    return 0


def cmd_make_sample_drive(args: argparse.Namespace) -> int:
    from .sample_drive import make_sample_drive, parse_cameras

    cameras = parse_cameras(args.cameras) if args.cameras else None
    try:
        drive = make_sample_drive(args.out, args.frames, args.size, args.seed, args.storage, cameras=cameras,
                                  compressed=args.compressed, jpeg_quality=args.jpeg_quality)
    except FileExistsError as exc:
        raise ValueError(str(exc)) from None
    topics = (", ".join(f"/{n}/image_raw{'/compressed' if args.compressed else ''} + /{n}/semantic_gt"
                        for n, _ in cameras) if cameras else "/camera/image_raw + /camera/semantic_gt")
    print(f"sample drive: {drive.frames} frames\n  Cityscapes folder: {drive.cityscapes}\n  bag: {drive.bag} "
          f"({topics})")
    return 0


def _values(args: argparse.Namespace) -> dict:
    from .evaluate import resolve_params

    return resolve_params(args.config, model=args.model, variant=args.variant, weights=args.weights,
                          model_options=args.model_options, device=args.device, precision=args.precision,
                          backend=args.backend)


def _run_eval(args: argparse.Namespace, bag: Path, out: Path) -> int:
    from .evaluate import EvalOptions, evaluate
    from .report import summary_table

    values = _values(args)
    if not values["weights"]:
        _print_untrained_banner()
    options = EvalOptions(bag=bag, out=out, mode=args.mode or "live", speed=args.speed, overlays=args.overlays,
                          video=args.video, save_predictions=args.save_predictions, domain_id=args.domain_id,
                          seed=args.seed, threads=args.threads, progress=not args.no_progress,
                          image_topic=args.image_topic or IMAGE_TOPIC, gt_topic=args.gt_topic, input_qos=args.input_qos)
    try:
        report, paths = evaluate(options, values)
    except RuntimeError as exc:  # DDS discovery or the node failing to start
        print(f"seg-perception {args.command}: error: {exc}", file=sys.stderr)
        return 1
    engine = report["engine"]
    print(f"\n{report['mode']} evaluation of {bag}: {engine['model']} {engine['variant']} on {engine['device']} "
          f"({engine['precision']}), weights {engine['weights']}\n")
    print(summary_table(report))
    for note in report["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if report["untrained"]:
        _print_untrained_banner()
    print(f"\nreport: {paths['markdown']} (numbers in {paths['json']})")
    return 0


def _many(args: argparse.Namespace, drives: list) -> bool:
    """Whether this is a many-drive evaluation: several drives or cameras, tags, workers or chunks."""
    from .bag_io import BagError, find_cameras

    if len(drives) > 1 or args.workers or args.tags or args.cameras or args.chunk_frames or args.bags_from:
        return True
    if args.image_topic is not None:  # one explicitly named camera topic: the single-bag report
        return False
    try:
        names = [c.name for c in find_cameras(drives[0].path)]
    except BagError:  # no camera by the naming convention; the single-bag reader says what is there
        return False
    return names != ["camera"]


def _gpus_per_worker(args: argparse.Namespace, values: dict) -> float:
    if args.gpus_per_worker is not None:
        return args.gpus_per_worker
    if values["device"] == "cuda":
        return 1.0
    if values["device"] == "auto":
        import torch

        return 1.0 if torch.cuda.is_available() else 0.0
    return 0.0


def _one_bag(args: argparse.Namespace, drives: list) -> bool:
    """Whether this is one bag with no many-drive option (tags, workers, chunks, a list of bags)."""
    return len(drives) == 1 and not (args.workers or args.tags or args.chunk_frames or args.bags_from)


def _cameras(args: argparse.Namespace) -> list[str] | None:
    return [c.strip() for c in args.cameras.split(",") if c.strip()] if args.cameras else None


def _print_cameras_report(report: dict, paths: dict, title: str) -> None:
    from .fleet_report import frames_text
    from .report import ms, pct

    pooled = report["pooled"]
    print(f"\n{title}: pooled mIoU {pct(pooled['metrics']['miou'])} %, {pooled['drives_ok']} ok, "
          f"{pooled['drives_failed']} failed; frames: {frames_text(pooled['frames'])}")
    for name, cam in report["cameras"].items():
        latency = cam["latency_ms"] or {}
        print(f"  camera {name}: mIoU {pct(cam['metrics']['miou'])} %, {cam['frames']['evaluated']} frames evaluated"
              f", latency p50 {ms(latency.get('p50'))} ms")
    for note in report["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if report["untrained"]:
        _print_untrained_banner()
    print(f"\nreport: {paths['markdown']} (numbers in {paths['json']}, per frame in {paths['frames_csv']})")


def _run_cameras_live(args: argparse.Namespace, bag: Path) -> int:
    from .live_cameras import LiveCamerasOptions, evaluate_cameras_live

    if args.video or args.save_predictions:
        raise ValueError("--video and --save-predictions are written for single-camera bags; pick one camera "
                         "with --image-topic /<cam>/image_raw --gt-topic /<cam>/semantic_gt")
    values = _values(args)
    if not values["weights"]:
        _print_untrained_banner()
    options = LiveCamerasOptions(bag=bag, out=Path(args.out), cameras=_cameras(args), speed=args.speed,
                                 domain_id=args.domain_id, seed=args.seed, threads=args.threads,
                                 progress=not args.no_progress, input_qos=args.input_qos)
    try:
        report, paths = evaluate_cameras_live(options, values)
    except RuntimeError as exc:  # DDS discovery or the node failing to start
        print(f"seg-perception {args.command}: error: {exc}", file=sys.stderr)
        return 1
    _print_cameras_report(report, paths, f"live evaluation of {len(report['cameras'])} cameras of {bag}")
    return 0 if report["pooled"]["frames"]["all_accounted"] else 1


def _run_drives(args: argparse.Namespace, drives: list, notes: list[str]) -> int:
    from .many_drives import DrivesOptions, evaluate_drives
    from .ray_runner import RayOptions, import_ray

    if args.mode == "live":
        raise ValueError("live mode evaluates one bag (all its cameras) through the node; several drives, "
                         "tags, workers or chunks are evaluated with --mode offline")
    if args.workers is not None:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        import_ray(local=not (args.ray_address or os.environ.get("RAY_ADDRESS")))  # says what to install
    values = _values(args)
    if not values["weights"]:
        _print_untrained_banner()
    ray_options = None
    if args.workers:
        ray_options = RayOptions(workers=args.workers, address=args.ray_address,
                                 gpus_per_worker=_gpus_per_worker(args, values), threads=args.threads or 1,
                                 max_retries=args.max_retries, seed=args.seed)
    options = DrivesOptions(drives=drives, out=Path(args.out), cameras=_cameras(args), chunk_frames=args.chunk_frames,
                            ray=ray_options, seed=args.seed, threads=None if args.workers else args.threads,
                            progress=not args.no_progress, notes=notes)
    report, paths = evaluate_drives(options, values)
    _print_cameras_report(report, paths, f"offline evaluation of {len(drives)} drives")
    return 1 if report["pooled"]["drives_failed"] else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .fleet import collect_drives, load_tags

    drives = collect_drives(args.bag or [], args.bags_from)
    if not _many(args, drives):
        return _run_eval(args, Path(drives[0].path), Path(args.out))
    if args.mode != "offline" and _one_bag(args, drives):  # one bag, several cameras: one multi-camera node
        return _run_cameras_live(args, Path(drives[0].path))
    notes: list[str] = []
    if args.tags:
        drives, notes = load_tags(args.tags, drives)
    return _run_drives(args, drives, notes)


def cmd_demo(args: argparse.Namespace) -> int:
    from .sample_drive import make_sample_drive

    out = Path(args.out)
    try:
        drive = make_sample_drive(out / "drive", args.frames, args.size, args.seed)
    except FileExistsError as exc:
        raise ValueError(str(exc)) from None
    print(f"sample drive: {drive.frames} frames {args.size[0]}x{args.size[1]} -> {drive.bag}")
    return _run_eval(args, drive.bag, out / "report")


def _add_eval_options(p: argparse.ArgumentParser, threads: int | None = None) -> None:
    p.add_argument("--mode", default=None, choices=("live", "offline"),
                   help="live: through seg_node over DDS at the recorded rate; offline: engine directly "
                        "(default: live for one bag, all its cameras through one node; offline for several "
                        "drives, tags, workers or chunks)")
    p.add_argument("--config", default=None, help="seg_node parameters YAML (e.g. config/seg.yaml)")
    p.add_argument("--model", default=None)
    p.add_argument("--variant", default=None)
    p.add_argument("--weights", default=None, help="checkpoint; without one the model is untrained")
    p.add_argument("--model-options", default=None, help="YAML mapping of builder options")
    p.add_argument("--device", default=None, choices=("auto", "cuda", "cpu"))
    p.add_argument("--precision", default=None, choices=("fp16", "fp32"))
    p.add_argument("--backend", default=None, choices=BACKENDS, help="what runs the network (docs/BACKENDS.md)")
    p.add_argument("--speed", type=float, default=1.0, help="live replay rate as a multiple of the recorded rate")
    p.add_argument("--overlays", type=int, default=4, help="number of overlay images in the report")
    p.add_argument("--video", action="store_true", help="also write overlay.mp4 of every evaluated frame")
    p.add_argument("--save-predictions", action="store_true",
                   help="write predictions/<index>_pred_labelIds.png (Cityscapes label ids)")
    p.add_argument("--image-topic", default=None,
                   help="image topic of a single-camera bag (default /camera/image_raw, or its /compressed); "
                        "without it every camera /<cam>/image_raw with /<cam>/semantic_gt is found")
    p.add_argument("--gt-topic", default="/camera/semantic_gt")
    p.add_argument("--input-qos", default="reliable", choices=("reliable", "best_effort"),
                   help="live: the node's input QoS (reliable measures the node; best_effort a sensor-data "
                        "camera path, where frames lost in transport are counted)")
    p.add_argument("--domain-id", type=int, default=None, help="ROS domain of a live run (default ROS_DOMAIN_ID)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (untrained runs)")
    p.add_argument("--threads", type=int, default=threads,
                   help="torch intra-op threads (default: torch's choice)" if threads is None else
                   f"torch intra-op threads (default {threads}: on a small shared CPU the node's DDS and "
                   f"executor threads need a core, and oversubscribed torch threads are far slower)")
    p.add_argument("--no-progress", action="store_true")


def _add_compression_options(p: argparse.ArgumentParser) -> None:
    from .bag_io import CODECS, DEFAULT_JPEG_QUALITY

    p.add_argument("--compressed", default=None, choices=CODECS,
                   help="store images as sensor_msgs/CompressedImage on <image topic>/compressed "
                        "(ground truth stays lossless mono8)")
    p.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY, help="with --compressed jpeg")


def _add_drives_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several cameras and many drives (several drives: offline)")
    g.add_argument("--bags-from", default=None, help="text file with one bag path per line (# comments)")
    g.add_argument("--tags", default=None, help="YAML: bag -> {key: value} (e.g. city, weather) for per-tag mIoU")
    g.add_argument("--cameras", default=None, help="comma-separated camera names (default: every camera found)")
    g.add_argument("--chunk-frames", type=int, default=0,
                   help="split long drives into tasks of at most this many frames per camera (0: whole drives)")
    g.add_argument("--workers", type=int, default=None,
                   help="run on Ray with N workers, each keeping one engine (local instance, or the cluster "
                        "of --ray-address / RAY_ADDRESS)")
    g.add_argument("--ray-address", default=None, help="address of a running Ray cluster (default RAY_ADDRESS)")
    g.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per worker, fractions share a GPU (default 1 with CUDA, else 0)")
    g.add_argument("--max-retries", type=int, default=2,
                   help="times a drive is retried after its worker died or failed (then reported failed)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the evaluation subcommands to the CLI parser."""
    p = sub.add_parser("cityscapes-to-bag", help="convert a Cityscapes split to a rosbag2 drive")
    p.add_argument("--root", required=True, help="Cityscapes root (with leftImg8bit/ and gtFine/)")
    p.add_argument("--split", default="val")
    p.add_argument("--cities", nargs="*", default=None, help="only these cities (default all)")
    p.add_argument("--out", required=True, help="bag folder to create")
    p.add_argument("--storage", default="sqlite3", choices=("sqlite3", "mcap"))
    p.add_argument("--rate", type=float, default=17.0, help="frame rate of the stamps, Hz")
    p.add_argument("--frame-id", default="camera")
    _add_compression_options(p)
    p.set_defaults(func=cmd_cityscapes_to_bag)

    p = sub.add_parser("make-sample-drive", help="render the synthetic sample drive (folder + bag)")
    p.add_argument("out", help="output folder (replaced if it is a sample drive)")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=parse_size, default=(256, 512), help="HEIGHTxWIDTH")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage", default="sqlite3", choices=("sqlite3", "mcap"))
    p.add_argument("--cameras", default=None,
                   help="render the street from several cameras, e.g. front,left,right (or name=YAW_DEG); "
                        "topics /<cam>/image_raw and /<cam>/semantic_gt per camera")
    _add_compression_options(p)
    p.set_defaults(func=cmd_make_sample_drive)

    p = sub.add_parser("eval", help="accuracy and timing of drive bags: report.json, report.md, plots")
    p.add_argument("--bag", action="append", default=None,
                   help="a drive bag, or a folder of bags; repeat for several drives")
    p.add_argument("--out", required=True, help="report folder")
    _add_eval_options(p)
    _add_drives_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="sample drive -> live evaluation through the node -> summary")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=parse_size, default=(256, 512), help="HEIGHTxWIDTH")
    _add_eval_options(p, threads=1)
    # The shipped checkpoint trained on other synthetic drives; --weights '' shows random weights.
    p.set_defaults(func=cmd_demo, weights="synthetic_street")
