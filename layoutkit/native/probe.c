/* layoutkit native probe: where can a JIT map code in *this* process?
 *
 * Plain C11 + pthreads, no third-party code. Built by layoutkit/native/probe.py for the
 * target architecture and run natively, under qemu-user or in a qemu-system guest. Prints
 * one JSON object on stdout (read by layoutkit/native/protocol.py).
 *
 * Modes:
 *   scan    every slot of [start, end) is asked for with
 *           mmap(addr, slot, PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE)
 *           and unmapped at once when it was granted (lk_scan.h). Never MAP_FIXED: that
 *           would replace whatever is there.
 *   replay  N threads, one JIT state each, take turns asking for `areas` areas with a JIT
 *           allocator's own probe sequence (plain mmap hints, as LuaJIT does; see
 *           "replay" below), then unmap everything.
 *
 * Arguments (all addresses and sizes hex or decimal, strtoull base 0):
 *   --mode scan|replay --start A --end A --slot N --area N --profile NAME
 *   --threads N --areas N --seed N --jr N --target A --range N --hint-lo A --hint-hi A
 *   --retries K   replay: requests again after an abort, per state (default 4; layoutkit
 *                 passes the model's)
 *   --linear      scan one slot per request (default: bisect runs, same result)
 *   --rlimit-as N  set the soft RLIMIT_AS to N bytes first (as `ulimit -v` would)
 *   --as-headroom N  lower RLIMIT_AS to VmSize + N first (a process that has used up
 *                 its address-space limit)
 *   --handshake   print {"anchor": ...} and one newline first, then read
 *                 "start end target range hint_lo hint_hi" (one line) from stdin: the
 *                 caller computes the window around the anchor this process reports.
 *
 * Safety: the probe only unmaps what mmap returned to it; everything is unmapped
 * before the report. /proc/self/maps is captured before and after the probing into
 * static buffers (no allocation in between), so the caller can check that nothing
 * leaked.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "lk_io.h"
#include "lk_scan.h"

#define MAPS_MAX (1u << 20)
#define THREADS_MAX 1024
#define AREAS_MAX 4096
#define STACK_SIZE (256u * 1024u)

static char maps_before[MAPS_MAX];
static char maps_start[MAPS_MAX];  /* replay: with the thread stacks, before any area */
static char maps_during[MAPS_MAX];
static char maps_after[MAPS_MAX];
static char out_buf[1u << 16];
static char status_buf[1u << 14];
static unsigned long long vm_size;  /* VmSize before the probing, bytes */

/* The anchor a caller may use: an address inside this program's own code. */
__attribute__((noinline)) int probe_anchor(int x) { return x * 3 + 1; }

static void json_str(const char *s) {
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') printf("\\%c", *p);
        else if (*p == '\n') fputs("\\n", stdout);
        else if (*p < 0x20 || *p == 0x7f) printf("\\u%04x", *p);
        else putchar(*p);
    }
    putchar('"');
}

static void json_rlim(rlim_t v) {
    if (v == RLIM_INFINITY) fputs("null", stdout);
    else printf("%llu", (unsigned long long)v);
}

/* VmSize from /proc/self/status (kB there), in bytes; 0 when unknown. */
static unsigned long long read_vm_size(void) {
    slurp("/proc/self/status", status_buf, sizeof status_buf);
    const char *p = strstr(status_buf, "VmSize:");
    return p ? strtoull(p + 7, NULL, 10) * 1024u : 0;
}

/* ---------------------------------------------------------------- arguments */

struct args {
    const char *mode, *profile;
    uintptr_t start, end, target, range, hint_lo, hint_hi;
    size_t slot, area;
    unsigned threads, areas, jr, retries;
    uint64_t seed;
    int handshake, linear;
    long long as_headroom;  /* >= 0: lower RLIMIT_AS to VmSize + this before probing */
    unsigned long long rlimit_as;  /* non-zero: set the soft RLIMIT_AS first (ulimit -v) */
};

