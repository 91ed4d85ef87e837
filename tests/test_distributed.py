"""Synchronized batchnorm over MPI and sharded dropout, under mpiexec with 1,
2 and 3 processes (tests/mpi/sync_worker.py does the checks on every rank).
Skipped, with the reason, where mpi4py or mpiexec is missing."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "mpi", "sync_worker.py")


def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.isfile(here) else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpi4py and mpiexec are not installed "
                                "(pip install 'normdrop[mpi]')")

SHARDS = {1: ["20", "3"], 2: ["7,13", "1,2", "0,5"], 3: ["7,0,13", "1,1,1"]}


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_synchronized_batchnorm_and_sharded_dropout(ranks):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, WORKER] + SHARDS[ranks]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for r in range(ranks):
        assert f"rank {r} ok" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("ranks", [2, 3])
def test_data_parallel_example_matches_one_process(ranks):
    """examples/data_parallel.py: the synchronized, sharded training's losses
    equal the single-process run's to float64 rounding."""
    example = os.path.join(os.path.dirname(HERE), "examples", "data_parallel.py")
    if not os.path.isfile(example):
        pytest.skip("the examples are in the source tree only")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, example],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    line = [ln for ln in res.stdout.splitlines() if "largest relative difference" in ln][-1]
    assert float(line.rsplit(" ", 1)[1]) < 1e-12, line
