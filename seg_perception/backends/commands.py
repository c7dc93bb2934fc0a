"""``seg-perception export``: build the deployable network ahead of time.

``--format onnx`` writes an ONNX file (``--out``, else into the cache the engine reads);
``--format tensorrt`` builds the TensorRT engine for ``--size`` into the cache, the way
production stacks build engines at install time rather than on the robot's first frame.
``--precision int8 --calibration DATA`` builds the quantized network (or TensorRT's INT8 engine)
exactly as the engine would, through the engine itself, so the node finds it in the cache; the
parity gate runs too, and a refused network exits 3 with the measured agreement.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from ..choices import ONNX_MODEL
from ..cli_args import add_int8_options, int8_settings, parse_size


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from ..models import build_model, load_checkpoint
    from ..params import parse_options
    from . import backend_problem
    from .cache import ArtifactCache
    from .export import ExportSpec, check_crf_not_exported, export_onnx_bytes, read_metadata
    from .onnxruntime_backend import build_onnxruntime_network

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    check_crf_not_exported(args.crf)
    if args.precision == "int8":
        return _export_int8(args)
    if args.model == ONNX_MODEL:
        raise ValueError("model onnx is an ONNX file already: there is nothing to export in fp16/fp32 (the node "
                         "serves the file itself); use --precision int8 --calibration DATA to quantize it")
    if args.format == "tensorrt" and (problem := backend_problem("tensorrt", "cuda", "none")):
        raise ValueError(problem)
    if args.format == "onnx" and not args.weights and not args.out:
        raise ValueError("without --weights the export holds random weights, which are never cached; "
                         "write it to a file with --out FILE")
    options = parse_options(args.model_options)
    model = build_model(args.model, args.num_classes, args.variant, **options).eval()
    if args.weights:
        load_checkpoint(model, args.weights)
    spec = ExportSpec(model=args.model, variant=model.variant, num_classes=args.num_classes, options=options,
                      weights=args.weights or "", size=args.size, normalization=model.normalization)
    cache = ArtifactCache(args.cache_dir)
    if args.format == "tensorrt":
        from .tensorrt_backend import build_tensorrt_network

        network = build_tensorrt_network(model, spec, torch.device("cuda"), cache, args.precision == "fp16",
                                         args.size)
        print(f"TensorRT engine ready ({network.name}) in {cache.root / 'tensorrt'}")
        return 0
    # Weights from a file: the cache's entry, checked like the engine checks it (key, digest,
    # metadata, parity probe), else exported into it. Random weights: exported straight to --out.
    path, hit = None, False
    if args.weights:
        network = build_onnxruntime_network(model, spec, torch.device("cpu"), cache)
        path, hit = network.path, network.cache_hit
    if path is None and not args.out:
        raise ValueError("the export could not be cached (see the log); write it to a file with --out FILE")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if path is not None:
            shutil.copyfile(path, out)
        else:
            out.write_bytes(export_onnx_bytes(model, spec)[0])
        path = out
    metadata = read_metadata(path)
    print(f"{'cached' if hit else 'exported'} {path} (input size {metadata['input_size']}, "
          f"{metadata['num_classes']} classes, {args.model} {model.variant})")
    return 0


def _export_int8(args: argparse.Namespace) -> int:
    """The int8 network built by the engine itself (same calibration inputs, same cache key as
    the node's with the same settings), its parity gate included."""
    from ..engine import EngineConfig, SegmentationEngine
    from ..params import parse_options

    tensorrt = args.format == "tensorrt"
    if not args.calibration:
        raise ValueError("precision int8 needs --calibration: a drive bag folder, a Cityscapes folder or a folder "
                         "of images like the camera's")
    config = EngineConfig(
        model=args.model, variant=args.variant, weights=args.weights or "", num_classes=args.num_classes,
        model_options=parse_options(args.model_options), device="cuda" if tensorrt else "cpu", precision="int8",
        backend="tensorrt" if tensorrt else "onnxruntime", cache_dir=args.cache_dir or "",
        inference_size=args.size if tensorrt else args.inference_size, **int8_settings(args),
    )
    engine = SegmentationEngine(config)
    network = engine.network
    described = engine.description
    print(f"int8 network ready: {described['backend']} ({described['artifact']})\n  {described['quantization']}\n"
          f"  parity: {described['parity']}")
    if args.out and not tensorrt:
        if network.path is None:
            raise ValueError(f"the int8 network lives in memory only ({described['artifact']}); nothing to copy")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(network.path, out)
        print(f"wrote {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to the CLI parser."""
    p = sub.add_parser("export", help="export a model to ONNX or build its TensorRT engine (cached)")
    p.add_argument("--model", default="regseg")
    p.add_argument("--variant", default=None)
    p.add_argument("--weights", default=None,
                   help="checkpoint; without one the random weights are exported (to --out only: never cached)")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--model-options", default="{}", help="YAML mapping of builder options")
    p.add_argument("--size", type=parse_size, default=(512, 1024),
                   help="HEIGHTxWIDTH traced (ONNX stays dynamic where the model allows) / TensorRT engine size")
    p.add_argument("--format", default="onnx", choices=("onnx", "tensorrt"))
    p.add_argument("--precision", default="fp16", choices=("fp16", "fp32", "int8"),
                   help="TensorRT precision; int8 (onnx or tensorrt) needs --calibration")
    add_int8_options(p)
    p.add_argument("--inference-size", type=parse_size, default=None,
                   help="int8 onnx: the node's inference_size, if it sets one (the calibration frames run at the "
                        "network's size, which is part of the cache key); default each frame's own size")
    p.add_argument("--crf", default="none", choices=("none", "cpu", "gpu"),
                   help="refused with an explanation: the CRF is not part of the network")
    p.add_argument("--out", default=None, help="ONNX file to write (default: only the cache)")
    p.add_argument("--cache-dir", default=None, help="cache folder (default $XDG_CACHE_HOME/seg_perception)")
    p.set_defaults(func=cmd_export)