static uint64_t num(const char *s, const char *name) {
    char *end;
    errno = 0;
    uint64_t v = strtoull(s, &end, 0);
    if (errno || *end || end == s) {
        fprintf(stderr, "probe: bad number for %s: %s\n", name, s);
        exit(2);
    }
    return v;
}

static void parse_args(int argc, char **argv, struct args *a) {
    memset(a, 0, sizeof *a);
    a->mode = "scan";
    a->profile = "luajit-2.1";
    a->slot = a->area = 0x10000;
    a->threads = 1;
    a->areas = 8;
    a->seed = 1;
    a->jr = 27;
    a->retries = 4;
    a->as_headroom = -1;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (!strcmp(k, "--handshake")) { a->handshake = 1; continue; }
        if (!strcmp(k, "--linear")) { a->linear = 1; continue; }
        if (i + 1 >= argc) { fprintf(stderr, "probe: %s needs a value\n", k); exit(2); }
        const char *v = argv[++i];
        if (!strcmp(k, "--mode")) a->mode = v;
        else if (!strcmp(k, "--profile")) a->profile = v;
        else if (!strcmp(k, "--start")) a->start = (uintptr_t)num(v, k);
        else if (!strcmp(k, "--end")) a->end = (uintptr_t)num(v, k);
        else if (!strcmp(k, "--target")) a->target = (uintptr_t)num(v, k);
        else if (!strcmp(k, "--range")) a->range = (uintptr_t)num(v, k);
        else if (!strcmp(k, "--hint-lo")) a->hint_lo = (uintptr_t)num(v, k);
        else if (!strcmp(k, "--hint-hi")) a->hint_hi = (uintptr_t)num(v, k);
        else if (!strcmp(k, "--slot")) a->slot = (size_t)num(v, k);
        else if (!strcmp(k, "--area")) a->area = (size_t)num(v, k);
        else if (!strcmp(k, "--threads")) a->threads = (unsigned)num(v, k);
        else if (!strcmp(k, "--areas")) a->areas = (unsigned)num(v, k);
        else if (!strcmp(k, "--seed")) a->seed = num(v, k);
        else if (!strcmp(k, "--jr")) a->jr = (unsigned)num(v, k);
        else if (!strcmp(k, "--retries")) a->retries = (unsigned)num(v, k);
        else if (!strcmp(k, "--as-headroom")) a->as_headroom = (long long)num(v, k);
        else if (!strcmp(k, "--rlimit-as")) a->rlimit_as = num(v, k);
        else { fprintf(stderr, "probe: unknown argument %s\n", k); exit(2); }
    }
}

static int check_args(const struct args *a) {
    long page = sysconf(_SC_PAGESIZE);
    if (!a->slot || a->slot % (size_t)page || !a->area || a->area % (size_t)page)
        return fprintf(stderr, "probe: slot and area must be page multiples\n"), 0;
    if (a->end < a->start || a->start % a->slot || a->end % a->slot)
        return fprintf(stderr, "probe: the window must be slot-aligned [start, end)\n"), 0;
    if (!a->threads || a->threads > THREADS_MAX || a->areas > AREAS_MAX)
        return fprintf(stderr, "probe: 1..%d threads, at most %d areas\n", THREADS_MAX,
                       AREAS_MAX), 0;
    if (a->jr < 17 || a->jr > 40)
        return fprintf(stderr, "probe: --jr must be in 17..40\n"), 0;
    return 1;
}

