/* nd_common.c -- the kernels' one tunable (where streaming stores begin) and
 * the OpenMP state they share (parallel regions after fork). */
#include "normdrop.h"
#include "nd_common.h"

/* Default 48 MiB.  Streaming wins for an op timed alone from 16 MiB up, but
 * an output that the next op reads at once is read from the caches when it
 * was written through them: on the 2-core machine measured, a forward whose
 * output feeds the backward was 35% slower streamed at 32 MiB and 16% faster
 * streamed at 64 MiB (README, Memory). */
int64_t nd_stream_bytes = (int64_t)48 << 20;

void nd_set_stream_bytes(int64_t bytes) { nd_stream_bytes = bytes < 0 ? 0 : bytes; }

int64_t nd_get_stream_bytes(void) { return nd_stream_bytes; }

/* For the tests: the channels-last passes' per-thread scratch refused (0
 * never, 1 on every thread, 2 on the odd-numbered threads of a team), so
 * that the per-group fallbacks of a failed allocation run. */
int nd_scratch_refusal = 0;

void nd_set_scratch_refusal(int mode) { nd_scratch_refusal = mode; }

/* ------------------------------------------------------ OpenMP after fork
 * GNU libgomp keeps a pool of threads per thread that has started a parallel
 * region -- one of normdrop's, or another library's that shares the runtime
 * (PyTorch's wheel ships a libgomp.so.1, which the loader then gives
 * normdrop's kernels too) -- and fork() copies the pool but not its
 * threads: in the child, the next parallel region started by the forking
 * thread waits for them forever (GCC bug 52303; LLVM's libomp
 * re-initializes itself in an atfork handler, libgomp has none).
 *
 * With libgomp (GCC builds), the prepare handler therefore releases the
 * forking thread's pool before fork() (omp_pause_resource_all of OpenMP 5.0:
 * libgomp joins the pool's threads; the next parallel region makes a new
 * pool), and the child, which has none, keeps all its threads.  Where that
 * cannot be done -- fork() from inside a parallel region, where the call
 * refuses; a runtime without the call; another runtime -- a child forked
 * from a thread that had started one of normdrop's regions runs every
 * ND_OMP_FOR serially (a region with a false if clause starts no team and
 * never touches the pool); results do not depend on the thread count.  The
 * flags are per thread (the handlers run in the forking thread, and the
 * child is a copy of it).  Without pthread_atfork (Windows, which has no
 * fork) or without OpenMP, nothing to do. */
#if defined(_OPENMP) && (defined(__unix__) || defined(__APPLE__))
#define ND_FORK_GUARD 1
#include <pthread.h>
#if defined(__GNUC__)
#define ND_THREAD_LOCAL __thread
#else
#define ND_THREAD_LOCAL _Thread_local
#endif
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 9
/* GCC 9's omp.h declares it; weak: a libgomp older than the headers (one
 * loaded by another library) may lack it, and then it is NULL */
#define ND_GOMP_PAUSE 1
#pragma weak omp_pause_resource_all
#else
#define ND_GOMP_PAUSE 0
#endif
static ND_THREAD_LOCAL int nd_omp_started;   /* this thread has started a parallel region */
static ND_THREAD_LOCAL int nd_pool_released; /* the prepare handler released its pool */
static int nd_omp_forked;                    /* forked and not released: kernels serial */

static void nd_atfork_prepare(void)
{
    nd_pool_released = 0;
#if ND_GOMP_PAUSE
    if (omp_pause_resource_all != NULL && omp_pause_resource_all(omp_pause_soft) == 0)
        nd_pool_released = 1;
#endif
}

static void nd_atfork_child(void)
{
    if (nd_omp_started && !nd_pool_released) nd_omp_forked = 1;
}
#else
#define ND_FORK_GUARD 0
#endif

#if defined(_OPENMP)
int nd_omp_parallel(int cond)
{
#if ND_FORK_GUARD
    if (!cond || nd_omp_forked) return 0;
    if (!nd_omp_started) nd_omp_started = 1;
#endif
    return cond;
}
#endif

int nd_init(void)
{
#if ND_FORK_GUARD
    static int registered;
    if (!registered) {
        const int rc = pthread_atfork(nd_atfork_prepare, NULL, nd_atfork_child);
        if (rc != 0) return rc;
        registered = 1;
    }
#endif
    return 0;
}

int nd_forked_serial(void)
{
#if ND_FORK_GUARD
    return nd_omp_forked;
#else
    return 0;
#endif
}
