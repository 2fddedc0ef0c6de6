/* Preloaded into node by tests/window/test_v8_native.py: maps PROT_NONE over the
   hex span in FILL_SPAN ("lo-hi") before node's main runs, standing in for padding
   after .bss. MAP_FIXED_NOREPLACE (Linux 4.17+) fails rather than replace a mapping;
   the process aborts when the span is not free, so a test never runs on a wrong layout. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/mman.h>

__attribute__((constructor)) static void fill(void)
{
    const char *span = getenv("FILL_SPAN");
    if (span == NULL)
        return;
    char *rest;
    unsigned long lo = strtoul(span, &rest, 16);
    unsigned long hi = strtoul(rest + 1, NULL, 16);
    void *got = mmap((void *)lo, hi - lo, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (got != (void *)lo)
        abort();
}
