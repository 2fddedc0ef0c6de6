/*
 * The allocator replay, compiled: the same rules as layoutkit/window/replay_engine.py
 * (the numpy engine, its reference twin), one run at a time, one scalar step per request.
 *
 * Why a loop in C: the numpy engine vectorises over runs only, since the states of one run
 * take turns on one address space; 500 states asking 30 to 160 times each make tens of
 * thousands of Python-level steps per replay, each a few dozen numpy calls. Here a step
 * costs what LuaJIT's own mcode_alloc costs: a few draws and lookups.
 *
 * Built when the package is installed (setup.py), never at run time. No numpy C API:
 * arrays arrive through the buffer protocol.
 *
 * Column model, rounds, and every rule of a step: see replay_engine.py, whose docstrings
 * cite LuaJIT's src/lj_mcode.c and src/lj_trace.c and the kernel's mm/mmap.c; each
 * function below names the numpy method it mirrors. Differences are of representation
 * only:
 * - random numbers: a stream per (seed, run, state) (_replay_rng.h), drawn only when a
 *   hint is needed, where numpy draws PCG64 blocks: same laws, other samples. The two
 *   agree in distribution, and exactly with the zero-seeded LCG (no randomness left);
 * - the top-down search of mmap(NULL) reads a two-level bitmap of free columns instead of
 *   per-block free counts.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_replay_rng.h"

/* --- one run's address space -------------------------------------------------------- */

enum { GEN_CLASSIC = 0, GEN_2025 = 1 };
enum { HEAP_BEFORE = 0, HEAP_DURING = 1 };

typedef struct {
    /* rules (Setup in replay_model.py) */
    int gen, heap_timing;
    int64_t states, areas, k, retries, iterations, draw_lo, draw_n, accept_lo, accept_hi;
    int64_t jr, n_w, n_m, m_top, fallback_top; /* fallback_top < 0: none */
    /* above m_top: m_arenas taken columns, then this run's m_hole free ones, then taken;
     * mmap(NULL) searches M up to m_span (replay.py arena_hole) */
    int64_t m_arenas, m_hole, m_span;
    const int64_t *lcg; int64_t lcg_n;          /* lcg_n == 0: per-state streams */
    uint64_t seed;
    /* one run */
    int64_t sink, cols;       /* cols: columns with state, taken from sink on */
    uint8_t *taken;           /* [cols + k]: 1 from sink on */
    uint64_t *free0, *free1;  /* free bit per column in [0, sink), and per free0 word */
    int64_t nwords0, nwords1;
    int32_t *held;            /* [states * areas] */
    int64_t *count, *mcarea, *aborts, *drawn, *rng_lo, *rng_nin, *reg_lo, *reg_hi;
    uint8_t *want, *is_far, *sw;
    double *miss15;           /* chance that 15 draws all fall out of the state's range */
    double miss15_far;        /* the same for a range set by mcode_setrange */
    rng_t *gens;
    int64_t heap_lo, heap_hi, heap_end; int heap_stuck;
    int64_t syscalls, placed, far;
} run_t;

static inline int is_taken(const run_t *r, int64_t c) { return r->taken[c]; }

static void set_taken(run_t *r, int64_t c, int value)
{
    if (c < 0 || c >= r->sink || r->taken[c] == value)
        return;
    r->taken[c] = (uint8_t)value;
    uint64_t bit = 1ULL << (c & 63);
    int64_t w = c >> 6;
    if (value) {
        r->free0[w] &= ~bit;
        if (!r->free0[w])
            r->free1[w >> 6] &= ~(1ULL << (w & 63));
    } else {
        r->free0[w] |= bit;
        r->free1[w >> 6] |= 1ULL << (w & 63);
    }
}

/* Mask of bits 0..b (inclusive). */
static inline uint64_t upto(int64_t b) { return b >= 63 ? ~0ULL : (2ULL << b) - 1; }

/* Highest free column in [lo, hi), or -1. */
static int64_t highest_free(const run_t *r, int64_t lo, int64_t hi)
{
    hi = hi > r->sink ? r->sink : hi;
    if (hi <= lo)
        return -1;
    int64_t c = hi - 1, w = c >> 6;
    uint64_t bits = r->free0[w] & upto(c & 63);
    while (!bits) {
        if (w == 0)
            return -1;
        int64_t v = w - 1, v1 = v >> 6;
        uint64_t sum = r->free1[v1] & upto(v & 63);
        while (!sum) {
            if (v1 == 0)
                return -1;
            sum = r->free1[--v1];
        }
        w = v1 * 64 + 63 - __builtin_clzll(sum);
        if (w * 64 + 63 < lo)
            return -1;
        bits = r->free0[w];
    }
    c = w * 64 + 63 - __builtin_clzll(bits);
    return c >= lo ? c : -1;
}

