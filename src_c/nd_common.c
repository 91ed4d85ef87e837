/* nd_common.c -- the kernels' one tunable: where streaming stores begin. */
#include "normdrop.h"
#include "nd_common.h"

/* Default 32 MiB: below it, on the machines measured, an output written
 * through the caches is as fast or faster (it is often read again soon). */
int64_t nd_stream_bytes = (int64_t)32 << 20;

void nd_set_stream_bytes(int64_t bytes) { nd_stream_bytes = bytes < 0 ? 0 : bytes; }

int64_t nd_get_stream_bytes(void) { return nd_stream_bytes; }
