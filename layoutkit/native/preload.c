/* layoutkit preload probe: where can a JIT map code inside a *running* program?
 *
 * An LD_PRELOAD library, built by layoutkit/native/preload.py. Its constructor reads:
 *   LAYOUTKIT_PROBE_OUT     report path (required; without it the library does nothing)
 *   LAYOUTKIT_PROBE_WHEN    start | ms:N | signal:NAME (USR1, USR2, or a number)
 *   LAYOUTKIT_PROBE_RADIUS  bytes scanned below and above the holder's code
 *   LAYOUTKIT_PROBE_SLOT    slot size (a page multiple)
 *   LAYOUTKIT_PROBE_OBJECT  the holder: the mapped object whose basename contains this
 *                           (default: the main program, /proc/self/exe)
 * At the moment it forks (raw clone, no atfork handlers, exit signal 0 so that the
 * program's own wait() never sees it); that child forks the probing grandchild and exits
 * at once, and the program's side reaps it and returns. Only one process claims the
 * probe (an O_EXCL "<out>.claim" file), so programs that CMD starts do nothing.
 *
 * The grandchild is a single-threaded copy of the address space. It uses system calls
 * only (it may run in a signal handler's context): it maps its buffers (3 MiB: in the
 * copy only, so the program never carries them; moved below the scanned range when
 * they land inside it, as next to a static-PIE image in the mmap area), reads
 * /proc/self/maps, scans
 * [lowest code - radius, highest code + radius) of the holder slot by slot with the slot
 * scan of lk_scan.h that probe.c uses (MAP_FIXED_NOREPLACE, bisecting free runs,
 * unmapping at once what it is given, never MAP_FIXED), reads the maps again, copies the
 * bytes of the anonymous executable mappings (JIT code: its own copy, for exit-handler
 * recovery) and writes one JSON object (the report format of layoutkit/native/protocol.py)
 * to "<out>.tmp" with its own file descriptor, renames it to <out> and _exit(0)s. It never writes into the program's memory.
 *
 * What the program sees: with ms:N a one-shot POSIX timer and a handler for SIGRTMIN+2;
 * with signal:NAME a handler for that signal (SA_RESTART); both are restored after
 * firing. A blocking call that the kernel never restarts (nanosleep, epoll_wait) may
 * return EINTR once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lk_io.h"
#include "lk_scan.h"

#ifndef __WALL
#define __WALL 0x40000000
#endif

#define MAPS_MAX (1u << 20)
#define SLOTS_MAX (1u << 20)
#define JIT_MAX ((size_t)64 << 20)

#ifdef LK_TWIN  /* the twin's image holds only what the target's holds: small buffers */
#define PATH_CAP 512u
#define WBUF_CAP (1u << 12)
#else
#define PATH_CAP 4096u
#define WBUF_CAP (1u << 16)
#endif
static char out_path[PATH_CAP], tmp_path[PATH_CAP + 16], claim_path[PATH_CAP + 16];
static char object[256];
static char exe_path[PATH_CAP];
static uintptr_t radius = (uintptr_t)1 << 30, slot = 0x10000;
#ifndef LK_TWIN
static int trigger_sig;
static struct sigaction old_action;
static timer_t timer;
static int have_timer;
#endif
static volatile sig_atomic_t fired;

/* The copy's buffers. In the library, static (the program carries them from the start,
 * so the copy's maps are the program's). Built into a static-PIE layout twin (-DLK_TWIN,
 * twin.py), whose image holds only what the target's holds: one private mapping made in
 * the copy, moved out of the scanned range once that is known (place_buffers); and the
 * twin fires at its start only (no timer, no signal handler: less of libc to link). */
#define BUFS_SIZE (2 * (size_t)MAPS_MAX + SLOTS_MAX)
#ifdef LK_TWIN
static char *bufs;
#else
static char bufs[BUFS_SIZE];
#endif
static char *maps_before, *maps_after, *outcomes;
static char wbuf[WBUF_CAP];
static size_t wused;
static int wfd = -1;

/* ------------------------------------------------------------ output, syscalls only */

