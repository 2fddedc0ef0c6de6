/* Shared by probe.c and preload.c: the slot scan and its outcomes, defined once.
 *
 * Every slot of a window [start, start + n * slot) is asked for with
 *   mmap(addr, len, PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE)
 * and unmapped at once when it was granted. Never MAP_FIXED: that would replace
 * whatever is there. System calls only (no allocation, no stdio): safe in the forked
 * single-threaded copy of preload.c.
 *
 * The outcome letters are the report's "outcomes" string, one per slot. This X-macro is
 * their one definition: layoutkit/native/protocol.py's Outcome enum is checked against it
 * by tests/native/test_protocol.py. Columns: name, letter, key in the report's "counts".
 */
#ifndef LAYOUTKIT_LK_SCAN_H
#define LAYOUTKIT_LK_SCAN_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

/* Linux uapi value: include/uapi/asm-generic/mman-common.h
 * "#define MAP_FIXED_NOREPLACE 0x100000" (the same on every arch, Linux 4.17+). */
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define LK_OUTCOMES(X)                                                                  \
    X(LK_FREE, '.', "free")     /* granted at the address asked for, unmapped at once */ \
    X(LK_EEXIST, 'X', "eexist") /* occupied: the kernel said so */                       \
    X(LK_EPERM, 'P', "eperm")   /* EPERM/EACCES: below vm.mmap_min_addr */               \
    X(LK_ENOMEM, 'M', "enomem") /* RLIMIT_AS, vm.max_map_count, or above user space */   \
    X(LK_MOVED, 'm', "moved")   /* the flag was ignored, the mapping went elsewhere */   \
    X(LK_OTHER, '?', "other")   /* any other errno */

#define LK_OUTCOME_ENUM(name, letter, key) name = letter,
enum lk_outcome { LK_OUTCOMES(LK_OUTCOME_ENUM) };
#undef LK_OUTCOME_ENUM

#define LK_OUTCOME_COUNT(name, letter, key) +1
enum { LK_OUTCOME_KINDS = 0 LK_OUTCOMES(LK_OUTCOME_COUNT) };
#undef LK_OUTCOME_COUNT

#define LK_OUTCOME_LETTER(name, letter, key) letter,
static const char lk_outcome_letters[LK_OUTCOME_KINDS] = {LK_OUTCOMES(LK_OUTCOME_LETTER)};
#undef LK_OUTCOME_LETTER

#define LK_OUTCOME_KEY(name, letter, key) key,
static const char *const lk_outcome_keys[LK_OUTCOME_KINDS] = {LK_OUTCOMES(LK_OUTCOME_KEY)};
#undef LK_OUTCOME_KEY

/* One scan: the window, the slot size, one outcome letter per slot, the requests made. */
struct lk_scan {
    uintptr_t start;
    size_t slot;
    size_t n;
    char *outcomes;  /* n letters */
    unsigned long calls;  /* mmap requests made */
};

/* One request for slots [i, j): the outcome, unmapping what was granted. */
static inline char lk_try_slots(struct lk_scan *s, size_t i, size_t j) {
    uintptr_t addr = s->start + i * s->slot;
    size_t len = (j - i) * s->slot;
    void *p = mmap((void *)addr, len, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    s->calls++;
    if (p == MAP_FAILED) {
        switch (errno) {
        case EEXIST: return LK_EEXIST;
        case EPERM: case EACCES: return LK_EPERM;
        case ENOMEM: return LK_ENOMEM;
        default: return LK_OTHER;
        }
    }
    munmap(p, len);
    /* Another address: the flag was ignored (qemu-user, kernels before 4.17) and the
     * kernel put the mapping elsewhere. It was ours and is gone; the slot counts as
     * occupied. */
    return (uintptr_t)p == addr ? LK_FREE : LK_MOVED;
}

/* Bisection over slots [i, j): a whole run that maps is free slot by slot
 * (MAP_FIXED_NOREPLACE fails iff any page of it is taken); a run that does not is split
 * until single slots, whose outcome is recorded. Same per-slot result as asking slot by
 * slot, with far fewer system calls when the window is mostly free. */
static inline void lk_scan_range(struct lk_scan *s, size_t i, size_t j) {
    char o = lk_try_slots(s, i, j);
    if (o == LK_FREE || j - i == 1) {
        memset(s->outcomes + i, o, j - i);
        return;
    }
    size_t mid = i + (j - i) / 2;
    lk_scan_range(s, i, mid);
    lk_scan_range(s, mid, j);
}

/* The whole window: bisecting, or one request per slot when ``linear``. */
static inline void lk_scan(struct lk_scan *s, int linear) {
    if (linear) {
        for (size_t i = 0; i < s->n; i++) s->outcomes[i] = lk_try_slots(s, i, i + 1);
    } else if (s->n) {
        lk_scan_range(s, 0, s->n);
    }
}

#endif
