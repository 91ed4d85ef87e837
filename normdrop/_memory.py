"""The CPU backend's cache of large output buffers.

Outputs of at least ``POOLED_MIN_BYTES`` that the C kernels write (``out``,
``dx`` and dropout's packed bits) take their memory from a small cache through
NumPy's data-allocator hook (NEP 49).  They are ordinary NumPy arrays that own
their data; when one is freed, its block returns to the cache instead of to
the C library, and the next output of about the same size reuses it.

Why: the C library gives every block over its mmap threshold (at most 32 MiB
with glibc) fresh pages, and the operating system zeroes each fresh page when
it is first written.  For a 64 MiB dropout output that costs more than the
kernel itself.  A training loop frees and allocates the same sizes in every
step, so the cache removes that cost.

Bounds: cached (free) blocks hold at most ``limit`` bytes, 512 MiB by default,
and at most 16 blocks; memory held by live arrays is never counted or kept.
``NORMDROP_CACHE_LIMIT`` (bytes, read at import) sets the starting limit;
``set_cache_limit(0)`` turns caching off; ``empty_cache()`` releases it all.
Blocks are 64-byte aligned, which also lets the kernels stream large outputs
past the caches.
"""
from __future__ import annotations

import os
import warnings

from ._cpu import _kernels as _k

POOLED_MIN_BYTES = 1 << 20
DEFAULT_LIMIT = 512 << 20


def empty_cache() -> None:
    """Release every block held by normdrop's output-buffer cache.

    Arrays still in use are not affected.  See ``set_cache_limit``.
    """
    _k.cache_trim()


def set_cache_limit(nbytes: int) -> int:
    """Set how many bytes of freed output buffers normdrop may keep for reuse.

    Parameters
    ----------
    nbytes : int
        Limit in bytes, ``>= 0``; ``0`` turns the cache off.  Cached blocks
        above the new limit are released at once (oldest first).

    Returns
    -------
    int
        The previous limit.

    Notes
    -----
    CPU (NumPy) outputs of at least 1 MiB come from this cache.  The default
    limit is 512 MiB, or ``NORMDROP_CACHE_LIMIT`` (bytes) when set at import.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) and not hasattr(nbytes, "__index__"):
        raise TypeError(f"set_cache_limit: nbytes must be an int, got {type(nbytes).__name__}")
    nbytes = int(nbytes.__index__())
    if nbytes < 0:
        raise ValueError(f"set_cache_limit: nbytes must be >= 0, got {nbytes}")
    return int(_k.cache_set_limit(nbytes))


def cache_info() -> dict:
    """State of the output-buffer cache.

    Returns
    -------
    dict
        ``blocks`` and ``bytes`` cached now (free blocks only), ``limit`` in
        bytes, and since import ``hits`` (outputs that reused a block) and
        ``misses`` (outputs that needed a new one).
    """
    blocks, nbytes, limit, hits, misses = _k.cache_info()
    return {"blocks": int(blocks), "bytes": int(nbytes), "limit": int(limit),
            "hits": int(hits), "misses": int(misses)}


def _limit_from_env() -> None:
    raw = os.environ.get("NORMDROP_CACHE_LIMIT", "").strip()
    if not raw:
        _k.cache_set_limit(DEFAULT_LIMIT)
        return
    try:
        value = int(raw)
        if value < 0:
            raise ValueError
    except ValueError:
        warnings.warn(f"normdrop: ignoring NORMDROP_CACHE_LIMIT={raw!r} (expected bytes, an "
                      f"integer >= 0); using {DEFAULT_LIMIT}", RuntimeWarning, stacklevel=2)
        value = DEFAULT_LIMIT
    _k.cache_set_limit(value)


_limit_from_env()