/* free_k: whether the k slots from c are free (c == sink: no). */
static inline int free_k(const run_t *r, int64_t c)
{
    if (c < 0 || c >= r->sink)
        return 0;
    for (int64_t j = 0; j < r->k; j++)
        if (is_taken(r, c + j))
            return 0;
    return 1;
}

/* topdown: mmap(NULL), the highest free k slots in the spans, searched in order. */
static int64_t topdown(const run_t *r)
{
    int64_t bounds[2][2], nb = 0;
    if (r->fallback_top >= 0) {
        bounds[nb][0] = 0; bounds[nb][1] = r->fallback_top; nb++;
    }
    if (r->n_m) {
        bounds[nb][0] = r->n_w; bounds[nb][1] = r->n_w + r->m_span; nb++;
    }
    for (int64_t i = 0; i < nb; i++) {
        int64_t base = bounds[i][0], top = bounds[i][1];
        if (r->k == 1) {
            int64_t c = highest_free(r, base, top);
            if (c >= 0)
                return c;
            continue;
        }
        for (int64_t c = highest_free(r, base, top - r->k + 1); c >= 0;
             c = highest_free(r, base, c)) {
            if (free_k(r, c))
                return c;
        }
    }
    return r->sink;
}

static void mark(run_t *r, int64_t c, int value)
{
    if (c < 0 || c >= r->sink)
        return;
    for (int64_t j = 0; j < r->k; j++)
        set_taken(r, c + j, value);
}

/* grow_heap: brk towards `fraction` of the reserve, stopping at the first mapping. */
static void grow_heap(run_t *r, double fraction)
{
    if (r->heap_stuck)
        return;
    /* In double: heap_hi - heap_lo overflows int64 for bounds the caller did not clip
     * (replay.py clips them to [0, n_w], where this is exact). */
    double want = (double)r->heap_lo + ceil(((double)r->heap_hi - (double)r->heap_lo) * fraction);
    int64_t goal = want >= (double)r->n_w ? r->n_w : want <= 0.0 ? 0 : (int64_t)want;
    for (int64_t c = r->heap_end < 0 ? 0 : r->heap_end; c < goal; c++) {
        if (c > r->heap_lo && is_taken(r, c)) {
            r->heap_stuck = 1;
            return;
        }
        set_taken(r, c, 1);
        r->heap_end++;
    }
}

/* place: the state keeps the area at column c. */
static void place(run_t *r, int64_t st, int64_t c)
{
    mark(r, c, 1);
    r->far += r->is_far[st];
    r->held[st * r->areas + r->count[st]] = (int32_t)c;
    r->count[st]++;
    r->mcarea[st] = c;
    r->placed++;
    r->want[st] = r->count[st] < r->areas;
}

/* abort: LJ_TRERR_MCODEAL, trace_abort -> lj_trace_flushall -> lj_mcode_free. */
static void abort_state(run_t *r, int64_t st)
{
    r->aborts[st]++;
    for (int64_t i = 0; i < r->count[st]; i++)
        mark(r, r->held[st * r->areas + i], 0);
    r->syscalls += r->count[st]; /* one munmap per area */
    r->count[st] = 0;
    r->mcarea[st] = -1;
    r->want[st] = r->aborts[st] <= r->retries;
}

