"""Command line: ``python -m normdrop demo``, ``info`` and ``bench``."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normdrop",
                                     description="normdrop command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="train a small network (batchnorm, dropout) on a generated spiral, "
                     "side by side with the cs231n NumPy layers",
        description="Trains affine -> batchnorm -> ReLU -> dropout -> affine -> softmax on "
                    "cs231n's spiral data (generated, nothing downloaded) with normdrop's "
                    "layers, then the same training on the cs231n NumPy layers, and prints "
                    "the final validation accuracy as its last line.")
    from ._demo import add_arguments as add_demo_arguments
    add_demo_arguments(demo)
    sub.add_parser("info", help="version, backends, OpenMP and threads, CUDA")
    bench = sub.add_parser(
        "bench", help="timing table: normdrop, its reference backend, the cs231n NumPy code, "
                      "PyTorch and the memory-bandwidth bound",
        description="Times every op side by side (interleaved repetitions, the same thread "
                    "count for everyone) and prints one row per op x shape x dtype.")
    from ._bench import add_arguments
    add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import main as demo_main
        return demo_main(args)
    if args.command == "info":
        from ._info import show_config
        show_config()
        return 0
    if args.command == "bench":
        from ._bench import main as bench_main
        return bench_main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
