"""Evaluation and data subcommands of ``seg-perception``: ``cityscapes-to-bag``,
``make-sample-drive``, ``eval`` and ``demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import parse_size


def _print_untrained_banner() -> None:
    from .report import UNTRAINED_WARNING

    line = "!" * 100
    print(f"\n{line}\n!!  {UNTRAINED_WARNING}\n!!  Pass --weights CHECKPOINT (or set 'weights' in --config) "
          f"for a meaningful mIoU.\n{line}\n", file=sys.stderr)


def cmd_cityscapes_to_bag(args: argparse.Namespace) -> int:
    from .cityscapes_folder import cityscapes_to_bag

    frames = cityscapes_to_bag(args.root, args.split, args.out, args.cities, args.storage, args.rate,
                               args.frame_id)
    print(f"wrote {frames} frames at {args.rate:g} Hz to {args.out} ({args.storage})")
    return 0


def cmd_make_sample_drive(args: argparse.Namespace) -> int:
    from .sample_drive import make_sample_drive

    try:
        drive = make_sample_drive(args.out, args.frames, args.size, args.seed, args.storage)
    except FileExistsError as exc:
        raise ValueError(str(exc)) from None
    print(f"sample drive: {drive.frames} frames\n  Cityscapes folder: {drive.cityscapes}\n  bag: {drive.bag}")
    return 0


def _values(args: argparse.Namespace) -> dict:
    from .evaluate import resolve_params

    return resolve_params(args.config, model=args.model, variant=args.variant, weights=args.weights,
                          model_options=args.model_options, device=args.device, precision=args.precision)


def _run_eval(args: argparse.Namespace, bag: Path, out: Path) -> int:
    from .evaluate import EvalOptions, evaluate
    from .report import summary_table

    values = _values(args)
    if not values["weights"]:
        _print_untrained_banner()
    options = EvalOptions(bag=bag, out=out, mode=args.mode, speed=args.speed, overlays=args.overlays,
                          video=args.video, save_predictions=args.save_predictions, domain_id=args.domain_id,
                          seed=args.seed, threads=args.threads, progress=not args.no_progress, image_topic=args.image_topic,
                          gt_topic=args.gt_topic)
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


def cmd_eval(args: argparse.Namespace) -> int:
    return _run_eval(args, Path(args.bag), Path(args.out))


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
    p.add_argument("--mode", default="live", choices=("live", "offline"),
                   help="live: through seg_node over DDS at the recorded rate; offline: engine directly")
    p.add_argument("--config", default=None, help="seg_node parameters YAML (e.g. config/seg.yaml)")
    p.add_argument("--model", default=None)
    p.add_argument("--variant", default=None)
    p.add_argument("--weights", default=None, help="checkpoint; without one the model is untrained")
    p.add_argument("--model-options", default=None, help="YAML mapping of builder options")
    p.add_argument("--device", default=None, choices=("auto", "cuda", "cpu"))
    p.add_argument("--precision", default=None, choices=("fp16", "fp32"))
    p.add_argument("--speed", type=float, default=1.0, help="live replay rate as a multiple of the recorded rate")
    p.add_argument("--overlays", type=int, default=4, help="number of overlay images in the report")
    p.add_argument("--video", action="store_true", help="also write overlay.mp4 of every evaluated frame")
    p.add_argument("--save-predictions", action="store_true",
                   help="write predictions/<index>_pred_labelIds.png (Cityscapes label ids)")
    p.add_argument("--image-topic", default="/camera/image_raw")
    p.add_argument("--gt-topic", default="/camera/semantic_gt")
    p.add_argument("--domain-id", type=int, default=None, help="ROS domain of a live run (default ROS_DOMAIN_ID)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (untrained runs)")
    p.add_argument("--threads", type=int, default=threads,
                   help="torch intra-op threads (default: torch's choice)" if threads is None else
                   f"torch intra-op threads (default {threads}: on a small shared CPU the node's DDS and "
                   f"executor threads need a core, and oversubscribed torch threads are far slower)")
    p.add_argument("--no-progress", action="store_true")


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
    p.set_defaults(func=cmd_cityscapes_to_bag)

    p = sub.add_parser("make-sample-drive", help="render the synthetic sample drive (folder + bag)")
    p.add_argument("out", help="output folder (replaced if it is a sample drive)")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=parse_size, default=(256, 512), help="HEIGHTxWIDTH")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage", default="sqlite3", choices=("sqlite3", "mcap"))
    p.set_defaults(func=cmd_make_sample_drive)

    p = sub.add_parser("eval", help="accuracy and timing of a drive bag: report.json, report.md, plots")
    p.add_argument("--bag", required=True)
    p.add_argument("--out", required=True, help="report folder")
    _add_eval_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="sample drive -> live evaluation through the node -> summary")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=parse_size, default=(256, 512), help="HEIGHTxWIDTH")
    _add_eval_options(p, threads=1)
    # The shipped checkpoint trained on other synthetic drives; --weights '' shows random weights.
    p.set_defaults(func=cmd_demo, weights="synthetic_street")
