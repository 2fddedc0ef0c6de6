/* layoutkit workload: the real LuaJIT, N threads, each compiling big traces.
 *
 * Linked static with a LuaJIT static library (Debian's libluajit-5.1.a, or LuaJIT 2.1
 * built from source) and with
 *     -Wl,--wrap=mmap -Wl,--wrap=mmap64 -Wl,--wrap=munmap
 * so that every mmap/munmap call LuaJIT makes (its mcode allocator, src/lj_mcode.c
 * mcode_alloc_at and mcode_free, and its own allocator, src/lj_alloc.c) goes through the
 * counters below (GNU ld manual, "--wrap=symbol"). LuaJIT is built with
 * -D_FILE_OFFSET_BITS=64 (src/Makefile), for which glibc's <sys/mman.h> redirects mmap to
 * mmap64: both names are wrapped. glibc's internal mappings (thread stacks, malloc
 * arenas) do not call these symbols and are not counted.
 *
 * Each thread owns one lua_State and runs workload.lua (embedded by the build), which
 * compiles big traces (about one mcode area each) until the state holds its whole
 * allotment (maxmcode / sizemcode areas) or has seen more than `retries` allocation
 * aborts, counting trace events with jit.attach. When every thread is done, the main
 * thread reads /proc/self/maps (all states still alive, so every area still mapped)
 * and prints one JSON object.
 *
 * Arguments (decimal):
 *   --threads N --statements M --retries K --attempts A --sizemcode KIB --maxmcode KIB
 *   --heap MIB       grow the brk heap by MIB MiB (sbrk) before the threads start
 *   --aslr on|off    off: re-execute under personality(ADDR_NO_RANDOMIZE), what
 *                    `setarch -R` does (util-linux setarch.c, -R)
 *   --mmap-bench K   only time K mmap/munmap pairs of one 64 KiB area at a hint that is
 *                    taken (the program's own code), as a failed probe does
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <unistd.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"
#include "luajit.h"

#include "lk_io.h"

#define THREADS_MAX 4096
#define MAPS_MAX (4u << 20)

/* Written by the build (embed.c): the driver script and the LuaJIT build's own
 * jit/vmdef.lua (its trace error table), so the program needs no files at run time. */
extern const char workload_lua[];
extern const char vmdef_lua[];
/* LuaJIT's anchor for mcode placement (src/lj_mcode.c: mcode_alloc uses
 * lj_vm_exit_handler); .globl + .hidden in lj_vm.o, so visible inside this link. */
extern char lj_vm_exit_handler[];

void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *__real_mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int __real_munmap(void *addr, size_t len);

struct counters {
    uint64_t mmap_calls, munmap_calls, mmap_ns, munmap_ns;
    uint64_t area_mmaps;  /* requests of exactly one mcode area */
    uint64_t area_hinted;  /* ... with a hint */
    int64_t held;  /* areas mapped and not unmapped */
};

static size_t area_bytes = 64u * 1024u;
static _Thread_local struct counters tl;

static void *counted_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off,
                          int large) {
    uint64_t t0 = now_ns();
    void *p = large ? __real_mmap64(addr, len, prot, flags, fd, off)
                    : __real_mmap(addr, len, prot, flags, fd, off);
    tl.mmap_ns += now_ns() - t0;
    tl.mmap_calls++;
    if (len == area_bytes && fd == -1) {
        tl.area_mmaps++;
        tl.area_hinted += addr != NULL;
        tl.held += p != MAP_FAILED;
    }
    return p;
}

void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return counted_mmap(addr, len, prot, flags, fd, off, 0);
}

void *__wrap_mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return counted_mmap(addr, len, prot, flags, fd, off, 1);
}

int __wrap_munmap(void *addr, size_t len) {
    uint64_t t0 = now_ns();
    int r = __real_munmap(addr, len);
    tl.munmap_ns += now_ns() - t0;
    tl.munmap_calls++;
    if (len == area_bytes && r == 0) tl.held--;
    return r;
}