/* step_21: one mcode_alloc of LuaJIT 2.1 before 68354f44 (and 2017). */
static void step_classic(run_t *r, int64_t st)
{
    int64_t mc = r->mcarea[st];
    int has = mc >= 0;
    int64_t c0 = mc - r->k;
    if (!(has && c0 >= r->accept_lo))
        c0 = r->sink;
    int ok0 = has && free_k(r, c0);
    int64_t calls = has ? (ok0 ? 1 : 2) : 0;
    int64_t tries = r->iterations - 1;
    int good = ok0, free_first = 0;
    int64_t chosen = c0;
    if (!ok0) {
        int64_t t = 0;
        for (; t < tries; t++) {
            int64_t col;
            if (r->lcg_n) {
                int64_t idx = r->drawn[st] + t;
                col = r->draw_lo + r->lcg[idx < r->lcg_n ? idx : r->lcg_n - 1];
            } else {
                col = r->draw_lo + rng_below(&r->gens[st], (uint64_t)r->draw_n);
            }
            if (!(col >= r->accept_lo && col + r->k <= r->accept_hi))
                col = r->sink;
            if (free_k(r, col)) {
                good = 1;
                chosen = col;
                if (t == 0)
                    free_first = 1;
                break;
            }
        }
        calls += good ? 2 * t + 1 : 2 * tries;
        if (r->lcg_n)
            r->drawn[st] += good ? t + 1 : r->iterations;
        if (r->fallback_top >= 0 && (has || !free_first)) {
            /* The first try that fails lands where mmap(NULL) would; kept when in range. */
            int64_t p = topdown(r);
            if (p >= r->accept_lo && p + r->k <= r->accept_hi) {
                calls = 1;
                good = 1;
                chosen = p;
            }
        }
    }
    r->syscalls += calls;
    if (good)
        place(r, st, chosen);
    else
        abort_state(r, st);
}

/* step_2025: one mcode_alloc since commit 68354f44. */
static void step_2025(run_t *r, int64_t st)
{
    int64_t k = r->k, mc = r->mcarea[st];
    int sw = r->sw[st];
    int64_t lo = r->rng_lo[st], nin = r->rng_nin[st];
    int64_t rlo = r->reg_lo[st], rhi = r->reg_hi[st];
    int64_t c0 = mc - k;
    int first_in = mc >= 0 && !sw && c0 >= lo && c0 < lo + nin;
    if (!(first_in && c0 >= rlo && c0 + k <= rhi))
        c0 = r->sink;
    int ok0 = first_in && free_k(r, c0);
    int64_t calls = first_in ? (ok0 ? 1 : 2) : 0;
    int64_t space = (int64_t)1 << (r->jr - 16);
    int good = ok0;
    int64_t chosen = c0;
    if (!ok0 && !sw) {
        rng_t *g = &r->gens[st];
        double miss15 = r->miss15[st];
        int64_t made = 0;
        int first_free = 0;
        for (int64_t t = 0; t < 15; t++) {
            /* 15 draws out of range: give up at once. Below 2^-53 (a range set by
             * mcode_setrange: 2^-165) a 53-bit uniform is under it only when it is 0:
             * not drawn, the law changes by less than 2^-53 per try. */
            if (miss15 >= 0x1p-53 && rng_unit(g) < miss15)
                break;
            made++;
            int64_t col = lo + rng_below(g, (uint64_t)nin);
            if (!(col >= rlo && col + k <= rhi))
                col = r->sink;
            if (free_k(r, col)) {
                good = 1;
                chosen = col;
                first_free = t == 0;
                calls += 2 * t + 1;
                break;
            }
        }
        if (!good)
            calls += 2 * made;
        if (first_in || (made > 0 && !first_free)) {
            int64_t p = topdown(r);
            if (p >= lo && p < lo + nin && p >= rlo && p + k <= rhi) {
                calls = 1;
                good = 1;
                chosen = p;
            }
        }
    }
    int newrange = !good && (sw || mc < 0);
    r->syscalls += calls + newrange;
    if (good) {
        place(r, st, chosen);
    } else if (newrange) {
        int64_t p = topdown(r);
        int64_t half = (int64_t)1 << (r->jr - 17);
        /* mcode_setrange(p + sz/2): mcmin = p + 64K - 2^(JR-1) for a slot-aligned p. */
        r->rng_lo[st] = p - half + 1;
        r->rng_nin[st] = space - k;
        r->miss15[st] = r->miss15_far;
        int in_w = p < r->n_w;
        r->reg_lo[st] = in_w ? 0 : r->n_w;
        r->reg_hi[st] = in_w ? r->n_w : r->sink;
        r->is_far[st] = 1;
        r->sw[st] = 0;
        place(r, st, p);
    } else {
        r->sw[st] = 1;
        abort_state(r, st);
    }
}

