/*
 * keygen: which key each request touches, the key's bytes, and the value stored under it.
 *
 * Random numbers.  Each connection owns a splitmix64 state seeded from (seed, thread,
 * connection), so a run is reproducible for a given seed and shape, and threads never share
 * a cache line to draw a number.
 *
 * Key choice.  Uniform draws use one multiply-high (no division, no modulo bias worth the
 * name).  Zipf draws use the method of Gray et al. ("Quickly generating billion-record
 * synthetic databases", SIGMOD 1994), as YCSB does: the generalised harmonic number zeta(n)
 * is computed once at start (exactly for the first 2^22 terms, the rest by the
 * Euler-Maclaurin formula, so a keyspace of 10^12 starts as fast as one of 10^6), and each
 * draw is then one pow().  The method needs 0 < theta < 1.  Rank r (0 the hottest) becomes
 * key (r * a + b) mod n for a coprime to n: a bijection, so the popularity curve is unchanged,
 * but the hot keys are scattered over the keyspace instead of being key:000000000000,
 * key:000000000001, ...
 *
 * Keys are written digit pair by digit pair from a 200-byte table, so building a request
 * costs no snprintf.
 *
 * Values.  The value of key k must be a pure function of (seed, k, size) so that --verify can
 * check any GET without knowing which client wrote the key.  Hashing fresh bytes for every
 * SET would cost a hash per 8 bytes; instead a pool of LG_VALUE_WINDOWS + size random
 * alphanumeric bytes is made once, and the value of k is the size-byte window of the pool at
 * offset mix(k ^ salt) mod LG_VALUE_WINDOWS, with k's 12 digits written over its first bytes
 * (only the last, least significant, digits when the value is shorter).  Writing a value is
 * one memcpy plus the digits; two distinct keys never share a value when size >= 12.
 */
#include "bench/lg.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char lg_digit_pairs[201] = "00010203040506070809"
                                        "10111213141516171819"
                                        "20212223242526272829"
                                        "30313233343536373839"
                                        "40414243444546474849"
                                        "50515253545556575859"
                                        "60616263646566676869"
                                        "70717273747576777879"
                                        "80818283848586878889"
                                        "90919293949596979899";

void lg_key_digits(char *dst, uint64_t k)
{
    for (int i = LG_KEY_DIGITS / 2 - 1; i >= 0; i--) {
        unsigned pair = (unsigned)(k % 100);
        k /= 100;
        memcpy(dst + 2 * i, lg_digit_pairs + 2 * pair, 2);
    }
}

/* ---- zipf ---- */

#define LG_ZETA_EXACT (1ull << 22)

static double lg_zeta(uint64_t n, double theta)
{
    uint64_t m = n < LG_ZETA_EXACT ? n : LG_ZETA_EXACT;
    double sum = 0.0;
    /* Smallest terms first, for a sum that does not lose them to rounding. */
    for (uint64_t i = m; i >= 1; i--)
        sum += pow((double)i, -theta);
    if (n > m) {
        /* Euler-Maclaurin: sum_{i=m+1}^{n} f(i) ~ integral_m^n f + (f(n) - f(m)) / 2
         * + (f'(n) - f'(m)) / 12, with f(x) = x^-theta.  The error is far below a ulp of
         * the sum at m = 2^22. */
        double dn = (double)n, dm = (double)m;
        double integral = (pow(dn, 1.0 - theta) - pow(dm, 1.0 - theta)) / (1.0 - theta);
        double half = (pow(dn, -theta) - pow(dm, -theta)) / 2.0;
        double deriv = (-theta * pow(dn, -theta - 1.0) + theta * pow(dm, -theta - 1.0)) / 12.0;
        sum += integral + half + deriv;
    }
    return sum;
}

