/*
 * nd_pool.c -- a bounded cache of large output buffers.
 *
 * Large outputs (the Python layer routes arrays of at least 1 MiB here) are
 * freed back into this cache instead of to the C library, and a later output
 * of about the same size takes them back.  The C library maps every block over
 * its mmap threshold (32 MiB at most with glibc) afresh, and the operating
 * system zeroes each fresh page on first touch: for a 64 MiB dropout output
 * that costs more time than the kernel itself.  A training loop allocates the
 * same sizes in every step, so reused blocks skip that cost.
 *
 * Bounds: at most ND_POOL_SLOTS cached blocks and at most `limit` cached bytes
 * (blocks in use by arrays are never counted or held); a block is reused only
 * for a request of at least 7/8 of its capacity.  nd_pool_set_limit(0) turns
 * caching off (blocks are then freed at once); nd_pool_trim releases all.
 *
 * Every block is one malloc with a 64-byte aligned data area; the header in
 * front of the data records the malloc'd pointer and the capacity, so free
 * and realloc need no lookup.  A new block of ND_POOL_HUGE bytes or more asks
 * for transparent huge pages (Linux's madvise MADV_HUGEPAGE, before its data
 * is written), as NumPy's own allocator does for its arrays, unless
 * nd_pool_set_hugepage(0): without them a 16 MiB output takes 4096 pages,
 * more than the processor's second-level TLB holds.  As with NumPy, a block
 * that the C library carves from its heap leaves that part of the heap
 * advised after it is freed.  The four functions have
 * the signatures of NumPy's PyDataMemAllocator (NEP 49); a spin lock guards
 * the cache.  Its holders run a few loads and stores, and never without it
 * being released across fork(): nd_pool_init's handlers take it before
 * fork() and release it on both sides, so a child forked while another
 * thread held it (e.g. in nd_pool_trim, which runs without the GIL) does not
 * inherit it held.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE   /* MADV_HUGEPAGE and sysconf under -std=c11, old glibc too */
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "normdrop.h"

#define ND_POOL_SLOTS 16
#define ND_POOL_ALIGN 64
#define ND_POOL_HUGE ((size_t)4 << 20)   /* NumPy's threshold for the same advice */

/* Set and read with the GIL held (at import, and by the allocations of the
 * Python layer's outputs). */
static int nd_pool_huge = 1;

int nd_pool_set_hugepage(int on)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const int old = nd_pool_huge;
    nd_pool_huge = on ? 1 : 0;
    return old;
#else
    (void)on;
    (void)nd_pool_huge;
    return -1;
#endif
}

/* Advise huge pages for the whole pages inside [raw, raw + bytes): a hint;
 * where the kernel has none (or refuses), nothing changes. */
static void nd_advise_huge(void *raw, size_t bytes)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes < ND_POOL_HUGE || !nd_pool_huge) return;
    const long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0) return;
    const uintptr_t lo = ((uintptr_t)raw + (uintptr_t)pg - 1) & ~(uintptr_t)(pg - 1);
    const uintptr_t hi = ((uintptr_t)raw + bytes) & ~(uintptr_t)(pg - 1);
    if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
#else
    (void)raw;
    (void)bytes;
#endif
}

typedef struct {
    void *raw;      /* what malloc returned */
    size_t cap;     /* usable bytes at the data pointer */
} nd_block_hdr;

static struct {
    char *data[ND_POOL_SLOTS];
    uint64_t age[ND_POOL_SLOTS];
    int n;
    size_t bytes, limit;
    uint64_t clock, hits, misses;
} nd_pool = {{0}, {0}, 0, 0, (size_t)512 << 20, 0, 0, 0};

#if defined(_MSC_VER)
#include <intrin.h>
static volatile long nd_pool_lk;
static void nd_lock(void) { while (_InterlockedExchange(&nd_pool_lk, 1)) {} }
static void nd_unlock(void) { _InterlockedExchange(&nd_pool_lk, 0); }
#else
static int nd_pool_lk;
static void nd_lock(void)
{
    /* held for a few loads and stores only; spin politely while another holds it */
    while (__atomic_exchange_n(&nd_pool_lk, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&nd_pool_lk, __ATOMIC_RELAXED)) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
}
static void nd_unlock(void) { __atomic_store_n(&nd_pool_lk, 0, __ATOMIC_RELEASE); }
#endif

#if defined(__unix__) || defined(__APPLE__)
#include <errno.h>
#include <pthread.h>
#include <time.h>
#define ND_POOL_FORK 1
#else
#define ND_POOL_FORK 0
#endif

int nd_pool_init(void)
{
#if ND_POOL_FORK
    static int registered;
    if (!registered) {
        /* prepare: wait for a holder; parent and child: release */
        const int rc = pthread_atfork(nd_lock, nd_unlock, nd_unlock);
        if (rc != 0) return rc;
        registered = 1;
    }
#endif
    return 0;
}

void nd_pool_hold(double seconds)
{
    nd_lock();
#if ND_POOL_FORK
    if (seconds > 0) {
        struct timespec ts;
        ts.tv_sec = (time_t)seconds;
        ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
    }
#else
    (void)seconds;
#endif
    nd_unlock();
}