static void run_one(run_t *r, int64_t run, const uint8_t *taken0)
{
    int64_t n = r->states;
    double space = (double)((int64_t)1 << (r->jr - 16));
    double miss15 = pow(1.0 - (double)(r->n_w - r->k + 1) / space, 15);
    memset(r->taken, 0, (size_t)(r->cols + r->k));
    memset(r->free0, 0, sizeof(uint64_t) * (size_t)r->nwords0);
    memset(r->free1, 0, sizeof(uint64_t) * (size_t)r->nwords1);
    for (int64_t c = 0; c < r->sink; c++) {
        int64_t m = c - r->n_w, hole = r->m_top + r->m_arenas;
        int t = c < r->n_w ? taken0[c] != 0
                           : m >= r->m_top && !(m >= hole && m < hole + r->m_hole);
        r->taken[c] = 1; /* set_taken only acts on a change */
        if (!t)
            set_taken(r, c, 0);
    }
    for (int64_t c = r->sink; c < r->cols + r->k; c++)
        r->taken[c] = 1;
    for (int64_t st = 0; st < n; st++) {
        r->count[st] = 0; r->mcarea[st] = -1; r->aborts[st] = 0; r->drawn[st] = 0;
        r->rng_lo[st] = 0; r->rng_nin[st] = r->n_w - r->k + 1;
        r->reg_lo[st] = 0; r->reg_hi[st] = r->n_w;
        r->want[st] = 1; r->is_far[st] = 0; r->sw[st] = 0;
        r->miss15[st] = miss15;
        if (!r->lcg_n)
            rng_seed(&r->gens[st], r->seed, (uint64_t)run, (uint64_t)st);
    }
    r->heap_end = r->heap_lo;
    r->heap_stuck = 0;
    r->syscalls = r->placed = r->far = 0;
    for (int64_t rnd = 0;; rnd++) {
        if (r->heap_timing == HEAP_BEFORE && rnd == 0)
            grow_heap(r, 1.0);
        else if (r->heap_timing == HEAP_DURING && rnd < r->areas)
            grow_heap(r, (double)(rnd + 1) / (double)r->areas);
        int any = 0;
        for (int64_t st = 0; st < n; st++) {
            if (!r->want[st])
                continue;
            any = 1;
            if (r->gen == GEN_2025)
                step_2025(r, st);
            else
                step_classic(r, st);
        }
        if (!any)
            break;
    }
}

/* --- Python entry point -------------------------------------------------------------- */

static int check_buf(const Py_buffer *b, Py_ssize_t items, Py_ssize_t itemsize,
                     const char *name)
{
    if (b->len != items * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, expected %zd", name, b->len,
                     items * itemsize);
        return 0;
    }
    return 1;
}