/* Called right before the "before" snapshot: lower RLIMIT_AS when asked to. */
static void prepare(const struct args *a) {
    if (a->rlimit_as) {
        struct rlimit as;
        getrlimit(RLIMIT_AS, &as);
        as.rlim_cur = (rlim_t)a->rlimit_as;
        if (as.rlim_max != RLIM_INFINITY && as.rlim_cur > as.rlim_max) as.rlim_cur = as.rlim_max;
        if (setrlimit(RLIMIT_AS, &as))
            fprintf(stderr, "probe: setrlimit(RLIMIT_AS): %s\n", strerror(errno));
    }
    vm_size = read_vm_size();
    if (a->as_headroom >= 0 && vm_size) {
        struct rlimit as;
        getrlimit(RLIMIT_AS, &as);
        rlim_t want = (rlim_t)(vm_size + (unsigned long long)a->as_headroom);
        if (as.rlim_max == RLIM_INFINITY || want < as.rlim_max) as.rlim_cur = want;
        if (setrlimit(RLIMIT_AS, &as))
            fprintf(stderr, "probe: setrlimit(RLIMIT_AS): %s\n", strerror(errno));
    }
}

/* ---------------------------------------------------------------- scan */

/* The slot scan itself (lk_scan.h), timed. */
static uint64_t scan(const struct args *a, struct lk_scan *s) {
    uint64_t t0 = now_ns();
    lk_scan(s, a->linear);
    return now_ns() - t0;
}

/* ---------------------------------------------------------------- replay */

/* The algorithm replayed here, per generation, is the one documented in
 * docs/allocator-replay.md: this file and the model (layoutkit/window/replay_engine.py)
 * follow it rule by rule. Each thread is one JIT state. States take turns, round-robin
 * (thread 0 first), one request per turn, as the model does; a failed request is
 * LJ_TRERR_MCODEAL: the state's areas are all freed (trace_abort -> lj_trace_flushall ->
 * lj_mcode_free) and it asks again from nothing, at most --retries times. */

struct area { uintptr_t p; size_t sz; };

struct worker {
    const struct args *a;
    pthread_barrier_t *barrier;
    sem_t turn;       /* posted when it is this state's turn */
    unsigned index;
    int wants;        /* still asking for areas */
    uint64_t prng;
    uint32_t lcg;     /* 2017: J->prngstate, zero like the rest of a new jit_State */
    struct area *areas;
    unsigned done;    /* areas held now */
    unsigned failed_allocs, fallbacks;  /* aborts; 2025: new ranges from mmap(NULL) */
    unsigned long attempts, failed_attempts;  /* mmap calls; those not kept */
    unsigned long placed, syscalls, far_areas;
    uintptr_t mcarea;        /* J->mcarea: the last area placed, 0 after a flush */
    uintptr_t mcmin, mcmax;  /* 2025: J->mcmin, J->mcmax (0: not set / switch range) */
    int far_range;           /* 2025: the current range came from mmap(NULL) */
    int jit_off;             /* 2025: failed holding no area: JIT_F_ON cleared */
    uint64_t ns_total, ns_max;
};

static struct worker workers[THREADS_MAX];

/* splitmix64: not LuaJIT's Tausworthe PRNG, but uniform over the same hint values, and
 * one independent stream per state as lj_prng_seed_secure gives each global_State. */