static uint64_t lg_gcd(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

void lg_keygen_init(struct lg_keygen *kg, uint64_t keyspace, double theta, uint64_t seed)
{
    memset(kg, 0, sizeof(*kg));
    kg->keyspace = keyspace;
    kg->theta = theta;
    if (theta == 0.0)
        return;
    double n = (double)keyspace;
    kg->zetan = lg_zeta(keyspace, theta);
    kg->alpha = 1.0 / (1.0 - theta);
    kg->half_pow_theta = pow(0.5, theta);
    double zeta2 = 1.0 + kg->half_pow_theta;
    /* With n <= 2 the first two branches of lg_keygen_zipf cover every draw. */
    kg->eta = keyspace > 2 ? (1.0 - pow(2.0 / n, 1.0 - theta)) / (1.0 - zeta2 / kg->zetan) : 0;

    uint64_t s = seed ^ 0x5a17f00dull;
    kg->perm_add = lg_rand_below(&s, keyspace);
    uint64_t a = lg_rand(&s) % keyspace;
    while (keyspace > 1 && (a == 0 || lg_gcd(a, keyspace) != 1))
        a = (a + 1) % keyspace;
    kg->perm_mul = a;
}

uint64_t lg_keygen_zipf(const struct lg_keygen *kg, uint64_t *rng)
{
    double u = (double)(lg_rand(rng) >> 11) * 0x1.0p-53;
    double uz = u * kg->zetan;
    uint64_t rank;
    if (uz < 1.0)
        rank = 0;
    else if (uz < 1.0 + kg->half_pow_theta)
        rank = 1;
    else
        rank = (uint64_t)((double)kg->keyspace * pow(kg->eta * u - kg->eta + 1.0, kg->alpha));
    if (rank >= kg->keyspace)
        rank = kg->keyspace - 1;
    return (uint64_t)(((unsigned __int128)rank * kg->perm_mul + kg->perm_add) % kg->keyspace);
}

/* ---- values ---- */

static const char lg_alnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

void lg_values_init(struct lg_values *v, uint32_t size, uint64_t seed)
{
    size_t n = (size_t)LG_VALUE_WINDOWS + size;
    v->pool = malloc(n);
    if (!v->pool) {
        fprintf(stderr, "ringkv-bench: out of memory for the value pool (%zu bytes)\n", n);
        exit(1);
    }
    v->size = size;
    uint64_t s = seed ^ 0x76a1e5ull;
    v->salt = lg_rand(&s);
    for (size_t i = 0; i < n; i++)
        v->pool[i] = lg_alnum[lg_rand_below(&s, sizeof(lg_alnum) - 1)];
}

void lg_values_free(struct lg_values *v)
{
    free(v->pool);
    v->pool = NULL;
}

static inline size_t lg_value_off(const struct lg_values *v, uint64_t k)
{
    return (size_t)(lg_mix(k ^ v->salt) & (LG_VALUE_WINDOWS - 1));
}

void lg_value_write(const struct lg_values *v, char *dst, uint64_t k)
{
    memcpy(dst, v->pool + lg_value_off(v, k), v->size);
    if (v->size >= LG_KEY_DIGITS) {
        lg_key_digits(dst, k);
    } else if (v->size > 0) {
        char d[LG_KEY_DIGITS];
        lg_key_digits(d, k);
        memcpy(dst, d + LG_KEY_DIGITS - v->size, v->size);
    }
}

bool lg_value_check(const struct lg_values *v, const char *p, size_t len, uint64_t k)
{
    if (len != v->size)
        return false;
    char d[LG_KEY_DIGITS];
    size_t nd = len < LG_KEY_DIGITS ? len : LG_KEY_DIGITS;
    lg_key_digits(d, k);
    if (memcmp(p, d + LG_KEY_DIGITS - nd, nd) != 0)
        return false;
    return memcmp(p + nd, v->pool + lg_value_off(v, k) + nd, len - nd) == 0;
}

/* ---- self-test ---- */

#define KG_CHECK(cond)                                                                             \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "keygen selftest: %s:%d: %s\n", __FILE__, __LINE__, #cond);            \
            fails++;                                                                               \
        }                                                                                          \
    } while (0)

