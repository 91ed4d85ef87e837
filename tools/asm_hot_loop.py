#!/usr/bin/env python3
"""Print the hot path through the outermost loop of one function in a GCC/Clang
``-S`` assembly file, as plain instructions for ``llvm-mca``.

    python3 tools/asm_hot_loop.py FILE.s FUNCTION [--stats]

The function is cut into basic blocks (a label starts one, a jump ends one).
Its loop is the natural loop (a back edge to a dominating head) with the most
instructions; the hot path is the longest path through it from the head back
to the head (so the Philox path of a dropout group loop, not a short branch),
less out-of-line optional arms: a branch target that only jumps back to the
branch's fall-through block, GCC's layout of `if (unlikely) {...}`.  One iteration of the printed sequence is one
pass of the loop: for the dropout range functions, one group of 64 values.
Directives and labels are dropped; branches stay in (they cost a slot each).
``--stats`` prints, to stderr, the instruction count and a few opcode counts.
"""
from __future__ import annotations

import re
import sys
from collections import Counter

LABEL = re.compile(r"^([.\w$]+):")
JUMP = re.compile(r"^\s*(j[a-z]+)\s+([.\w$]+)\s*$")


def function_lines(text: str, name: str) -> list[str]:
    lines = text.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.startswith(name + ":"))
    except StopIteration:
        sys.exit(f"asm_hot_loop: no function {name!r}")
    out = []
    for ln in lines[start + 1:]:
        if ln.strip().startswith((".cfi_endproc", ".size")):
            break
        out.append(ln)
    return out


def blocks(lines: list[str]):
    """[(label or None, [instructions], jump opcode or None, jump target or None)]"""
    res, cur_label, cur = [], None, []

    def close(jop=None, target=None):
        nonlocal cur_label, cur
        res.append((cur_label, cur, jop, target))
        cur_label, cur = None, []

    for ln in lines:
        s = ln.split("#", 1)[0].rstrip()
        if not s.strip():
            continue
        m = LABEL.match(s)
        if m:
            if cur or cur_label is not None:
                close()
            cur_label = m.group(1)
            continue
        if s.strip().startswith("."):
            continue                      # directive
        cur.append(s.strip())
        j = JUMP.match(s)
        if j:
            close(j.group(1), j.group(2))
        elif s.strip().startswith("ret"):
            close("ret", None)
    if cur or cur_label is not None:
        close()
    return res


def natural_loops(bl):
    """(succ, loops) of the blocks bl: succ(i), the successors of block i;
    loops, {head: set of blocks} of the natural loops (a back edge u -> h, h
    dominating u), the bodies of loops sharing a head merged."""
    index = {b[0]: i for i, b in enumerate(bl) if b[0] is not None}
    n = len(bl)

    def succ(i):
        _, _, jop, tgt = bl[i]
        out = []
        if jop is not None and jop != "ret" and tgt in index:
            out.append(index[tgt])
        if jop not in ("jmp", "ret") and i + 1 < n:
            out.append(i + 1)
        return out

    # dominators (iterative)
    preds = [[] for _ in range(n)]
    for i in range(n):
        for j in succ(i):
            preds[j].append(i)
    dom = [set(range(n)) for _ in range(n)]
    dom[0] = {0}
    changed = True
    while changed:
        changed = False
        for i in range(1, n):
            ps = [dom[p] for p in preds[i]]
            new = (set.intersection(*ps) if ps else set()) | {i}
            if new != dom[i]:
                dom[i], changed = new, True
    loops = {}
    for u in range(n):
        for h in succ(u):
            if h in dom[u]:
                body, stack = {h, u}, ([u] if u != h else [])
                while stack:
                    k = stack.pop()
                    for p in preds[k]:
                        if p not in body:   # (the walk stops at h, which is in body)
                            body.add(p)
                            stack.append(p)
                loops.setdefault(h, set()).update(body)
    return succ, loops


def hot_path(bl) -> list[str]:
    index = {b[0]: i for i, b in enumerate(bl) if b[0] is not None}
    succ, loops = natural_loops(bl)
    # the loop: the natural loop with the most instructions
    best = None
    for h, body in loops.items():
        size = sum(len(bl[k][1]) for k in body)
        if best is None or size > best[0]:
            best = (size, h, body)
    if best is None:
        sys.exit("asm_hot_loop: no loop found")
    _, head, body = best

    def hot_succ(i):
        """Successors inside the loop, less an out-of-line optional arm: a
        branch target that only jumps back to the branch's fall-through block
        (GCC's layout of `if (unlikely) {...}`)."""
        out = [j for j in succ(i) if j in body]
        _, _, jop, tgt = bl[i]
        if jop not in (None, "jmp", "ret") and tgt in index and i + 1 in out:
            t = index[tgt]
            if bl[t][2] == "jmp" and index.get(bl[t][3]) == i + 1:
                out = [j for j in out if j != t]
        return out

    def longest(i, onpath):   # longest path i -> ... -> back to head
        best_here = None
        for j in hot_succ(i):
            if j == head:
                cand = (len(bl[i][1]), [i])
            elif j in onpath:
                continue
            else:
                sub = longest(j, onpath | {j})
                if sub is None:
                    continue
                cand = (len(bl[i][1]) + sub[0], [i] + sub[1])
            if best_here is None or cand[0] > best_here[0]:
                best_here = cand
        return best_here

    res = longest(head, {head})
    if res is None:
        sys.exit("asm_hot_loop: loop head does not reach itself")
    return [ins for i in res[1] for ins in bl[i][1]]


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    with open(argv[1]) as f:
        text = f.read()
    path = hot_path(blocks(function_lines(text, argv[2])))
    print("\n".join(path))
    if "--stats" in argv:
        ops = Counter(i.split()[0] for i in path)
        keys = ("vpmuludq", "vpsrlq", "vpsllq", "vpblendd", "vpxor", "vpshufd", "vmovdqa",
                "vmovdqu", "vmovups", "vmovntps", "vmovntpd", "vmovupd")
        detail = " ".join(f"{k}={ops[k]}" for k in keys if ops[k])
        print(f"{argv[2]}: {len(path)} instructions; {detail}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