struct options {
    long threads, statements, retries, attempts, sizemcode, maxmcode, heap, bench;
    int aslr_off;
};

struct state {
    pthread_t thread;
    long index;
    const struct options *opt;
    lua_State *L;
    struct counters counts;
    long traces, alloc_aborts, limit_aborts, other_aborts, flushes, compiles;
    char error[256];
    char other_reasons[256];  /* the other aborts' messages, counted */
};

/* Every thread waits at finish_line before it returns: no stack is freed while another
 * state still compiles. Threads that ended early freed their 8 MiB stacks (glibc keeps
 * 40 MiB of them cached, nptl-stack.c), and LuaJIT 2025's mmap(NULL) fallback then went
 * to those holes, far from the other states' ranges (the guest's maps: 64 threads,
 * areas above the cached stacks); a program's worker threads live on. */
static pthread_barrier_t start_line, finish_line;

static int l_areas(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)tl.held);
    return 1;
}

static long field(lua_State *L, const char *name) {
    lua_getfield(L, -1, name);
    long v = (long)lua_tointeger(L, -1);
    lua_pop(L, 1);
    return v;
}

static void *run_state(void *arg) {
    struct state *s = arg;
    const struct options *o = s->opt;
    lua_State *L = luaL_newstate();
    s->L = L;
    pthread_barrier_wait(&start_line);
    if (L == NULL) {
        snprintf(s->error, sizeof s->error, "luaL_newstate failed");
        goto done;
    }
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    if (luaL_loadbuffer(L, vmdef_lua, strlen(vmdef_lua), "=jit/vmdef.lua") != 0) {
        snprintf(s->error, sizeof s->error, "%s", lua_tostring(L, -1));
        goto done;
    }
    lua_setfield(L, -2, "jit.vmdef");
    lua_pop(L, 2);
    lua_register(L, "workload_areas", l_areas);
    if (luaL_loadbuffer(L, workload_lua, strlen(workload_lua), "=workload.lua") != 0) {
        snprintf(s->error, sizeof s->error, "%s", lua_tostring(L, -1));
        goto done;
    }
    long args[] = {o->statements, o->retries, o->attempts, o->sizemcode, o->maxmcode};
    for (size_t i = 0; i < sizeof args / sizeof args[0]; i++) lua_pushinteger(L, args[i]);
    if (lua_pcall(L, (int)(sizeof args / sizeof args[0]), 1, 0) != 0) {
        snprintf(s->error, sizeof s->error, "%s", lua_tostring(L, -1));
    } else {
        s->traces = field(L, "traces");
        s->alloc_aborts = field(L, "alloc_aborts");
        s->limit_aborts = field(L, "limit_aborts");
        s->other_aborts = field(L, "other_aborts");
        s->flushes = field(L, "flushes");
        s->compiles = field(L, "compiles");
        lua_getfield(L, -1, "other_reasons");
        snprintf(s->other_reasons, sizeof s->other_reasons, "%s",
                 lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
        lua_pop(L, 1);
    }
    lua_settop(L, 0);
    s->counts = tl;  /* the state stays open: its areas stay mapped for the maps read */
done:
    pthread_barrier_wait(&finish_line);
    return NULL;
}

/* Every anonymous r-x mapping of /proc/self/maps, as JSON pairs; their total bytes. */
static uint64_t jit_mappings(const char *maps, int print) {
    uint64_t total = 0;
    int first = 1;
    for (const char *line = maps; *line;) {
        const char *end = strchr(line, '\n');
        unsigned long long lo, hi, offset, inode;
        char perms[8], dev[16];
        int used = 0;
        if (sscanf(line, "%llx-%llx %7s %llx %15s %llu%n", &lo, &hi, perms, &offset, dev,
                   &inode, &used) == 6) {
            while (line[used] == ' ') used++;  /* the kernel pads before the name */
        }
        if (used && strcmp(perms, "r-xp") == 0 && inode == 0 &&
            (line[used] == '\n' || line[used] == '\0')) {
            total += hi - lo;
            if (print) printf("%s[\"%#llx\", \"%#llx\"]", first ? "" : ", ", lo, hi);
            first = 0;
        }
        if (end == NULL) break;
        line = end + 1;
    }
    return total;
}

static void json_string(const char *text) {
    putchar('"');
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        if (*c == '"' || *c == '\\') printf("\\%c", *c);
        else if (*c == '\n') fputs("\\n", stdout);
        else if (*c < 0x20) printf("\\u%04x", *c);
        else putchar(*c);
    }
    putchar('"');
}