static nd_block_hdr *nd_hdr(void *p) { return (nd_block_hdr *)((char *)p - sizeof(nd_block_hdr)); }

static void *nd_block_new(size_t size)
{
    const size_t cap = (size + 4095) & ~(size_t)4095;
    if (cap < size || cap > SIZE_MAX - 2 * ND_POOL_ALIGN) return NULL;
    void *raw = malloc(cap + 2 * ND_POOL_ALIGN);
    if (!raw) return NULL;
    nd_advise_huge(raw, cap + 2 * ND_POOL_ALIGN);
    char *data = (char *)(((uintptr_t)raw + ND_POOL_ALIGN + ND_POOL_ALIGN - 1) &
                          ~(uintptr_t)(ND_POOL_ALIGN - 1));
    nd_block_hdr *h = nd_hdr(data);
    h->raw = raw;
    h->cap = cap;
    return data;
}

static void nd_block_free(char *data) { free(nd_hdr(data)->raw); }

/* Remove slot i (caller holds the lock). */
static char *nd_take(int i)
{
    char *p = nd_pool.data[i];
    nd_pool.bytes -= nd_hdr(p)->cap;
    nd_pool.n -= 1;
    nd_pool.data[i] = nd_pool.data[nd_pool.n];
    nd_pool.age[i] = nd_pool.age[nd_pool.n];
    return p;
}

/* Index of the least recently cached block (caller holds the lock, n > 0). */
static int nd_oldest(void)
{
    int o = 0;
    for (int i = 1; i < nd_pool.n; ++i)
        if (nd_pool.age[i] < nd_pool.age[o]) o = i;
    return o;
}

void *nd_pool_malloc(void *ctx, size_t size)
{
    (void)ctx;
    const size_t need = size ? size : 1;
    char *p = NULL;
    nd_lock();
    int best = -1;
    for (int i = 0; i < nd_pool.n; ++i) {
        const size_t cap = nd_hdr(nd_pool.data[i])->cap;
        if (cap >= need && cap - need <= cap / 8 &&
            (best < 0 || cap < nd_hdr(nd_pool.data[best])->cap))
            best = i;
    }
    if (best >= 0) {
        p = nd_take(best);
        nd_pool.hits += 1;
    } else {
        nd_pool.misses += 1;
    }
    nd_unlock();
    return p ? p : nd_block_new(need);
}

void *nd_pool_calloc(void *ctx, size_t nelem, size_t elsize)
{
    if (elsize && nelem > SIZE_MAX / elsize) return NULL;
    void *p = nd_pool_malloc(ctx, nelem * elsize);
    if (p) memset(p, 0, nelem * elsize);
    return p;
}

void nd_pool_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    (void)size;   /* the header knows the capacity */
    if (!ptr) return;
    char *p = (char *)ptr;
    const size_t cap = nd_hdr(p)->cap;
    char *evicted[ND_POOL_SLOTS + 1];
    int ne = 0;
    nd_lock();
    if (cap <= nd_pool.limit) {
        while (nd_pool.n > 0 && (nd_pool.n == ND_POOL_SLOTS || nd_pool.bytes + cap > nd_pool.limit))
            evicted[ne++] = nd_take(nd_oldest());
        nd_pool.data[nd_pool.n] = p;
        nd_pool.age[nd_pool.n] = ++nd_pool.clock;
        nd_pool.n += 1;
        nd_pool.bytes += cap;
        p = NULL;
    }
    nd_unlock();
    for (int i = 0; i < ne; ++i) nd_block_free(evicted[i]);
    if (p) nd_block_free(p);
}

void *nd_pool_realloc(void *ctx, void *ptr, size_t new_size)
{
    if (!ptr) return nd_pool_malloc(ctx, new_size);
    const size_t cap = nd_hdr(ptr)->cap;
    if (new_size <= cap) return ptr;
    void *q = nd_pool_malloc(ctx, new_size);
    if (!q) return NULL;
    memcpy(q, ptr, cap);
    nd_pool_free(ctx, ptr, cap);
    return q;
}

/* Release cached blocks, oldest first, until at most `keep` bytes stay; with
 * set_limit, also make `limit` the new limit.  Returns the previous limit. */
static size_t nd_release(size_t keep, int set_limit, size_t limit)
{
    char *evicted[ND_POOL_SLOTS];
    int ne = 0;
    nd_lock();
    const size_t old = nd_pool.limit;
    if (set_limit) nd_pool.limit = limit;
    while (nd_pool.n > 0 && nd_pool.bytes > keep) evicted[ne++] = nd_take(nd_oldest());
    nd_unlock();
    for (int i = 0; i < ne; ++i) nd_block_free(evicted[i]);
    return old;
}

size_t nd_pool_set_limit(size_t limit) { return nd_release(limit, 1, limit); }

void nd_pool_trim(void) { (void)nd_release(0, 0, 0); }

void nd_pool_info(uint64_t info[5])
{
    nd_lock();
    info[0] = (uint64_t)nd_pool.n;
    info[1] = (uint64_t)nd_pool.bytes;
    info[2] = (uint64_t)nd_pool.limit;
    info[3] = nd_pool.hits;
    info[4] = nd_pool.misses;
    nd_unlock();
}
