"""The CPU backend's cache of large output buffers.

Outputs of at least 1 MiB that the C kernels write (``out``,
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
``NORMDROP_CACHE_LIMIT`` (bytes, read at import) sets the starting limit
(``NORMDROP_STREAM_BYTES``, the streaming-store threshold, is read here too);
``set_cache_limit(0)`` turns caching off; ``empty_cache()`` releases it all.
Blocks are 64-byte aligned, which also lets the kernels stream large outputs
past the caches.  On Linux, new blocks of 4 MiB or more ask for transparent
huge pages (``madvise(MADV_HUGEPAGE)``), as NumPy does for its own arrays,
whenever NumPy does (NumPy's setting when normdrop is imported; a later
change of NumPy's setting is not followed): without them a 16 MiB output
spans 4096 pages, more than the processor's TLB holds, and a kernel that
writes it waits on page walks.  Where the caller has installed a NumPy data
allocator of their own, outputs use it and the cache stays out of the way.

Without the C extension (a reference-only install) there is no cache: these
functions still work and report an empty cache with limit 0.
"""
from __future__ import annotations

import operator
import os
import warnings

try:
    from ._cpu import _kernels as _k
    from ._cpu import _pool as _p
except ImportError:          # reference-only: normdrop._dispatch reports why
    _k = _p = None

DEFAULT_LIMIT = 512 << 20
_SIZE_MAX = 2**64 - 1        # limits above this (more than any memory) are clamped


def empty_cache() -> None:
    """Release every block held by normdrop's output-buffer cache.

    Arrays still in use are not affected.  See ``set_cache_limit``.
    """
    if _k is not None:
        _p.cache_trim()


def set_cache_limit(nbytes: int) -> int:
    """Set how many bytes of freed output buffers normdrop may keep for reuse.

    Parameters
    ----------
    nbytes : int
        Limit in bytes, ``>= 0``; ``0`` turns the cache off.  Cached blocks
        above the new limit are released at once (oldest first).  Values
        above 2**64 - 1 mean the same as 2**64 - 1 (no limit in practice).

    Returns
    -------
    int
        The previous limit.

    Notes
    -----
    CPU (NumPy) outputs of at least 1 MiB come from this cache.  The default
    limit is 512 MiB, or ``NORMDROP_CACHE_LIMIT`` (bytes) when set at import.
    """
    if isinstance(nbytes, bool) or not hasattr(nbytes, "__index__"):
        raise TypeError(f"set_cache_limit: nbytes must be an int, got {type(nbytes).__name__}")
    nbytes = operator.index(nbytes)
    if nbytes < 0:
        raise ValueError(f"set_cache_limit: nbytes must be >= 0, got {nbytes}")
    if _k is None:
        return 0
    return int(_p.cache_set_limit(min(nbytes, _SIZE_MAX)))


def cache_info() -> dict:
    """State of the output-buffer cache.

    Returns
    -------
    dict
        ``blocks`` and ``bytes`` cached now (free blocks only), ``limit`` in
        bytes, and since import ``hits`` (outputs that reused a block) and
        ``misses`` (outputs that needed a new one).
    """
    if _k is None:
        return {"blocks": 0, "bytes": 0, "limit": 0, "hits": 0, "misses": 0}
    blocks, nbytes, limit, hits, misses = _p.cache_info()
    return {"blocks": int(blocks), "bytes": int(nbytes), "limit": int(limit),
            "hits": int(hits), "misses": int(misses)}


def _bytes_from_env(name: str, default: int, most: int) -> int:
    """The environment variable `name` as a byte count in [0, most] (larger
    values clamped); `default`, with a warning, when it is not an integer >= 0."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
        if value < 0:
            raise ValueError
    except ValueError:
        warnings.warn(f"normdrop: ignoring {name}={raw!r} (expected bytes, an integer >= 0); "
                      f"using {default}", RuntimeWarning, stacklevel=3)
        return default
    return min(value, most)


def _numpy_advises_hugepages() -> bool:
    """Whether NumPy asks for huge pages for its large arrays (True where
    this NumPy does not say)."""
    try:
        from numpy._core import multiarray
    except ImportError:          # NumPy 1.x
        try:
            from numpy.core import multiarray
        except ImportError:
            return True
    get = getattr(multiarray, "_get_madvise_hugepage", None)
    try:
        return bool(get()) if get is not None else True
    except Exception:
        return True


if _k is not None:
    _p.cache_set_hugepage(_numpy_advises_hugepages())
    _p.cache_set_limit(_bytes_from_env("NORMDROP_CACHE_LIMIT", DEFAULT_LIMIT, _SIZE_MAX))
    # outputs of at least this many bytes are written with streaming stores
    # (nd_common.c has the default and the reasons for it)
    _k.set_stream_bytes(_bytes_from_env("NORMDROP_STREAM_BYTES", int(_k.get_stream_bytes()),
                                        2**63 - 1))
