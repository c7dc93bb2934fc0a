"""``seg-perception``: the command-line tool (model list, benchmarks, data and evaluation).

Each subcommand imports its implementation lazily so ``seg-perception models`` stays quick.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .backends.base import BACKENDS
from .choices import PRECISIONS
from .cli_args import add_int8_options, int8_settings, parse_size
from .engine_api import ParityError

__all__ = ["build_parser", "main", "parse_size"]


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    from .models import build_model, count_parameters, list_models

    print(f"{'model':<15} {'variant':<28} {'params':>12}  description")
    for name, entry in list_models().items():
        for variant in entry.variants:
            with torch.device("meta"):
                params = count_parameters(build_model(name, args.num_classes, variant))
            default = " (default)" if variant == entry.default_variant else ""
            print(f"{name:<15} {variant + default:<28} {params:>12,}  {entry.description}")
    print(f"{'onnx':<15} {'(weights: FILE.onnx)':<28} {'-':>12}  any segmentation network exported to ONNX "
          "(README: Bring your own network)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .benchmark import format_table, run_benchmark, write_json
    from .engine import EngineConfig, OutputRequest
    from .params import parse_options

    height, width = args.size
    precision = args.precision or ("fp32" if args.device == "cpu" else "fp16")
    config = EngineConfig(
        model=args.model, variant=args.variant, weights=args.weights or "",
        model_options=parse_options(args.model_options), device=args.device,
        precision=precision, crf=args.crf, compile=args.compile, backend=args.backend, **int8_settings(args),
    )
    report = run_benchmark(config, height, width, args.iterations, args.warmup,
                           OutputRequest(color=args.color, overlay=args.overlay))
    print(f"\n{report['engine']['model']} {report['engine']['variant']} {height}x{width} on "
          f"{report['engine']['device']} ({report['engine']['precision']}), {args.iterations} frames")
    print(format_table(report))
    compiled = ("" if args.compile == "none" else f"_{args.compile}") + (
        "" if args.backend == "auto" else f"_{args.backend}")
    out = args.out or (f"bench/results/{args.model}_{height}x{width}_{report['engine']['precision']}"
                       f"_{config.device}{compiled}.json")
    print(f"wrote {write_json(report, out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seg-perception", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list registered models with parameter counts")
    p.add_argument("--num-classes", type=int, default=19)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("bench", help="per-stage engine latency table (p50/p90/p99) and JSON")
    p.add_argument("--model", default="regseg")
    p.add_argument("--variant", default=None)
    p.add_argument("--weights", default=None)
    p.add_argument("--model-options", default="{}", help="YAML mapping of builder options")
    p.add_argument("--size", type=parse_size, default=(1024, 2048), help="HEIGHTxWIDTH")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--precision", default=None, choices=PRECISIONS, help="int8 needs --calibration")
    add_int8_options(p)
    p.add_argument("--crf", default="none", choices=("none", "cpu", "gpu"))
    p.add_argument("--compile", default="none", choices=("none", "torch_compile", "cuda_graph"),
                   help="torch_compile: TorchInductor; cuda_graph: replay captured graphs (CUDA only)")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="what runs the network (docs/BACKENDS.md)")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--color", action="store_true", help="also compute the colour mask")
    p.add_argument("--overlay", action="store_true", help="also compute the overlay")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/...)")
    p.set_defaults(func=cmd_bench)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Functions that add the evaluation and data subcommands to the parser."""
    from .backends.commands import register as register_export
    from .evaluation.commands import register
    from .mining.command import register as register_mine
    from .training.command import register as register_train

    return [register, register_export, register_train, register_mine]


#: Exit status when the parity gate refused the engine (its measured agreement is printed).
EXIT_PARITY = 3


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ParityError as exc:
        print(f"seg-perception {args.command}: {exc}", file=sys.stderr)
        return EXIT_PARITY
    except (ValueError, FileNotFoundError) as exc:
        print(f"seg-perception {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
