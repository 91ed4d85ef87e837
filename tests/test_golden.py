"""No output bit changes unnoticed: the digests of tests/golden_corpus.py at
1, 2 and 3 OpenMP threads equal the recorded ones (tests/golden_hashes.py).
Each thread count runs in its own process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from golden_hashes import HASHES

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = ("import json, sys; sys.path.insert(0, sys.argv[1]); import golden_corpus; "
          "print(json.dumps(golden_corpus.run()))")


def _run(threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("NORMDROP_STREAM_BYTES", None)
    env.pop("NORMDROP_BACKEND", None)
    res = subprocess.run([sys.executable, "-c", SCRIPT, HERE], env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_outputs_equal_the_recorded_digests(threads):
    got = _run(threads)
    assert set(got) == set(HASHES), (sorted(set(got) ^ set(HASHES))[:10])
    changed = sorted(k for k in HASHES if got[k] != HASHES[k])
    assert not changed, f"{len(changed)} of {len(HASHES)} cases changed, e.g. {changed[:8]}"


REFUSED = ("import json, sys; sys.path.insert(0, sys.argv[1]); import golden_corpus; "
           "from normdrop._cpu import _kernels; _kernels.set_scratch_refusal(int(sys.argv[2])); "
           "print(json.dumps(golden_corpus.run_groups()))")


@pytest.mark.parametrize("threads,mode", [(1, 1), (2, 1), (2, 2), (3, 2)],
                         ids=["1-thread-none", "2-threads-none", "2-threads-one", "3-threads-one"])
def test_refused_scratch_gives_the_recorded_digests(threads, mode):
    """The channels-last groupnorm passes without their per-thread scratch
    (as where its allocation fails: on every thread, or on the odd-numbered
    ones while the others have theirs) take their per-group fallbacks, and
    those give the same bits: the layernorm and groupnorm digests."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("NORMDROP_STREAM_BYTES", None)
    env.pop("NORMDROP_BACKEND", None)
    res = subprocess.run([sys.executable, "-c", REFUSED, HERE, str(mode)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got and set(got) <= set(HASHES)
    changed = sorted(k for k in got if got[k] != HASHES[k])
    assert not changed, f"{len(changed)} of {len(got)} cases changed, e.g. {changed[:8]}"
