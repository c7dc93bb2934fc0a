"""``seg-perception train``: argument parsing; the work is in :mod:`.trainer`."""

from __future__ import annotations

import argparse
import os

from ..cli_args import parse_size


def cmd_train(args: argparse.Namespace) -> int:
    if "TORCHELASTIC_ERROR_FILE" not in os.environ:
        return _train(args)
    from torch.distributed.elastic.multiprocessing.errors import record

    # Under torchrun: a failing rank's error and traceback go to the launcher's summary ("root cause").
    return record(_train)(args)


def _train(args: argparse.Namespace) -> int:
    from ..params import parse_options
    from .trainer import TrainConfig, train

    config = TrainConfig(
        data=args.data, out=args.out, split=args.split, val=args.val or [], val_split=args.val_split,
        model=args.model, variant=args.variant, model_options=parse_options(args.model_options),
        label_mapping=args.label_mapping, iterations=args.iterations, batch_size=args.batch_size,
        crop=args.crop, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        warmup=args.warmup, class_balance=args.class_balance, init=args.init, resume=args.resume,
        val_every=args.val_every,
        num_workers=args.num_workers, seed=args.seed, device=args.device, image_topic=args.image_topic,
        gt_topic=args.gt_topic, progress=not args.no_progress, sync_bn=args.sync_bn,
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = train(config)
    if int(os.environ.get("RANK", "0")) != 0:  # one summary per run, from rank 0
        return 0
    best = "n/a (no --val)" if result.best_miou is None else f"{100 * result.best_miou:.1f}%"
    print(f"trained {result.iterations} iterations in {result.seconds / 60:.1f} min; final loss "
          f"{result.last_loss:.4f}; best val mIoU {best}\n  {result.out / 'best.pth'}\n  {result.out / 'last.pth'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` to the CLI parser."""
    p = sub.add_parser("train", help="train or fine-tune a model on Cityscapes folders or drive bags")
    p.add_argument("--data", nargs="+", required=True,
                   help="Cityscapes roots (with leftImg8bit/ and gtFine/) and/or drive bags")
    p.add_argument("--split", default="train", help="split of the Cityscapes training folders")
    p.add_argument("--val", nargs="+", default=None, help="validation Cityscapes roots and/or drive bags")
    p.add_argument("--val-split", default="val", help="split of the Cityscapes validation folders")
    p.add_argument("--out", required=True, help="output folder (best.pth, last.pth, loss.png, val_miou.png)")
    p.add_argument("--model", default="regseg")
    p.add_argument("--variant", default=None)
    p.add_argument("--model-options", default="{}", help="YAML mapping of builder options")
    p.add_argument("--label-mapping", default=None,
                   help="YAML: dataset id -> class index, name, colour (default: Cityscapes 19 classes)")
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8, help="frames per iteration and process (under torchrun: "
                   "per rank; the global batch is this times the number of processes)")
    p.add_argument("--crop", type=parse_size, default=(512, 512), help="HEIGHTxWIDTH of training crops")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: sgd 0.02, adamw 1e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default: 10%%, at most 1000)")
    p.add_argument("--class-balance", default="none", choices=("none", "sqrt"),
                   help="none: plain cross-entropy (paper); sqrt: weight rare classes by sqrt(median/frequency)")
    p.add_argument("--init", default=None, help="start from these weights (file or shipped name)")
    p.add_argument("--resume", default=None, help="continue a run from its last.pth")
    p.add_argument("--val-every", type=int, default=500, help="validate and save every K iterations")
    p.add_argument("--num-workers", type=int, default=2, help="data-loading worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--image-topic", default="/camera/image_raw")
    p.add_argument("--gt-topic", default="/camera/semantic_gt")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: synchronised batch norms (statistics over the global batch)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)
