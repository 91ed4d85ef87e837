#!/usr/bin/env python3
"""A/B timing of normdrop.dropout_forward / dropout_backward between built
source trees (each with its extension built in place), for a shared machine:
the trees alternate process by process, round after round (the order reversed
every round); each process times CALLS calls after a warm-up and reports the
median.  Printed: per tree and case, the median over the rounds and the
spread (min..max of the per-process medians), in ms.

    python3 tools/dropout_fwd_ab.py [--rounds 9] [--calls 15] NAME=TREE [NAME=TREE ...]

Cases: forward and backward, 4096x4096, float32 and float64, p = 0.5, as
`python -m normdrop bench --ops dropout-fwd,dropout-bwd`, with the threads
OpenMP chooses (OMP_NUM_THREADS to change).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
import normdrop as nd
calls = int(sys.argv[1])
res = {}
for dt in ("float32", "float64"):
    x = np.random.default_rng(0).standard_normal((4096, 4096)).astype(dt)
    param = {"p": 0.5, "mode": "train", "seed": 1234}
    out, cache = nd.dropout_forward(x, param)
    for part in ("fwd", "bwd"):
        fn = (lambda: nd.dropout_forward(x, param)) if part == "fwd" else \
             (lambda: nd.dropout_backward(x, cache))
        for _ in range(3):
            fn()
        t = []
        for _ in range(calls):
            a = time.perf_counter()
            fn()
            t.append(time.perf_counter() - a)
        t.sort()
        res[f"{part} {dt}"] = 1e3 * t[len(t) // 2]
print(json.dumps(res))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=15)
    ap.add_argument("trees", nargs="+")
    a = ap.parse_args()
    trees = [t.split("=", 1) for t in a.trees]
    res = {n: {} for n, _ in trees}
    for r in range(a.rounds):
        for n, path in (trees if r % 2 == 0 else trees[::-1]):
            env = dict(os.environ, PYTHONPATH=os.path.abspath(path))
            out = subprocess.run([sys.executable, "-c", CHILD, str(a.calls)], cwd=path, env=env,
                                 capture_output=True, text=True, check=True).stdout
            for k, v in json.loads(out.strip().splitlines()[-1]).items():
                res[n].setdefault(k, []).append(v)
    print(f"dropout 4096x4096, p = 0.5: ms, median over {a.rounds} alternating processes "
          f"of the median of {a.calls} calls [min, max]")
    for case in res[trees[0][0]]:
        row = "  ".join(f"{n} {statistics.median(res[n][case]):6.2f} "
                        f"[{min(res[n][case]):.2f}, {max(res[n][case]):.2f}]" for n, _ in trees)
        print(f"  {case:13s}  {row}")


if __name__ == "__main__":
    main()
