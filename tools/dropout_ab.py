#!/usr/bin/env python3
"""A/B timing of builds of tools/dropout_micro.c on a shared machine: the
builds run one after another, round after round (the order reversed every
round), each run timing one loop of one variant; the medians over the rounds
and the spread (min..max of the per-run medians) are printed, in ns and in
cycles (each sample converted with the effective clock measured next to it).

    python3 tools/dropout_ab.py [--rounds N] [--loop fwd_nt_f32] [--variant avx2] \
        NAME=BINARY [NAME=BINARY ...]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess


def one(binary, loop, variant, groups, samples):
    out = subprocess.run([binary, "time", str(groups), str(samples), loop, variant],
                         capture_output=True, text=True, check=True).stdout
    for ln in out.splitlines():
        f = ln.split()
        if len(f) >= 3 and f[0] == loop and f[1] == variant:
            cyc = float(f[f.index("ns") + 1]) if "ns" in f else float("nan")
            return float(f[2]), cyc
    raise RuntimeError(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--loop", default="fwd_nt_f32")
    ap.add_argument("--variant", default="avx2")
    ap.add_argument("--groups", type=int, default=256)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("builds", nargs="+")
    a = ap.parse_args()
    builds = [b.split("=", 1) for b in a.builds]
    res = {n: [] for n, _ in builds}
    for r in range(a.rounds):
        order = builds if r % 2 == 0 else builds[::-1]
        for n, b in order:
            res[n].append(one(b, a.loop, a.variant, a.groups, a.samples))
    print(f"{a.loop} {a.variant}: per 64 values, median of {a.rounds} interleaved runs "
          f"[min, max]")
    for n, _ in builds:
        v = [x[0] for x in res[n]]
        c = [x[1] for x in res[n]]
        print(f"  {n:12s} {statistics.median(v):8.2f} ns [{min(v):.2f}, {max(v):.2f}]"
              f"   {statistics.median(c):7.1f} cycles [{min(c):.1f}, {max(c):.1f}]")


if __name__ == "__main__":
    main()
