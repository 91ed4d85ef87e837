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

/* ------------------------------------------------------ OpenMP after fork
 * GNU libgomp keeps a pool of threads per thread that has started a parallel
 * region, and fork() copies the pool but not its threads: in the child, the
 * next parallel region started by the forking thread waits for them forever
 * (GCC bug 52303; LLVM's libomp re-initializes itself in an atfork handler,
 * libgomp has none).  A region with a false if clause starts no team and
 * never touches the pool's threads, so a child handler that makes every
 * ND_OMP_FOR serial is enough; results do not depend on the thread count.
 * The flag that says whether the forking thread had started a region is
 * per thread: a child forked from a thread that never did (its pool, if
 * any, is created afresh in the child) keeps all its threads.  Without
 * pthread_atfork (Windows, which has no fork) or without OpenMP, nothing to
 * do. */
#if defined(_OPENMP) && (defined(__unix__) || defined(__APPLE__))
#define ND_FORK_GUARD 1
#include <pthread.h>
#if defined(__GNUC__)
#define ND_THREAD_LOCAL __thread
#else
#define ND_THREAD_LOCAL _Thread_local
#endif
static ND_THREAD_LOCAL int nd_omp_started;  /* this thread has started a parallel region */
static int nd_omp_forked;                   /* forked from such a thread: kernels serial */

static void nd_atfork_child(void)
{
    if (nd_omp_started) nd_omp_forked = 1;
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
        const int rc = pthread_atfork(NULL, NULL, nd_atfork_child);
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