static void flush(void) {
    size_t done = 0;
    while (done < wused) {
        ssize_t n = write(wfd, wbuf + done, wused - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        done += (size_t)n;
    }
    wused = 0;
}

static void put(const char *s, size_t n) {
    while (n) {
        size_t room = sizeof wbuf - wused, k = n < room ? n : room;
        memcpy(wbuf + wused, s, k);
        wused += k;
        s += k;
        n -= k;
        if (wused == sizeof wbuf) flush();
    }
}

static void puts_(const char *s) { put(s, strlen(s)); }

static void put_dec(unsigned long long v) {
    char b[24];
    int i = sizeof b;
    do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    put(b + i, sizeof b - (size_t)i);
}

static void put_hex(unsigned long long v) {
    char b[20];
    int i = sizeof b;
    do { b[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v);
    b[--i] = 'x';
    b[--i] = '0';
    put(b + i, sizeof b - (size_t)i);
}

static void put_addr(const char *key, unsigned long long v) {
    puts_(",\"");
    puts_(key);
    puts_("\":\"");
    put_hex(v);
    puts_("\"");
}

static void put_str(const char *s) {
    put("\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') { char e[2] = {'\\', (char)*p}; put(e, 2); }
        else if (*p == '\n') put("\\n", 2);
        else if (*p < 0x20 || *p == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', "0123456789abcdef"[*p >> 4],
                         "0123456789abcdef"[*p & 15]};
            put(e, 6);
        } else put((const char *)p, 1);
    }
    put("\"", 1);
}

static uintptr_t parse_hex(const char **p) {
    uintptr_t v = 0;
    for (;; (*p)++) {
        char c = **p;
        if (c >= '0' && c <= '9') v = v * 16 + (uintptr_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v = v * 16 + (uintptr_t)(c - 'a' + 10);
        else return v;
    }
}

/* One maps line: start, end, perms, and a pointer to the path ("" when anonymous). */
struct line { uintptr_t start, end; char perms[5]; const char *path; size_t path_len; };

static const char *next_line(const char *p, struct line *l) {
    if (!*p) return NULL;
    l->start = parse_hex(&p);
    if (*p == '-') p++;
    l->end = parse_hex(&p);
    while (*p == ' ') p++;
    for (int i = 0; i < 4; i++) l->perms[i] = *p ? *p++ : '-';
    l->perms[4] = 0;
    for (int field = 0; field < 3 && *p && *p != '\n'; field++) {  /* offset dev inode */
        while (*p == ' ') p++;
        while (*p && *p != ' ' && *p != '\n') p++;
    }
    while (*p == ' ') p++;
    l->path = p;
    while (*p && *p != '\n') p++;
    l->path_len = (size_t)(p - l->path);
    return *p ? p + 1 : p;
}

static int is_holder(const struct line *l) {
    if (!l->path_len || l->path[0] != '/') return 0;
    if (object[0]) {
        const char *base = l->path;
        for (size_t i = 0; i < l->path_len; i++)
            if (l->path[i] == '/') base = l->path + i + 1;
        size_t blen = l->path_len - (size_t)(base - l->path), olen = strlen(object);
        for (size_t i = 0; i + olen <= blen; i++)
            if (!memcmp(base + i, object, olen)) return 1;
        return 0;
    }
    return strlen(exe_path) == l->path_len && !memcmp(exe_path, l->path, l->path_len);
}

static void put_jit_code(void) {
    size_t budget = JIT_MAX;
    int first = 1;
    struct line l;
    puts_(",\"jit_code\":[");
    for (const char *p = maps_before; (p = next_line(p, &l)) != NULL;) {
        if (l.path_len || l.perms[0] != 'r' || l.perms[2] != 'x' || l.end <= l.start) continue;
        size_t n = l.end - l.start;
        if (n > budget) n = budget;
        if (!n) break;
        budget -= n;
        puts_(first ? "{\"start\":\"" : ",{\"start\":\"");
        first = 0;
        put_hex(l.start);
        puts_("\",\"hex\":\"");
        const unsigned char *code = (const unsigned char *)l.start;
        for (size_t k = 0; k < n; k++) {
            char h[2] = {"0123456789abcdef"[code[k] >> 4], "0123456789abcdef"[code[k] & 15]};
            put(h, 2);
        }
        puts_("\"}");
    }
    puts_("]");
}

/* Map the buffers at ``hint`` (a plain hint: never MAP_FIXED); 0 when mmap fails. */
static int map_buffers(uintptr_t hint) {
#ifdef LK_TWIN
    void *p = mmap((void *)hint, BUFS_SIZE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 0;
    bufs = p;
#else
    (void)hint;
#endif
    maps_before = bufs;
    maps_after = bufs + MAPS_MAX;
    outcomes = bufs + 2 * (size_t)MAPS_MAX;
    return 1;
}

/* The holder's executable span [*lo, *hi) in maps_before (lo >= hi: none). */
static void holder_code(uintptr_t *lo, uintptr_t *hi) {
    struct line l;
    *lo = UINTPTR_MAX;
    *hi = 0;
    for (const char *p = maps_before; (p = next_line(p, &l)) != NULL;)
        if (l.perms[2] == 'x' && is_holder(&l)) {
            if (l.start < *lo) *lo = l.start;
            if (l.end > *hi) *hi = l.end;
        }
}

/* Buffers that landed inside [from, to) (the range about to be scanned: a static-PIE
 * image sits in the mmap area, where they go) are mapped again just below it (or above
 * it), the first ones unmapped, and the maps read again. */
static void place_buffers(uintptr_t from, uintptr_t to, uintptr_t *lo, uintptr_t *hi) {
#ifdef LK_TWIN
    uintptr_t at = (uintptr_t)bufs, size = BUFS_SIZE, align = 0x10000;
    if (at + size <= from || at >= to) return;
    char *old = bufs;
    uintptr_t hint = from > size + align ? (from - size) & ~(align - 1)
                                         : (to + align - 1) & ~(align - 1);
    if (!map_buffers(hint)) return;
    munmap(old, size);  /* the copy's own first mapping, never the program's */
    slurp("/proc/self/maps", maps_before, MAPS_MAX);
    holder_code(lo, hi);
#else
    (void)from; (void)to; (void)lo; (void)hi;  /* static: part of the program's image */
#endif
}

static void probe_child(void) {
    uintptr_t lo, hi;
    if (!map_buffers(0)) _exit(3);
    slurp("/proc/self/maps", maps_before, MAPS_MAX);
    holder_code(&lo, &hi);
    wfd = open(tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (wfd < 0) _exit(3);
    puts_("{\"pid\":");
    put_dec((unsigned long long)getpid());
    puts_(",\"parent\":");
    put_dec((unsigned long long)getppid());
    puts_(",\"page_size\":");
    put_dec((unsigned long long)sysconf(_SC_PAGESIZE));
    puts_(",\"slot\":");
    put_dec(slot);
    if (lo >= hi) {
        puts_(",\"error\":\"no executable mapping of the holder\",\"maps_before\":");
        put_str(maps_before);
    } else {
        lo &= ~(slot - 1);
        hi = (hi + slot - 1) & ~(slot - 1);
        uintptr_t from = lo > radius ? lo - radius : 0;
        uintptr_t end = hi + radius > hi ? hi + radius : UINTPTR_MAX & ~(slot - 1);
        place_buffers(from, end, &lo, &hi);
        lo &= ~(slot - 1);
        hi = (hi + slot - 1) & ~(slot - 1);
        struct lk_scan s = {.start = lo > radius ? lo - radius : 0, .slot = slot,
                            .outcomes = outcomes};
        s.n = (end - s.start) / slot;
        if (s.n > SLOTS_MAX) s.n = SLOTS_MAX;
        uint64_t t0 = now_ns();
        lk_scan(&s, 0);
        uint64_t ns = now_ns() - t0;
        slurp("/proc/self/maps", maps_after, MAPS_MAX);
        put_addr("code_start", lo);
        put_addr("code_end", hi);
        puts_(",\"window\":[\"");
        put_hex(s.start);
        puts_("\",\"");
        put_hex(s.start + s.n * slot);
        puts_("\"],\"strategy\":\"bisect\",\"probe_ns\":");
        put_dec(ns);
        puts_(",\"mmap_calls\":");
        put_dec(s.calls);
        puts_(",\"outcomes\":\"");
        put(outcomes, s.n);
        puts_("\",\"maps_before\":");
        put_str(maps_before);
        puts_(",\"maps_after\":");
        put_str(maps_after);
        put_jit_code();
    }
    puts_("}\n");
    flush();
    close(wfd);
    rename(tmp_path, out_path);
    _exit(0);
}

/* Fork the probing grandchild through a short-lived child with exit signal 0 (only a
 * __WALL/__WCLONE wait sees it), and reap that child. Async-signal-safe. */
static void fire(void) {
    int saved = errno;
    long mid = syscall(SYS_clone, 0L, 0L, 0L, 0L, 0L);
    if (mid == 0) {
        long grand = syscall(SYS_clone, (long)SIGCHLD, 0L, 0L, 0L, 0L);
        if (grand == 0) probe_child();
        _exit(grand < 0 ? 1 : 0);
    }
    if (mid > 0) {
        while (waitpid((pid_t)mid, NULL, __WALL) < 0 && errno == EINTR) {}
    }
    errno = saved;
}

static unsigned long long number(const char *s) {
    char *end;
    unsigned long long v = strtoull(s, &end, 0);
    return (*s && !*end) ? v : 0;
}

static void copy(char *dst, size_t cap, const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la + lb >= cap) { dst[0] = 0; return; }
    memcpy(dst, a, la);
    memcpy(dst + la, b, lb + 1);
}

#ifndef LK_TWIN
static void on_signal(int sig) {
    (void)sig;
    if (fired) return;
    fired = 1;
    sigaction(trigger_sig, &old_action, NULL);
    if (have_timer) timer_delete(timer);
    fire();
}

/* Fire at ``when``: a one-shot timer (ms:N) or a signal (signal:NAME). */
static void arm(const char *when) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (!strncmp(when, "ms:", 3)) {
        unsigned long long ms = number(when + 3);
        struct sigevent ev;
        struct itimerspec its;
        trigger_sig = SIGRTMIN + 2;
        memset(&ev, 0, sizeof ev);
        ev.sigev_notify = SIGEV_SIGNAL;
        ev.sigev_signo = trigger_sig;
        if (sigaction(trigger_sig, &sa, &old_action)) return;
        if (timer_create(CLOCK_MONOTONIC, &ev, &timer)) return;
        have_timer = 1;
        memset(&its, 0, sizeof its);
        its.it_value.tv_sec = (time_t)(ms / 1000);
        its.it_value.tv_nsec = (long)(ms % 1000) * 1000000L;
        if (!ms) its.it_value.tv_nsec = 1;
        timer_settime(timer, 0, &its, NULL);
    } else if (!strncmp(when, "signal:", 7)) {
        const char *name = when + 7;
        if (!strncmp(name, "SIG", 3)) name += 3;
        trigger_sig = !strcmp(name, "USR1") ? SIGUSR1 : !strcmp(name, "USR2") ? SIGUSR2
                      : (int)number(name);
        if (trigger_sig > 0) sigaction(trigger_sig, &sa, &old_action);
    }
}
#endif

__attribute__((constructor)) static void layoutkit_probe_init(void) {
    const char *out = getenv("LAYOUTKIT_PROBE_OUT");
    const char *when = getenv("LAYOUTKIT_PROBE_WHEN");
    const char *v;
    if (!out || !*out || strlen(out) >= sizeof out_path) return;
    copy(out_path, sizeof out_path, out, "");
    copy(tmp_path, sizeof tmp_path, out, ".tmp");
    copy(claim_path, sizeof claim_path, out, ".claim");
    int claim = open(claim_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (claim < 0) return;  /* another process (CMD's parent or sibling) has the probe */
    close(claim);
    if ((v = getenv("LAYOUTKIT_PROBE_RADIUS")) && number(v)) radius = (uintptr_t)number(v);
    if ((v = getenv("LAYOUTKIT_PROBE_SLOT")) && number(v)) slot = (uintptr_t)number(v);
    if ((v = getenv("LAYOUTKIT_PROBE_OBJECT"))) copy(object, sizeof object, v, "");
    ssize_t n = readlink("/proc/self/exe", exe_path, sizeof exe_path - 1);
    exe_path[n > 0 ? n : 0] = 0;
    if (slot & (slot - 1)) slot = 0x10000;
    if (!when || !strcmp(when, "start")) {
        fired = 1;
        fire();
        return;
    }
#ifndef LK_TWIN
    arm(when);
#endif
}
