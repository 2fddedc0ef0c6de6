/*
 * Random numbers of the compiled replay (_replay.c): one xoshiro256** stream per
 * (seed, run, state), seeded by splitmix64 (Blackman and Vigna, https://prng.di.unimi.it/,
 * xoshiro256starstar.c and splitmix64.c), uniform integers by Lemire's multiply-and-reject
 * ("Fast Random Integer Generation in an Interval", ACM TOMACS 29(1), 2019).
 */
#ifndef LK_REPLAY_RNG_H
#define LK_REPLAY_RNG_H

#include <stdint.h>

typedef struct { uint64_t s[4]; } rng_t;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void rng_seed(rng_t *g, uint64_t seed, uint64_t run, uint64_t state)
{
    uint64_t x = seed;
    uint64_t k = splitmix64(&x);
    x = k ^ (run * 0xd1b54a32d192ed03ULL);
    k = splitmix64(&x);
    x = k ^ (state * 0x8cb92ba72f3d8dd7ULL);
    for (int i = 0; i < 4; i++)
        g->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t rng_next(rng_t *g)
{
    uint64_t *s = g->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

/* Uniform in [0, n), n >= 1, without bias (Lemire's multiply-and-reject; where the
 * compiler has no 128-bit integers, the remainder of a draw below a multiple of n). */
static inline int64_t rng_below(rng_t *g, uint64_t n)
{
#ifdef __SIZEOF_INT128__
    uint64_t x = rng_next(g);
    __uint128_t m = (__uint128_t)x * n;
    uint64_t low = (uint64_t)m;
    if (low < n) {
        uint64_t floor = -n % n;
        while (low < floor) {
            x = rng_next(g);
            m = (__uint128_t)x * n;
            low = (uint64_t)m;
        }
    }
    return (int64_t)(m >> 64);
#else
    uint64_t limit = UINT64_MAX - UINT64_MAX % n, x;
    do
        x = rng_next(g);
    while (x >= limit);
    return (int64_t)(x % n);
#endif
}

static inline double rng_unit(rng_t *g) { return (double)(rng_next(g) >> 11) * 0x1.0p-53; }

#endif
