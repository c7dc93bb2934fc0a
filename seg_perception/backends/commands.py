"""``seg-perception export``: build the deployable network ahead of time.

``--format onnx`` writes an ONNX file (``--out``, else into the cache the engine reads);
``--format tensorrt`` builds the TensorRT engine for ``--size`` into the cache, the way
production stacks build engines at install time rather than on the robot's first frame.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from ..cli_args import parse_size


def cmd_export(args: argparse.Namespace) -> int:
    from ..models import build_model, load_checkpoint
    from ..params import parse_options
    from . import backend_problem
    from .cache import ArtifactCache
    from .export import ExportSpec, cached_onnx, check_crf_not_exported, read_metadata

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    check_crf_not_exported(args.crf)
    if args.format == "tensorrt" and (problem := backend_problem("tensorrt", "cuda", "none")):
        raise ValueError(problem)
    options = parse_options(args.model_options)
    model = build_model(args.model, args.num_classes, args.variant, **options).eval()
    if args.weights:
        load_checkpoint(model, args.weights)
    spec = ExportSpec(model=args.model, variant=model.variant, num_classes=args.num_classes, options=options,
                      weights=args.weights or "", size=args.size)
    cache = ArtifactCache(args.cache_dir)
    if args.format == "tensorrt":
        import torch

        from .tensorrt_backend import build_tensorrt_network

        network = build_tensorrt_network(model, spec, torch.device("cuda"), cache, args.precision == "fp16",
                                         args.size)
        print(f"TensorRT engine ready ({network.name}) in {cache.root / 'tensorrt'}")
        return 0
    path, hit = cached_onnx(spec, model, cache)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, args.out)
        path = Path(args.out)
    metadata = read_metadata(path)
    print(f"{'cached' if hit else 'exported'} {path} (input size {metadata['input_size']}, "
          f"{metadata['num_classes']} classes, {args.model} {model.variant})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to the CLI parser."""
    p = sub.add_parser("export", help="export a model to ONNX or build its TensorRT engine (cached)")
    p.add_argument("--model", default="regseg")
    p.add_argument("--variant", default=None)
    p.add_argument("--weights", default=None, help="checkpoint; without one the random weights are exported")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--model-options", default="{}", help="YAML mapping of builder options")
    p.add_argument("--size", type=parse_size, default=(512, 1024),
                   help="HEIGHTxWIDTH traced (ONNX stays dynamic where the model allows) / TensorRT engine size")
    p.add_argument("--format", default="onnx", choices=("onnx", "tensorrt"))
    p.add_argument("--precision", default="fp16", choices=("fp16", "fp32"), help="TensorRT precision")
    p.add_argument("--crf", default="none", choices=("none", "cpu", "gpu"),
                   help="refused with an explanation: the CRF is not part of the network")
    p.add_argument("--out", default=None, help="ONNX file to write (default: only the cache)")
    p.add_argument("--cache-dir", default=None, help="cache folder (default $XDG_CACHE_HOME/seg_perception)")
    p.set_defaults(func=cmd_export)
