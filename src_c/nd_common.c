/* nd_common.c -- the kernels' one tunable: where streaming stores begin. */
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