int lg_keygen_selftest(void)
{
    int fails = 0;
    char got[LG_KEY_DIGITS + 1], want[32];
    static const uint64_t samples[] = {0, 1, 9, 10, 99, 100, 123456789, 999999999999ull};
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        lg_key_digits(got, samples[i]);
        got[LG_KEY_DIGITS] = 0;
        snprintf(want, sizeof(want), "%012llu", (unsigned long long)samples[i]);
        KG_CHECK(strcmp(got, want) == 0);
    }

    /* Uniform stays in range. */
    struct lg_keygen kg;
    uint64_t rng = 1;
    lg_keygen_init(&kg, 1000, 0.0, 7);
    for (int i = 0; i < 100000; i++)
        if (lg_keygen_next(&kg, &rng) >= 1000) {
            KG_CHECK(!"uniform key out of range");
            break;
        }

    /* Zipf: a bijective permutation, keys in range, and the hottest key near 1 / zeta(n). */
    lg_keygen_init(&kg, 1000, 0.99, 7);
    static uint32_t hits[1000];
    static uint8_t seen[1000];
    memset(hits, 0, sizeof(hits));
    memset(seen, 0, sizeof(seen));
    for (uint64_t r = 0; r < 1000; r++) {
        uint64_t k = (uint64_t)(((unsigned __int128)r * kg.perm_mul + kg.perm_add) % 1000);
        KG_CHECK(!seen[k]);
        seen[k] = 1;
    }
    const int draws = 200000;
    for (int i = 0; i < draws; i++) {
        uint64_t k = lg_keygen_next(&kg, &rng);
        if (k >= 1000) {
            KG_CHECK(!"zipf key out of range");
            break;
        }
        hits[k]++;
    }
    uint32_t top = 0;
    for (int i = 0; i < 1000; i++)
        if (hits[i] > top)
            top = hits[i];
    double share = (double)top / draws, expect = 1.0 / lg_zeta(1000, 0.99);
    KG_CHECK(fabs(share - expect) < 0.01);
    /* The tail formula matches the exact sum closely. */
    double exact = 0.0;
    for (uint64_t i = 1; i <= LG_ZETA_EXACT + 100000; i++)
        exact += pow((double)i, -0.9);
    KG_CHECK(fabs(lg_zeta(LG_ZETA_EXACT + 100000, 0.9) - exact) / exact < 1e-9);
    lg_keygen_init(&kg, 2, 0.5, 1);
    for (int i = 0; i < 1000; i++)
        KG_CHECK(lg_keygen_next(&kg, &rng) < 2);

    /* Values: reproducible, checked exactly, distinct per key. */
    uint32_t sizes[] = {0, 5, 12, 32, 1000};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        struct lg_values v, w;
        lg_values_init(&v, sizes[i], 42);
        lg_values_init(&w, sizes[i], 42);
        char *a = malloc(sizes[i] + 1), *b = malloc(sizes[i] + 1);
        lg_value_write(&v, a, 77);
        lg_value_write(&w, b, 77);
        KG_CHECK(memcmp(a, b, sizes[i]) == 0);
        KG_CHECK(lg_value_check(&v, a, sizes[i], 77));
        KG_CHECK(!lg_value_check(&v, a, sizes[i] + 1, 77));
        if (sizes[i] > 0) {
            KG_CHECK(!lg_value_check(&v, a, sizes[i], 78));
            a[sizes[i] - 1] ^= 1;
            KG_CHECK(!lg_value_check(&v, a, sizes[i], 77));
        }
        for (uint32_t j = 0; j < sizes[i]; j++)
            KG_CHECK(strchr(lg_alnum, b[j]) != NULL);
        free(a);
        free(b);
        lg_values_free(&v);
        lg_values_free(&w);
    }
    return fails;
}
