/* Shared by probe.c, preload.c and init.c: the two system helpers each of them needs.
 * Both use system calls only (no allocation, no stdio), so they are safe in the forked
 * single-threaded copy of preload.c and in the guest's /init. */
#ifndef LAYOUTKIT_LK_IO_H
#define LAYOUTKIT_LK_IO_H

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Read a whole (/proc) file with read(2) into ``buf`` (NUL-terminated, at most cap - 1
 * bytes); 0 when it cannot be opened. */
static inline size_t slurp(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t used = 0;
    if (fd < 0) { buf[0] = 0; return 0; }
    while (used < cap - 1) {
        ssize_t n = read(fd, buf + used, cap - 1 - used);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        used += (size_t)n;
    }
    close(fd);
    buf[used] = 0;
    return used;
}

#endif
