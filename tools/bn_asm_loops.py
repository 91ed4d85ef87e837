#!/usr/bin/env python3
"""The innermost loops of one function in a GCC ``-S`` assembly file, for
``llvm-mca``: the batchnorm kernels' inner loops (nd_rows_stats_unit_f32.avx2,
...) hold several loops each (the passes, the vector loop and its scalar
tail), so the hot loop is not the largest loop but one of the innermost ones.

    python3 tools/bn_asm_loops.py FILE.s FUNCTION            # list them
    python3 tools/bn_asm_loops.py FILE.s FUNCTION K          # print loop K
    python3 tools/bn_asm_loops.py FILE.s FUNCTION --values loads:N|stores

--values also prints each loop's values per iteration, as the float32 data
the loop reads or writes: ``loads:N``, the floats its float loads (vmovups,
vmovaps, vcvtps2pd memory operands) advance by per iteration, over N input
streams (1 for the statistics, 2 for the sums of dout and x); ``stores``, the
floats its float stores (vmovups, vmovaps, vmovntps) advance by.  A stream is a
(base, index) register pair; it advances by its index register's increment
times the scale, or its base register's increment.

An innermost loop is a natural loop (a back edge to a dominating head) that
contains no other loop's head.  Listed in address order of their heads, with
their instruction counts and how many vector (ymm/zmm) instructions they hold;
loop K is printed as plain instructions (its blocks in address order, labels
and directives dropped), one iteration of which is one pass of the loop.
"""
from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from asm_hot_loop import blocks, function_lines, natural_loops  # noqa: E402


def innermost_loops(bl):
    """[(head, sorted blocks)] of the natural loops that hold no other loop's head."""
    _, loops = natural_loops(bl)
    heads = set(loops)
    inner = [(h, sorted(b)) for h, b in loops.items() if not (heads & b) - {h}]
    return sorted(inner)


MEM = re.compile(r"^-?\w*\(")


def operands(ins):
    """The operands of an AT&T instruction (commas inside (...) kept)."""
    parts = ins.split(None, 1)
    if len(parts) < 2:
        return []
    out, depth, cur = [], 0, ""
    for ch in parts[1]:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    return out + [cur.strip()]


ADDR = re.compile(r"^(-?\d*)\((%\w+)?(?:,(%\w+)(?:,(\d))?)?\)$")


def increments(ins):
    """bytes each register advances per iteration (addq/subq $K, leaq K(%r), %r)."""
    inc = {}
    for i in ins:
        op, args = i.split()[0], operands(i)
        if op in ("addq", "subq") and len(args) == 2 and args[0].startswith("$"):
            k = int(args[0][1:], 0)
            inc[args[1]] = inc.get(args[1], 0) + (k if op == "addq" else -k)
        elif op == "leaq" and len(args) == 2:
            m = ADDR.match(args[0])
            if m and m.group(2) == args[1] and not m.group(3):
                inc[args[1]] = inc.get(args[1], 0) + int(m.group(1) or 0)
    return inc


def values_per_iteration(ins, how):
    """float32 values one iteration of the loop handles (see --values): the
    float data streams it reads (or writes), each advancing by the increment
    of its index register (times the scale) or of its base register."""
    inc = increments(ins)
    streams = {}
    for i in ins:
        op, args = i.split()[0], operands(i)
        if len(args) < 2:
            continue
        if how == "stores":
            if op not in ("vmovups", "vmovaps", "vmovntps") or not ADDR.match(args[-1]):
                continue
            m = ADDR.match(args[-1])
        else:
            if op not in ("vmovups", "vmovaps", "vcvtps2pd") or not ADDR.match(args[0]):
                continue
            m = ADDR.match(args[0])
        base, index, scale = m.group(2), m.group(3), int(m.group(4) or 1)
        step = inc.get(index, 0) * scale if index else inc.get(base, 0)
        streams[(base, index)] = abs(step)
    total = sum(streams.values()) / 4
    return total if how == "stores" else total / int(how.split(":")[1])


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    with open(argv[1]) as f:
        text = f.read()
    bl = blocks(function_lines(text, argv[2]))
    loops = innermost_loops(bl)
    how = argv[argv.index("--values") + 1] if "--values" in argv else None
    if len(argv) == 3 or how:
        for k, (h, body) in enumerate(loops):
            ins = [i for b in body for i in bl[b][1]]
            vec = sum(1 for i in ins if "%ymm" in i or "%zmm" in i)
            extra = f"  {values_per_iteration(ins, how):6.1f} values" if how else ""
            print(f"{k:3d}  head {bl[h][0]}  {len(ins):4d} instructions  {vec:4d} ymm/zmm{extra}")
        return
    h, body = loops[int(argv[3])]
    print("\n".join(i for b in body for i in bl[b][1]))


if __name__ == "__main__":
    main(sys.argv)
