"""Evaluation and data subcommands of ``seg-perception``: ``cityscapes-to-bag``,
``make-sample-drive``, ``eval`` and ``demo``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..backends.base import BACKENDS
from ..choices import PRECISIONS
from ..cli_args import add_int8_options, parse_size
from ..engine_api import ParityError
from .sample_styles import STYLES


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
                                  compressed=args.compressed, jpeg_quality=args.jpeg_quality, style=args.style)
    except FileExistsError as exc:
        raise ValueError(str(exc)) from None
    topics = (", ".join(f"/{n}/image_raw{'/compressed' if args.compressed else ''} + /{n}/semantic_gt"
                        for n, _ in cameras) if cameras else "/camera/image_raw + /camera/semantic_gt")
    style = f" ({args.style})" if args.style else ""
    print(f"sample drive{style}: {drive.frames} frames\n  Cityscapes folder: {drive.cityscapes}\n  bag: {drive.bag} "
          f"({topics})")
    return 0


def _values(args: argparse.Namespace) -> dict:
    from .evaluate import resolve_params

    return resolve_params(args.config, model=args.model, variant=args.variant, weights=args.weights,
                          model_options=args.model_options, device=args.device, precision=args.precision,
                          backend=args.backend, calibration=args.calibration,
                          calibration_frames=args.calibration_frames, parity_min_agreement=args.parity_min_agreement)


def _gpus_per_worker(args: argparse.Namespace, values: dict) -> float:
    if args.gpus_per_worker is not None:
        return args.gpus_per_worker
    if values["device"] == "cuda":
        return 1.0
    if values["device"] == "auto":
        import torch

        return 1.0 if torch.cuda.is_available() else 0.0
    return 0.0


def _cameras(args: argparse.Namespace) -> list[str] | None:
    return [c.strip() for c in args.cameras.split(",") if c.strip()] if args.cameras else None


def default_mode(args: argparse.Namespace, drives: list) -> str:
    """``--mode``, else live for one bag (all its cameras through one node) and offline for several
    drives, a drive list, tags, workers or chunks."""
    if args.mode:
        return args.mode
    many = len(drives) > 1 or args.workers or args.tags or args.chunk_frames or args.bags_from
    return "offline" if many else "live"


def print_report(report: dict, paths: dict) -> None:
    """The console summary: the headline table (as in report.md), per-camera lines when there are
    several cameras, the notes, and where the files are."""
    from .report import ms, pct, summary_table

    engine = report["engine"] or {}
    where = report["drives"][0]["path"] if len(report["drives"]) == 1 else report["title"]
    print(f"\n{report['mode']} evaluation of {where}: {engine.get('model')} {engine.get('variant')} on "
          f"{engine.get('device')} ({engine.get('precision')}), weights {engine.get('weights')}\n")
    print(summary_table(report))
    if len(report["cameras"]) > 1:
        for name, cam in report["cameras"].items():
            latency = cam["latency_ms"] or {}
            print(f"  camera {name}: mIoU {pct(cam['metrics']['miou'])} %, {cam['frames']['evaluated']} frames "
                  f"evaluated, latency p50 {ms(latency.get('p50'))} ms")
    for note in report["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if report["untrained"]:
        _print_untrained_banner()
    print(f"\nreport: {paths['markdown']} (numbers in {paths['json']}, per frame in {paths['frames_csv']})")


def _run_eval(args: argparse.Namespace, drives: list, notes: list[str] | None = None) -> int:
    """Evaluate the drives into one report; exit 1 when a drive failed or frames do not add up."""
    from .drives.ray_runner import RayOptions, import_ray
    from .evaluate import EvalOptions, evaluate

    mode = default_mode(args, drives)
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
    options = EvalOptions(out=Path(args.out), drives=drives, mode=mode, cameras=_cameras(args),
                          image_topic=args.image_topic, gt_topic=args.gt_topic, chunk_frames=args.chunk_frames,
                          ray=ray_options, speed=args.speed, overlays=args.overlays, video=args.video,
                          save_predictions=args.save_predictions, domain_id=args.domain_id, seed=args.seed,
                          threads=args.threads, progress=not args.no_progress, input_qos=args.input_qos,
                          notes=notes or [])
    try:
        report, paths = evaluate(options, values)
    except RuntimeError as exc:  # DDS discovery or the node failing to start
        print(f"seg-perception {args.command}: error: {exc}", file=sys.stderr)
        return 1
    print_report(report, paths)
    fallback = (report["engine"] or {}).get("parity_fallback")
    if fallback:  # live: the node served the fp32 reference instead of the engine asked for
        raise ParityError(f"{fallback} (the report shows the reference's numbers)", 0.0, 0.0)
    pooled = report["pooled"]
    return 1 if pooled["drives_failed"] or not pooled["frames"]["all_accounted"] else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .drives.plan import collect_drives, load_tags

    drives = collect_drives(args.bag or [], args.bags_from)
    notes: list[str] = []
    if args.tags:
        drives, notes = load_tags(args.tags, drives)
    return _run_eval(args, drives, notes)


def cmd_demo(args: argparse.Namespace) -> int:
    from .sample_drive import make_sample_drive

    out = Path(args.out)
    try:
        drive = make_sample_drive(out / "drive", args.frames, args.size, args.seed)
    except FileExistsError as exc:
        raise ValueError(str(exc)) from None
    print(f"sample drive: {drive.frames} frames {args.size[0]}x{args.size[1]} -> {drive.bag}")
    from .drives.plan import drive_of

    args.out = str(out / "report")
    return _run_eval(args, [drive_of(drive.bag)])


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
    p.add_argument("--precision", default=None, choices=PRECISIONS[1:], help="int8 needs --calibration")
    add_int8_options(p, defaults=False)
    p.add_argument("--backend", default=None, choices=BACKENDS, help="what runs the network (docs/BACKENDS.md)")
    p.add_argument("--speed", type=float, default=1.0, help="live replay rate as a multiple of the recorded rate")
    p.add_argument("--overlays", type=int, default=4,
                   help="number of overlay images in the report (one camera of one drive)")
    p.add_argument("--video", action="store_true",
                   help="also write overlay.mp4 of every evaluated frame (one camera of one drive)")
    p.add_argument("--save-predictions", action="store_true",
                   help="write predictions/<index>_pred_labelIds.png (Cityscapes label ids)")
    p.add_argument("--image-topic", default=None,
                   help="image topic of one camera whose topics do not follow the naming convention (with "
                        "--gt-topic; default /camera/image_raw, or its /compressed); without both, every camera "
                        "/<cam>/image_raw with /<cam>/semantic_gt is found")
    p.add_argument("--gt-topic", default=None, help="ground-truth topic of that camera (default /camera/semantic_gt)")
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
    p.add_argument("--style", default=None, choices=STYLES,
                   help="render a shifted domain: the same street and ground truth at dusk, in fog or in rain "
                        "(light, contrast, noise; default: a clear day)")
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
    # One drive, every camera, in this process or through the node: none of the many-drive options.
    p.set_defaults(func=cmd_demo, weights="synthetic_street", bag=None, bags_from=None, tags=None, cameras=None,
                   chunk_frames=0, workers=None, ray_address=None, gpus_per_worker=None, max_retries=2)