static uint64_t prng_next(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* lj_mcode.c mcode_validptr: non-NULL and below 1 << 47 (LJ_64), below 0xffff0000
 * otherwise. */
static int validptr(uintptr_t p) {
#if UINTPTR_MAX > 0xffffffffu
    return p != 0 && (uint64_t)p < ((uint64_t)1 << 47);
#else
    return p != 0 && p < 0xffff0000u;
#endif
}

static uintptr_t try_at(struct worker *w, uintptr_t hint, size_t sz) {
    /* lj_mcode.c mcode_alloc_at: a plain hint, MCPROT_GEN = PROT_READ|PROT_WRITE. */
    void *p = mmap((void *)hint, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    w->attempts++;
    w->syscalls++;
    return p == MAP_FAILED ? 0 : (uintptr_t)p;
}

/* A mapping LuaJIT does not keep: mcode_free (munmap) when there is one. */
static void reject(struct worker *w, uintptr_t p, size_t sz) {
    w->failed_attempts++;
    if (p) {
        munmap((void *)p, sz);
        w->syscalls++;
    }
}

/* LuaJIT 2.1 from 2017-03-08 (commits 4e308361, d62459fc) until 68354f44, src/lj_mcode.c
 * mcode_alloc: the area below the last one, then random hints, JR iterations in all. */
static uintptr_t alloc_luajit21(struct worker *w, size_t sz) {
    const struct args *a = w->a;
    uintptr_t target = a->target, range = a->range;
    uintptr_t hint = w->mcarea ? w->mcarea - sz : 0;
    uint64_t mask = ((uint64_t)1 << a->jr) - 0x10000;
    for (unsigned i = 0; i < a->jr; i++) {
        if (validptr(hint)) {
            uintptr_t p = try_at(w, hint, sz);
            if (validptr(p) && (p + sz - target < range || target - p < range)) return p;
            reject(w, p, sz);
        }
        do {
            hint = (uintptr_t)(prng_next(&w->prng) & mask);
        } while (!(hint + sz < range + range));
        hint = target + hint - range;
    }
    return 0;
}

/* LuaJIT before 2017-03-08 (commits 4e308361, d62459fc changed it), src/lj_mcode.c
 * mcode_alloc: 32 iterations; hints (0x78fb ^ LJ_PRNG_BITS(J, 15)) << 16, kept while
 * below range, placed at target - range/2. LJ_PRNG_BITS (src/lj_jit.h before the 2020
 * PRNG rework): prngstate = prngstate * 1103515245 + 12345, its top 15 bits. */
static uintptr_t alloc_luajit2017(struct worker *w, size_t sz) {
    const struct args *a = w->a;
    uintptr_t target = a->target;
    uintptr_t range = ((uintptr_t)1 << (a->jr - 1)) - ((uintptr_t)1 << 21);
    uintptr_t hint = w->mcarea ? w->mcarea - sz : 0;
    for (unsigned i = 0; i < 32; i++) {
        if (validptr(hint)) {
            uintptr_t p = try_at(w, hint, sz);
            if (validptr(p) && (p + sz - target < range || target - p < range)) return p;
            reject(w, p, sz);
        }
        do {
            w->lcg = w->lcg * 1103515245u + 12345u;
            hint = (uintptr_t)(0x78fbu ^ (w->lcg >> 17)) << 16;
        } while (!(hint + sz < range));
        hint = target + hint - (range >> 1);
    }
    return 0;
}

/* 68354f44 mcode_setrange: a range of 2^JR - 64 KiB with addr in the middle, 64 KiB
 * aligned, clamped away from address 0 and from wrapping round. */
static void setrange(struct worker *w, uintptr_t addr) {
    uintptr_t r64 = ((uintptr_t)1 << w->a->jr) - 0x10000u;
    w->mcmin = (addr - (r64 >> 1) + 0xffffu) & ~(uintptr_t)0xffffu;
    w->mcmax = w->mcmin + r64;
    if (addr < w->mcmin || !w->mcmin) w->mcmin = 0x10000u;
    if (addr > w->mcmax) w->mcmax = ~(uintptr_t)0xffffu;
}

/* 68354f44 mcode_inrange, with the wrap-around of addr + sz. */
static int inrange(const struct worker *w, uintptr_t addr, size_t sz) {
    return addr >= w->mcmin && addr + sz >= w->mcmin && addr + sz <= w->mcmax;
}

/* The next random hint, mcmin + (prng & MCODE_RANGE64), drawn until in range: at most 15
 * draws are looked at (a 16th is drawn and dropped); 0 when none of them was. */
static int draw_2025(struct worker *w, size_t sz, uintptr_t *hint) {
    uint64_t r64 = ((uint64_t)1 << w->a->jr) - 0x10000u;
    for (unsigned j = 1;; j++) {
        uintptr_t h = w->mcmin + (uintptr_t)(prng_next(&w->prng) & r64);
        if (j > 15) return 0;
        if (inrange(w, h, sz)) {
            *hint = h;
            return 1;
        }
    }
}

/* LuaJIT since commit 68354f44 (2025-11-06), src/lj_mcode.c mcode_alloc. Iterations
 * i = 0..15: at i = 0 the area below the last one when that is in range, at i = 1..15 a
 * random hint; a mapping is kept when mcode_inrange. A state without areas then moves
 * its range to wherever mmap(NULL) puts the area; one with areas marks the range for a
 * switch (mcmax = 0) and fails, and its next request after the flush takes mmap(NULL). */
static uintptr_t alloc_luajit2025(struct worker *w, size_t sz) {
    if (!w->mcmin) setrange(w, w->a->target);  /* the range around lj_vm_exit_handler */
    int fresh = !w->mcmax;  /* "switch to a new range (already flushed)" */
    if (!fresh) {
        uintptr_t hint = w->mcarea - sz;  /* wraps for no area: never in range */
        int first = inrange(w, hint, sz);
        for (unsigned i = 0; i < 16; i++) {
            if (i > 0 || first) {
                uintptr_t p = try_at(w, hint, sz);
                if (inrange(w, p, sz)) return p;
                reject(w, p, sz);
            }
            if (!draw_2025(w, sz, &hint)) break;
        }
    }
    if (fresh || !w->mcarea) {
        uintptr_t p = try_at(w, 0, sz);
        if (p) {
            setrange(w, p + (sz >> 1));
            w->far_range = 1;
            w->fallbacks++;
            return p;
        }
        if (!w->mcarea) w->jit_off = 1;  /* lj_trace.c trace_abort: JIT_F_ON cleared */
    } else {
        w->mcmax = 0;
    }
    return 0;
}

/* First fit: ask for each slot of the window in turn (plain hints), lowest first. */
static uintptr_t alloc_first_fit(struct worker *w, size_t sz) {
    const struct args *a = w->a;
    for (uintptr_t hint = a->start; hint + sz <= a->end; hint += a->slot) {
        uintptr_t p = try_at(w, hint, sz);
        if (p == hint) return p;
        reject(w, p, sz);
    }
    return 0;
}

/* The next state after ``from`` (round-robin) that still wants an area; its turn. */
static void pass_turn(unsigned from, unsigned threads) {
    for (unsigned d = 1; d <= threads; d++) {
        struct worker *next = &workers[(from + d) % threads];
        if (next->wants) {
            sem_post(&next->turn);
            return;
        }
    }
}

/* LJ_TRERR_MCODEAL: lj_trace_flushall frees every area of the state (lj_mcode_free). */
static void flush(struct worker *w) {
    w->failed_allocs++;
    for (unsigned k = 0; k < w->done; k++) {
        munmap((void *)w->areas[k].p, w->areas[k].sz);
        w->syscalls++;
    }
    w->done = 0;
    w->mcarea = 0;
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    const struct args *a = w->a;
    pthread_barrier_wait(w->barrier);
    while (w->wants) {
        sem_wait(&w->turn);
        uint64_t t0 = now_ns();
        uintptr_t p;
        if (!strcmp(a->profile, "luajit-2025")) p = alloc_luajit2025(w, a->area);
        else if (!strcmp(a->profile, "generic")) p = alloc_first_fit(w, a->area);
        else if (!strcmp(a->profile, "luajit-2017")) p = alloc_luajit2017(w, a->area);
        else p = alloc_luajit21(w, a->area);
        uint64_t dt = now_ns() - t0;
        w->ns_total += dt;
        if (dt > w->ns_max) w->ns_max = dt;
        if (p) {
            w->areas[w->done].p = p;
            w->areas[w->done].sz = a->area;
            w->done++;
            w->placed++;
            w->far_areas += (unsigned long)w->far_range;
            w->mcarea = p;
            w->wants = w->done < a->areas;
        } else {
            flush(w);
            w->wants = w->failed_allocs <= a->retries && !w->jit_off;
        }
        pass_turn(w->index, a->threads);
    }
    return NULL;
}

/* ---------------------------------------------------------------- output */

static void print_head(const struct args *a) {
    struct rlimit as;
    char min_addr[64];
    slurp("/proc/sys/vm/mmap_min_addr", min_addr, sizeof min_addr);
    getrlimit(RLIMIT_AS, &as);
    printf("{\"probe\":1,\"mode\":\"%s\",\"profile\":", a->mode);
    json_str(a->profile);
    printf(",\"anchor\":\"%#llx\",\"page_size\":%ld", (unsigned long long)(uintptr_t)&probe_anchor,
           sysconf(_SC_PAGESIZE));
    printf(",\"pointer_bits\":%d", (int)(sizeof(void *) * 8));
    printf(",\"window\":[\"%#llx\",\"%#llx\"],\"slot\":%zu,\"area\":%zu",
           (unsigned long long)a->start, (unsigned long long)a->end, a->slot, a->area);
    fputs(",\"rlimit_as\":{\"soft\":", stdout);
    json_rlim(as.rlim_cur);
    fputs(",\"hard\":", stdout);
    json_rlim(as.rlim_max);
    printf("},\"vm_size\":%llu,\"mmap_min_addr\":", vm_size);
    if (min_addr[0]) printf("%llu", strtoull(min_addr, NULL, 10));
    else fputs("null", stdout);
}

static void print_maps(void) {
    fputs(",\"maps_before\":", stdout);
    json_str(maps_before);
    fputs(",\"maps_after\":", stdout);
    json_str(maps_after);
}

static int run_scan(const struct args *a) {
    struct lk_scan s = {.start = a->start, .slot = a->slot,
                        .n = (a->end - a->start) / a->slot};
    unsigned long counts[LK_OUTCOME_KINDS] = {0};
    s.outcomes = malloc(s.n + 1);
    if (!s.outcomes) return fprintf(stderr, "probe: out of memory\n"), 3;
    memset(s.outcomes, 0, s.n + 1);
    prepare(a);
    slurp("/proc/self/maps", maps_before, sizeof maps_before);
    uint64_t ns = scan(a, &s);
    slurp("/proc/self/maps", maps_after, sizeof maps_after);
    print_head(a);
    for (size_t i = 0; i < s.n; i++)
        for (int k = 0; k < LK_OUTCOME_KINDS; k++)
            if (s.outcomes[i] == lk_outcome_letters[k]) counts[k]++;
    printf(",\"slots\":%zu,\"counts\":{", s.n);
    for (int k = 0; k < LK_OUTCOME_KINDS; k++)
        printf("%s\"%s\":%lu", k ? "," : "", lk_outcome_keys[k], counts[k]);
    printf("},\"strategy\":\"%s\",\"mmap_calls\":%lu", a->linear ? "linear" : "bisect",
           s.calls);
    printf(",\"probe_ns\":%llu,\"ns_per_slot\":%.1f", (unsigned long long)ns,
           s.n ? (double)ns / (double)s.n : 0.0);
    fputs(",\"free_runs\":[", stdout);
    int first = 1;
    for (size_t i = 0; i < s.n;) {
        if (s.outcomes[i] != LK_FREE) { i++; continue; }
        size_t j = i;
        while (j < s.n && s.outcomes[j] == LK_FREE) j++;
        printf("%s[\"%#llx\",\"%#llx\"]", first ? "" : ",",
               (unsigned long long)(a->start + i * a->slot),
               (unsigned long long)(a->start + j * a->slot));
        first = 0;
        i = j;
    }
    fputs("],\"outcomes\":", stdout);
    json_str(s.outcomes);
    print_maps();
    puts("}");
    free(s.outcomes);
    return 0;
}

/* The threads' stacks, STACK_SIZE each, in one mapping that starts on a 64 KiB boundary:
 * it is the lowest mapping of the top-down area, where mmap(NULL) puts the next area, and
 * the model counts that area in 64 KiB slots (docs/allocator-replay.md, "What the model
 * simplifies"). Mapped one slot larger, the ends trimmed off. NULL when it cannot be. */
static char *map_stacks(unsigned n) {
    size_t len = (size_t)n * STACK_SIZE, slot = 0x10000;
    char *p = mmap(NULL, len + slot, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (p == MAP_FAILED) return NULL;
    uintptr_t start = ((uintptr_t)p + slot - 1) & ~(uintptr_t)(slot - 1);
    uintptr_t end = start + len, top = (uintptr_t)p + len + slot;
    if (start > (uintptr_t)p) munmap(p, start - (uintptr_t)p);
    if (top > end) munmap((void *)end, top - end);
    return (char *)start;
}

static int run_replay(const struct args *a) {
    static pthread_t tids[THREADS_MAX];
    static void *stacks[THREADS_MAX];
    pthread_barrier_t barrier;
    size_t per = a->areas ? a->areas : 1;
    struct area *all = calloc((size_t)a->threads * per, sizeof *all);
    if (!all) return fprintf(stderr, "probe: out of memory\n"), 3;
    pthread_barrier_init(&barrier, NULL, a->threads);
    prepare(a);
    slurp("/proc/self/maps", maps_before, sizeof maps_before);
    /* Thread stacks are our own mappings, so they are unmapped (glibc would cache them). */
    unsigned started = 0;
    char *block = map_stacks(a->threads);
    for (unsigned t = 0; block && t < a->threads; t++) {
        stacks[t] = block + (size_t)t * STACK_SIZE;
        workers[t] = (struct worker){.a = a, .barrier = &barrier, .index = t,
                                     .wants = a->areas > 0,
                                     .prng = a->seed * 0x100000001b3u + t,
                                     .areas = all + (size_t)t * per};
        sem_init(&workers[t].turn, 0, 0);
        started++;
    }
    int spawn_error = 0;
    slurp("/proc/self/maps", maps_start, sizeof maps_start);
    if (started == a->threads) {
        for (unsigned t = 0; t < a->threads; t++) {
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setstack(&attr, stacks[t], STACK_SIZE);
            int rc = pthread_create(&tids[t], &attr, worker_main, &workers[t]);
            pthread_attr_destroy(&attr);
            if (rc) { spawn_error = rc; fprintf(stderr, "probe: pthread_create: %s\n",
                                                strerror(rc)); exit(3); }
        }
    } else {
        spawn_error = ENOMEM;
    }
    uint64_t t0 = now_ns();
    if (!spawn_error && a->areas) sem_post(&workers[0].turn);  /* state 0 asks first */
    if (!spawn_error)
        for (unsigned t = 0; t < a->threads; t++) pthread_join(tids[t], NULL);
    uint64_t wall = now_ns() - t0;
    slurp("/proc/self/maps", maps_during, sizeof maps_during);
    for (unsigned t = 0; t < started; t++) {
        for (unsigned k = 0; k < workers[t].done; k++)
            munmap((void *)workers[t].areas[k].p, workers[t].areas[k].sz);
        munmap(stacks[t], STACK_SIZE);
        sem_destroy(&workers[t].turn);
    }
    slurp("/proc/self/maps", maps_after, sizeof maps_after);
    pthread_barrier_destroy(&barrier);

    print_head(a);
    unsigned long attempts = 0, failed_attempts = 0, failed = 0, fallbacks = 0;
    unsigned long placed = 0, syscalls = 0, far_areas = 0;
    uint64_t ns_total = 0, ns_max = 0;
    for (unsigned t = 0; t < started; t++) {
        placed += workers[t].placed;
        syscalls += workers[t].syscalls;
        far_areas += workers[t].far_areas;
        attempts += workers[t].attempts;
        failed_attempts += workers[t].failed_attempts;
        failed += workers[t].failed_allocs;
        fallbacks += workers[t].fallbacks;
        ns_total += workers[t].ns_total;
        if (workers[t].ns_max > ns_max) ns_max = workers[t].ns_max;
    }
    unsigned long allocs = placed + failed;  /* requests made */
    printf(",\"threads_started\":%u", spawn_error ? 0u : started);
    printf(",\"threads\":%u,\"areas_per_thread\":%u,\"jr\":%u,\"seed\":%llu", a->threads,
           a->areas, a->jr, (unsigned long long)a->seed);
    printf(",\"target\":\"%#llx\",\"range\":%llu,\"hint_lo\":\"%#llx\",\"hint_hi\":\"%#llx\"",
           (unsigned long long)a->target, (unsigned long long)a->range,
           (unsigned long long)a->hint_lo, (unsigned long long)a->hint_hi);
    printf(",\"allocations\":%lu,\"failed_allocations\":%lu,\"fallbacks\":%lu", allocs, failed,
           fallbacks);
    printf(",\"attempts\":%lu,\"failed_attempts\":%lu", attempts, failed_attempts);
    printf(",\"retries\":%u,\"placed\":%lu,\"syscalls\":%lu,\"far_areas\":%lu", a->retries,
           placed, syscalls, far_areas);
    printf(",\"ns_per_allocation\":%.1f,\"ns_max\":%llu,\"wall_ns\":%llu",
           allocs ? (double)ns_total / (double)allocs : 0.0, (unsigned long long)ns_max,
           (unsigned long long)wall);
    fputs(",\"per_thread\":[", stdout);
    for (unsigned t = 0; t < started; t++) {
        const struct worker *w = &workers[t];
        printf("%s{\"attempts\":%lu,\"failed_attempts\":%lu,\"failed_allocations\":%u,"
               "\"ns\":%llu,\"areas\":[", t ? "," : "", w->attempts, w->failed_attempts,
               w->failed_allocs, (unsigned long long)w->ns_total);
        for (unsigned k = 0; k < w->done; k++)
            printf("%s\"%#llx\"", k ? "," : "", (unsigned long long)w->areas[k].p);
        fputs("]}", stdout);
    }
    fputs("],\"maps_start\":", stdout);
    json_str(maps_start);
    fputs(",\"maps_during\":", stdout);
    json_str(maps_during);
    print_maps();
    puts("}");
    free(all);
    return 0;  /* a thread that could not start is reported (threads_started), not fatal */
}

/* One line "start end target range hint_lo hint_hi" from stdin, read with read(2).
 * Printed first: the address of the probe's own code and one of its main stack. */
static int handshake(struct args *a) {
    char line[512];
    size_t used = 0;
    printf("{\"anchor\":\"%#llx\",\"stack\":\"%#llx\",\"page_size\":%ld}\n",
           (unsigned long long)(uintptr_t)&probe_anchor,
           (unsigned long long)(uintptr_t)&used, sysconf(_SC_PAGESIZE));
    fflush(stdout);
    while (used < sizeof line - 1) {
        ssize_t n = read(0, line + used, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0 || line[used] == '\n') break;
        used++;
    }
    line[used] = 0;
    unsigned long long v[6];
    char *cur = line;
    for (int i = 0; i < 6; i++) {
        char *end;
        errno = 0;
        v[i] = strtoull(cur, &end, 0);  /* unsigned: a hint below 0 wraps, as in C */
        if (errno || end == cur) {
            fprintf(stderr, "probe: bad handshake line: %s\n", line);
            return 0;
        }
        cur = end;
    }
    a->start = (uintptr_t)v[0];
    a->end = (uintptr_t)v[1];
    a->target = (uintptr_t)v[2];
    a->range = (uintptr_t)v[3];
    a->hint_lo = (uintptr_t)v[4];
    a->hint_hi = (uintptr_t)v[5];
    return 1;
}

int main(int argc, char **argv) {
    struct args a;
    /* A static stdout buffer: printing never allocates (or maps) anything. */
    setvbuf(stdout, out_buf, _IOFBF, sizeof out_buf);
    parse_args(argc, argv, &a);
    if (a.handshake && !handshake(&a)) return 2;
    if (!check_args(&a)) return 2;
    (void)probe_anchor(0);
    if (!strcmp(a.mode, "scan")) return run_scan(&a);
    if (!strcmp(a.mode, "replay")) return run_replay(&a);
    fprintf(stderr, "probe: unknown mode %s\n", a.mode);
    return 2;
}