static int mmap_bench(long pairs) {
    void *taken = (void *)((uintptr_t)lj_vm_exit_handler & ~(uintptr_t)0xffff);
    uint64_t t0 = now_ns(), moved = 0;
    for (long i = 0; i < pairs; i++) {
        void *p = __wrap_mmap(taken, area_bytes, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "workload: mmap: %s\n", strerror(errno));
            return 1;
        }
        moved += p != taken;
        __wrap_munmap(p, area_bytes);
    }
    printf("{\"mmap_bench\": {\"pairs\": %ld, \"moved\": %llu, \"wall_ns\": %llu, "
           "\"mmap_ns\": %llu, \"munmap_ns\": %llu}}\n", pairs, (unsigned long long)moved,
           (unsigned long long)(now_ns() - t0), (unsigned long long)tl.mmap_ns,
           (unsigned long long)tl.munmap_ns);
    return 0;
}

static int parse(int argc, char **argv, struct options *o) {
    *o = (struct options){.threads = 1, .statements = 1200, .retries = 3, .attempts = 0,
                          .sizemcode = 64, .maxmcode = 512};
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        long n = v ? strtol(v, &end, 10) : 0;
        int number = v && *v && end && *end == 0 && n >= 0;
        long *slot = !strcmp(k, "--threads") ? &o->threads
                   : !strcmp(k, "--statements") ? &o->statements
                   : !strcmp(k, "--retries") ? &o->retries
                   : !strcmp(k, "--attempts") ? &o->attempts
                   : !strcmp(k, "--sizemcode") ? &o->sizemcode
                   : !strcmp(k, "--maxmcode") ? &o->maxmcode
                   : !strcmp(k, "--heap") ? &o->heap
                   : !strcmp(k, "--mmap-bench") ? &o->bench : NULL;
        if (!strcmp(k, "--aslr") && v && (!strcmp(v, "on") || !strcmp(v, "off"))) {
            o->aslr_off = !strcmp(v, "off");
        } else if (slot == NULL || !number) {
            fprintf(stderr, "workload: bad argument %s %s\n", k, v ? v : "(missing)");
            return 2;
        } else {
            *slot = n;
        }
        i++;
    }
    if (o->threads < 1 || o->threads > THREADS_MAX || o->sizemcode < 4) {
        fprintf(stderr, "workload: --threads must be 1..%d, --sizemcode at least 4\n",
                THREADS_MAX);
        return 2;
    }
    if (o->attempts == 0) o->attempts = 4 * (o->retries + 1) * (o->maxmcode / o->sizemcode);
    return 0;
}