static PyObject *replay_run(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *names[] = {
        "taken", "heap_lo", "heap_hi", "lcg", "aborts", "syscalls", "placed", "far", "held",
        "generation", "heap_timing", "runs", "states", "areas", "k", "retries", "seed",
        "iterations", "draw_lo", "draw_n", "accept_lo", "accept_hi", "jr", "n_w", "m_cols",
        "m_top", "fallback_top", "m_arenas", "m_hole", NULL};
    Py_buffer b[10];
    int gen, heap_timing;
    long long runs, states, areas, k, retries, iterations, draw_lo, draw_n;
    unsigned long long seed;
    long long accept_lo, accept_hi, jr, n_w, m_cols, m_top, fallback_top, m_arenas;
    memset(b, 0, sizeof b);
    if (!PyArg_ParseTupleAndKeywords(
            args, kw, "y*y*y*y*w*w*w*w*w*iiLLLLLKLLLLLLLLLLLy*", names, &b[0], &b[1], &b[2],
            &b[3], &b[4], &b[5], &b[6], &b[7], &b[8], &gen, &heap_timing, &runs, &states,
            &areas, &k, &retries, &seed, &iterations, &draw_lo, &draw_n, &accept_lo,
            &accept_hi, &jr, &n_w, &m_cols, &m_top, &fallback_top, &m_arenas, &b[9]))
        return NULL;
    PyObject *result = NULL;
    run_t r;
    memset(&r, 0, sizeof r);
    if (runs < 1 || states < 1 || areas < 1 || k < 1 || n_w < 1 || iterations < 1
        || draw_n < 1 || m_cols < 0 || m_top < 0 || (gen == GEN_2025 && m_top > m_cols)
        || m_arenas < 0 || (b[9].len && b[9].len != runs * 8)
        || jr < 17 || jr > 40
        || (gen != GEN_CLASSIC && gen != GEN_2025) || n_w + m_cols > INT32_MAX - 2) {
        PyErr_SetString(PyExc_ValueError, "replay parameters out of range");
        goto done;
    }
    if (!check_buf(&b[0], runs * n_w, 1, "taken") || !check_buf(&b[1], runs, 8, "heap_lo")
        || !check_buf(&b[2], runs, 8, "heap_hi") || b[3].len % 8
        || !check_buf(&b[4], runs * states, 8, "aborts")
        || !check_buf(&b[5], runs, 8, "syscalls") || !check_buf(&b[6], runs, 8, "placed")
        || !check_buf(&b[7], runs, 8, "far") || !check_buf(&b[8], runs, 8, "held")) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "lcg: not a whole number of int64");
        goto done;
    }
    r.gen = gen; r.heap_timing = heap_timing;
    r.states = states; r.areas = areas; r.k = k; r.retries = retries;
    r.iterations = iterations; r.draw_lo = draw_lo; r.draw_n = draw_n;
    r.accept_lo = accept_lo; r.accept_hi = accept_hi; r.jr = jr; r.n_w = n_w;
    r.n_m = gen == GEN_2025 ? m_cols : 0; r.m_top = r.n_m ? m_top : 0;
    const int64_t *holes = b[9].len ? (const int64_t *)b[9].buf : NULL;
    r.m_arenas = holes ? m_arenas : 0;
    r.m_span = r.m_top;
    for (int64_t i = 0; holes && i < runs; i++) {
        if (holes[i] < 0 || r.m_top + r.m_arenas + holes[i] > r.n_m) {
            PyErr_SetString(PyExc_ValueError, "m_hole: a hole outside M");
            goto done;
        }
        if (r.m_top + r.m_arenas + holes[i] > r.m_span)
            r.m_span = r.m_top + r.m_arenas + holes[i];
    }
    r.fallback_top = fallback_top;
    r.lcg = (const int64_t *)b[3].buf; r.lcg_n = b[3].len / 8;
    r.seed = (uint64_t)seed;
    r.miss15_far = pow((double)k / (double)(1LL << (jr - 16)), 15); /* 1 - (space - k)/space */
    r.sink = n_w + r.n_m;
    r.cols = r.sink + 1;
    r.nwords0 = (r.sink + 63) / 64 + 1;
    r.nwords1 = (r.nwords0 + 63) / 64 + 1;
    size_t n = (size_t)states;
    r.taken = malloc((size_t)(r.cols + k));
    r.free0 = malloc(sizeof(uint64_t) * (size_t)r.nwords0);
    r.free1 = malloc(sizeof(uint64_t) * (size_t)r.nwords1);
    r.held = malloc(sizeof(int32_t) * n * (size_t)areas);
    int64_t **arrays[] = {&r.count, &r.mcarea, &r.aborts, &r.drawn, &r.rng_lo, &r.rng_nin,
                          &r.reg_lo, &r.reg_hi};
    int ok = r.taken && r.free0 && r.free1 && r.held;
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        ok = (*arrays[i] = malloc(sizeof(int64_t) * n)) != NULL && ok;
    r.want = malloc(n); r.is_far = malloc(n); r.sw = malloc(n);
    r.gens = malloc(sizeof(rng_t) * n);
    r.miss15 = malloc(sizeof(double) * n);
    if (!ok || !r.want || !r.is_far || !r.sw || !r.gens || !r.miss15) {
        PyErr_NoMemory();
        goto freeall;
    }
    const uint8_t *taken0 = b[0].buf;
    const int64_t *hlo = b[1].buf, *hhi = b[2].buf;
    int64_t *aborts = b[4].buf, *syscalls = b[5].buf, *placed = b[6].buf;
    int64_t *far = b[7].buf, *held = b[8].buf;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t run = 0; run < runs; run++) {
        r.heap_lo = hlo[run];
        r.heap_hi = hhi[run];
        r.m_hole = holes ? holes[run] : 0;
        run_one(&r, run, taken0 + run * n_w);
        int64_t total = 0;
        for (int64_t st = 0; st < states; st++) {
            aborts[run * states + st] = r.aborts[st];
            total += r.count[st];
        }
        syscalls[run] = r.syscalls;
        placed[run] = r.placed;
        far[run] = r.far;
        held[run] = total;
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
freeall:
    free(r.taken); free(r.free0); free(r.free1); free(r.held);
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        free(*arrays[i]);
    free(r.want); free(r.is_far); free(r.sw); free(r.gens); free(r.miss15);
done:
    for (int i = 0; i < 10; i++)
        if (b[i].obj)
            PyBuffer_Release(&b[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"run", (PyCFunction)(void (*)(void))replay_run, METH_VARARGS | METH_KEYWORDS,
     "Replay every run; fills aborts, syscalls, placed, far and held in place."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_replay",
    "The allocator replay's engine in C (see layoutkit/window/replay_compiled.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__replay(void) { return PyModule_Create(&module); }
