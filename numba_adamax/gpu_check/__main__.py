"""``python -m numba_adamax.gpu_check``: see the package docstring."""
import argparse
import sys

from . import __doc__ as _doc


def offline(keep_ptx=None, results=None, out=print):
    """Run the PTX check (or report ``results`` of one), print its table and closing
    line through ``out``; returns the exit status (0: nothing failed)."""
    from . import ptx
    if results is None:
        reason = ptx.unavailable_reason()
        if reason is not None:
            out(f"Cannot run the PTX check: {reason}.")
            out(f"ptx: 0 kernels assembled for {', '.join(ptx.ARCHS)}, 1 failed")
            return 1
        out(f"ptxas: {ptx.find_ptxas()}")
        results = ptx.assemble_all(workdir=keep_ptx)
    for line in ptx.usage_table(results):
        out(line)
    for r in results:
        if not r.ok:
            out(f"FAILED {r.module}.{r.kernel} {r.arch} ({', '.join(r.shapes)}): {r.error}")
    line = ptx.summary(results)
    out(line)
    return 0 if line.endswith(" 0 failed") else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m numba_adamax.gpu_check",
                                     description=_doc.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offline", action="store_true",
                        help="only compile every kernel to PTX and assemble it (no GPU)")
    parser.add_argument("--keep-ptx", metavar="DIR",
                        help="with --offline: keep the PTX and cubins in DIR")
    parser.add_argument("--out", metavar="DIR", default="gpu_check_report",
                        help="where the device run writes report.json and report.md")
    parser.add_argument("--budget", type=float, default=470.0, metavar="SECONDS",
                        help="wall-clock budget of the device run (default 470)")
    args = parser.parse_args(argv)
    if args.offline:
        return offline(args.keep_ptx)
    from . import device
    return device.run(args.out, budget=args.budget)


if __name__ == "__main__":
    sys.exit(main())
