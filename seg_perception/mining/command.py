"""``seg-perception mine``: argument parsing and the console summary; the work is in :mod:`.mine`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..backends.base import BACKENDS
from .scores import DEFAULT_SCORE, SCORES
from .select import DEFAULT_MAX_SIMILARITY, DEFAULT_MIN_GAP_S


def cmd_mine(args: argparse.Namespace) -> int:
    from ..evaluation.drives.plan import collect_drives
    from ..evaluation.drives.ray_runner import RayOptions, import_ray
    from ..evaluation.evaluate import resolve_params
    from .mine import TIE_BREAK, MineOptions, mine

    drives = collect_drives(args.bag or [], args.bags_from)
    if args.workers is not None:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        import_ray(local=not (args.ray_address or os.environ.get("RAY_ADDRESS")))  # says what to install
    values = resolve_params(args.config, model=args.model, variant=args.variant, weights=args.weights,
                            model_options=args.model_options, device=args.device, precision=args.precision,
                            backend=args.backend)
    ray = None
    if args.workers:
        gpus = args.gpus_per_worker
        if gpus is None:
            from ..engine import resolve_device

            gpus = 1.0 if resolve_device(values["device"]).type == "cuda" else 0.0
        ray = RayOptions(workers=args.workers, address=args.ray_address, gpus_per_worker=gpus,
                         threads=args.threads or 1, max_retries=args.max_retries, seed=args.seed)
    cameras = [c.strip() for c in args.cameras.split(",") if c.strip()] if args.cameras else None
    options = MineOptions(out=Path(args.out), drives=drives, top=args.top, score=args.score,
                          min_gap_s=args.min_gap_s, max_similarity=args.max_similarity, cameras=cameras,
                          image_topic=args.image_topic, chunk_frames=args.chunk_frames, ray=ray, seed=args.seed,
                          threads=args.threads, progress=not args.no_progress, overwrite=args.overwrite)
    result = mine(options, values)
    summary = result.summary
    frames = summary["frames"]
    print(f"\nmined {summary['chosen']} of {frames['scored']} scored frames ({summary['score']}; "
          f"{frames['skipped_near_in_time']} skipped as within {options.min_gap_s:g} s of a chosen frame, "
          f"{frames['skipped_similar']} as too similar; ties: {TIE_BREAK})")
    if frames["rejected"]:
        print("frames not scored: " + ", ".join(f"{k} {v}" for k, v in sorted(frames["rejected"].items())))
    for row in result.rows[:5]:
        print(f"  #{row['rank']:<3} score {float(row['score']):.4f}  {row['drive']}  {row['camera']}  "
              f"frame {row['frame_index']}")
    for drive in summary["drives"]:
        if drive["status"] != "ok":
            print(f"drive {drive['name']} FAILED: {drive['reason']}", file=sys.stderr)
    print(f"\n{result.paths['out']}: leftImg8bit/ and gtFine/ (pseudo-labels to correct), "
          f"{result.paths['csv'].name}, {result.paths['contact_sheet'].name}, {result.paths['summary'].name}")
    return 1 if summary["drives_failed"] else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mine`` to the CLI parser."""
    p = sub.add_parser("mine", help="find the frames of drives the model is unsure of, write them for labelling",
                       description="Score every frame of the drives by how unsure the model is, drop near-"
                                   "duplicates, and write the top K as a Cityscapes folder with the model's labels "
                                   "as pseudo-labels (train on it with 'train --data OUT' once corrected), "
                                   "mined.csv and contact_sheet.png.")
    p.add_argument("--bag", action="append", default=None,
                   help="a drive bag, or a folder of bags; repeat for several drives (ground truth not needed)")
    p.add_argument("--bags-from", default=None, help="text file with one bag path per line (# comments)")
    p.add_argument("--top", type=int, required=True, help="how many frames to write")
    p.add_argument("--out", required=True, help="output folder (new or empty; an earlier run's with --overwrite)")
    p.add_argument("--score", default=DEFAULT_SCORE, choices=SCORES,
                   help="least_confidence: mean of 1 - max class probability (default); low_confidence_area: "
                        "fraction of pixels below 0.5; flip_disagreement: labels that change when the frame is "
                        "mirrored (two passes)")
    p.add_argument("--min-gap-s", type=float, default=DEFAULT_MIN_GAP_S,
                   help="skip frames of the same drive and camera within this many seconds (header stamps) of a "
                        "chosen one (0: off)")
    p.add_argument("--max-similarity", type=float, default=DEFAULT_MAX_SIMILARITY,
                   help="skip frames whose thumbnail correlates at least this much with a chosen one (1: off)")
    p.add_argument("--cameras", default=None, help="comma-separated camera names (default: every camera found)")
    p.add_argument("--image-topic", default=None,
                   help="the image topic of one camera whose topic does not follow /<cam>/image_raw[/compressed]")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier mining run in --out")
    p.add_argument("--config", default=None, help="seg_node parameters YAML (e.g. config/seg.yaml)")
    p.add_argument("--model", default=None)
    p.add_argument("--variant", default=None)
    p.add_argument("--weights", default=None, help="checkpoint file or shipped name (required: here or in --config)")
    p.add_argument("--model-options", default=None, help="YAML mapping of builder options")
    p.add_argument("--device", default=None, choices=("auto", "cuda", "cpu"))
    p.add_argument("--precision", default=None, choices=("fp16", "fp32"))
    p.add_argument("--backend", default=None, choices=BACKENDS, help="what runs the network (docs/BACKENDS.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (per worker with --workers)")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("many drives (as eval)")
    g.add_argument("--chunk-frames", type=int, default=0,
                   help="split long drives into tasks of at most this many frames per camera (0: whole drives)")
    g.add_argument("--workers", type=int, default=None,
                   help="score on Ray with N workers, each keeping one engine (local instance, or the cluster of "
                        "--ray-address / RAY_ADDRESS)")
    g.add_argument("--ray-address", default=None, help="address of a running Ray cluster (default RAY_ADDRESS)")
    g.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per worker, fractions share a GPU (default 1 with CUDA, else 0)")
    g.add_argument("--max-retries", type=int, default=2,
                   help="times a drive is retried after its worker died or failed (then reported failed)")
    p.set_defaults(func=cmd_mine)