int main(int argc, char **argv) {
    struct options o;
    int bad = parse(argc, argv, &o);
    if (bad) return bad;
    /* On the heap, not in .bss: the image stays as small as a program's own would be
     * (both are larger than glibc's mmap threshold, so they land in the mmap area). */
    char *maps = malloc(MAPS_MAX);
    struct state *states = calloc((size_t)o.threads, sizeof *states);
    if (maps == NULL || states == NULL) {
        fprintf(stderr, "workload: out of memory\n");
        return 1;
    }
    int persona = personality(0xffffffff);
    if (o.aslr_off && !(persona & ADDR_NO_RANDOMIZE)) {
        if (personality((unsigned long)persona | ADDR_NO_RANDOMIZE) == -1) {
            fprintf(stderr, "workload: personality: %s\n", strerror(errno));
            return 1;
        }
        execv("/proc/self/exe", argv);
        fprintf(stderr, "workload: re-executing /proc/self/exe: %s\n", strerror(errno));
        return 1;
    }
    area_bytes = (size_t)o.sizemcode << 10;
    if (o.bench) return mmap_bench(o.bench);
    void *brk0 = sbrk(0);
    if (o.heap && sbrk((intptr_t)o.heap << 20) == (void *)-1) {
        fprintf(stderr, "workload: sbrk(%ld MiB): %s\n", o.heap, strerror(errno));
        return 1;
    }
    void *brk1 = sbrk(0);
    uint64_t t0 = now_ns();
    if (pthread_barrier_init(&start_line, NULL, (unsigned)o.threads) ||
        pthread_barrier_init(&finish_line, NULL, (unsigned)o.threads))
        return 1;
    for (long i = 0; i < o.threads; i++) {
        states[i].index = i;
        states[i].opt = &o;
        int e = pthread_create(&states[i].thread, NULL, run_state, &states[i]);
        if (e) {
            fprintf(stderr, "workload: thread %ld: %s\n", i, strerror(e));
            return 1;
        }
    }
    for (long i = 0; i < o.threads; i++) pthread_join(states[i].thread, NULL);
    uint64_t wall = now_ns() - t0;
    slurp("/proc/self/status", maps, MAPS_MAX);
    const char *hwm = strstr(maps, "VmHWM:");
    long peak_kib = hwm ? strtol(hwm + 6, NULL, 10) : -1;  /* peak resident set */
    slurp("/proc/self/maps", maps, MAPS_MAX);
    printf("{\"luajit\": \"%s\", \"threads\": %ld, \"aslr\": \"%s\", \"heap_mib\": %ld, "
           "\"statements\": %ld, \"retries\": %ld, \"attempts\": %ld, \"sizemcode_kib\": %ld, "
           "\"maxmcode_kib\": %ld, \"anchor\": \"%p\", \"brk\": [\"%p\", \"%p\"], "
           "\"wall_ns\": %llu, \"peak_rss_kib\": %ld, \"jit_bytes\": %llu, \"jit_mappings\": [",
           LUAJIT_VERSION, o.threads, (persona & ADDR_NO_RANDOMIZE) ? "off" : "on", o.heap,
           o.statements, o.retries, o.attempts, o.sizemcode, o.maxmcode,
           (void *)lj_vm_exit_handler, brk0, brk1, (unsigned long long)wall, peak_kib,
           (unsigned long long)jit_mappings(maps, 0));
    jit_mappings(maps, 1);
    printf("], \"states\": [");
    for (long i = 0; i < o.threads; i++) {
        const struct state *s = &states[i];
        const struct counters *c = &s->counts;
        printf("%s{\"traces\": %ld, \"compiles\": %ld, \"alloc_aborts\": %ld, "
               "\"limit_aborts\": %ld, \"other_aborts\": %ld, \"flushes\": %ld, "
               "\"areas\": %lld, \"mmap\": %llu, \"munmap\": %llu, \"mmap_ns\": %llu, "
               "\"munmap_ns\": %llu, \"area_mmaps\": %llu, \"area_hinted\": %llu, \"error\": ",
               i ? ", " : "", s->traces, s->compiles, s->alloc_aborts, s->limit_aborts,
               s->other_aborts, s->flushes, (long long)c->held,
               (unsigned long long)c->mmap_calls, (unsigned long long)c->munmap_calls,
               (unsigned long long)c->mmap_ns, (unsigned long long)c->munmap_ns,
               (unsigned long long)c->area_mmaps, (unsigned long long)c->area_hinted);
        json_string(s->error);
        fputs(", \"other_reasons\": ", stdout);
        json_string(s->other_reasons);
        putchar('}');
    }
    printf("], \"maps\": ");
    json_string(maps);
    printf("}\n");
    fflush(stdout);
    for (long i = 0; i < o.threads; i++)
        if (states[i].L) lua_close(states[i].L);
    return 0;
}
