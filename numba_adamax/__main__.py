"""``python -m numba_adamax warmup``: fill the on-disk kernel cache ahead of time.

Run it once after installing (for example while building a container image), so that
no process compiles on its first step. ``--all`` goes through every configuration
whose kernels differ (loss scaling, weight decay, EMA, gradient accumulation and the
kind of clipping, each on and off, with dense and sparse gradients); otherwise the
options given describe one configuration.
"""
import argparse
import logging
import sys
import time

from . import _warmup


def _parser():
    parser = argparse.ArgumentParser(prog="python -m numba_adamax", description=__doc__.split(
        "\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    warm = commands.add_parser("warmup", help="compile the kernels into the disk cache")
    warm.add_argument("--all", action="store_true",
                      help="every configuration whose kernels differ")
    warm.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    warm.add_argument("--sparse", action="store_true", help="also sparse-gradient kernels")
    warm.add_argument("--variant", choices=["serial", "parallel", "both"], default="both",
                      help="the serial loops (small dtype groups), the parallel ones, or both")
    for name in ("clipnorm", "clipvalue", "global_clipnorm", "weight_decay",
                 "loss_scale_factor"):
        warm.add_argument(f"--{name}", type=float, default=None)
    warm.add_argument("--use-ema", action="store_true")
    warm.add_argument("--gradient-accumulation-steps", type=int, default=None)
    warm.add_argument("--nonfinite", choices=["propagate", "skip", "raise"],
                      default="propagate")
    return parser


def main(argv=None):
    """Run the command line; returns the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parallel = {"serial": False, "parallel": True, "both": None}[args.variant]
    if args.all:
        # The finite check does not depend on the rest: checking in every run covers it.
        configurations = [{**options, "nonfinite": "skip"}
                          for options in _warmup.all_configurations()]
        sparse_choices = (False, True)
    else:
        configurations = [{key: getattr(args, key) for key in (
            "clipnorm", "clipvalue", "global_clipnorm", "weight_decay", "loss_scale_factor",
            "use_ema", "gradient_accumulation_steps", "nonfinite")}]
        sparse_choices = (args.sparse,)
    started = time.perf_counter()
    for n, options in enumerate(configurations, 1):
        for sparse in sparse_choices:
            _warmup.warmup(args.dtypes, sparse=sparse, parallel=parallel, **options)
        shown = {k: v for k, v in options.items() if v not in (None, False, "propagate")}
        print(f"[{n}/{len(configurations)}] {shown or 'defaults'}", flush=True)
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
