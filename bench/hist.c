/*
 * hist: the log-linear histogram declared in hist.h.
 *
 * Layout.  Bucket i < 2 * HIST_SUB holds exactly the value i.  Above that, bucket i belongs
 * to band b = i / HIST_SUB - 1 and covers HIST_SUB-th parts of [2^(b + HIST_SUB_BITS),
 * 2^(b + HIST_SUB_BITS + 1)), each 2^b wide.  hist_index() in the header maps a value to its
 * bucket with one count-leading-zeros; hist_bucket_high() here is its inverse, used only when
 * reporting.
 *
 * Why this shape: latency spans five or six decades in one run (a few microseconds on a warm
 * loopback, seconds when a replica stalls), and a benchmark needs the same relative precision
 * across all of them with a fixed, small memory cost per thread so that recording never
 * allocates.  1,920 counters (15 KiB) cover every uint64_t at 3% precision.
 */
#include "bench/hist.h"

#include <stdio.h>
#include <string.h>

void hist_init(struct hist *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

void hist_record_n(struct hist *h, uint64_t v, uint64_t n)
{
    if (n == 0)
        return;
    h->counts[hist_index(v)] += n;
    h->count += n;
    h->sum += (double)v * (double)n;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

void hist_merge(struct hist *dst, const struct hist *src)
{
    if (src->count == 0)
        return;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t hist_bucket_high(unsigned i)
{
    if (i < 2 * HIST_SUB)
        return i;
    unsigned band = (i >> HIST_SUB_BITS) - 1;
    uint64_t sub = i - ((uint64_t)band << HIST_SUB_BITS);
    uint64_t low = sub << band;
    return low + ((1ull << band) - 1);
}

uint64_t hist_quantile(const struct hist *h, double q)
{
    if (h->count == 0)
        return 0;
    if (q >= 1.0)
        return h->max;
    /* The rank of the requested sample, 1-based, rounded up so that p50 of {a, b} is a. */
    double r = q * (double)h->count;
    uint64_t rank = (uint64_t)r;
    if ((double)rank < r || rank == 0)
        rank++;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = hist_bucket_high(i);
            if (v > h->max)
                v = h->max;
            if (v < h->min)
                v = h->min;
            return v;
        }
    }
    return h->max;
}

double hist_mean(const struct hist *h)
{
    return h->count ? h->sum / (double)h->count : 0.0;
}

/*
 * Self-test.  Checks that every bucket's range maps back to itself at both edges, that the
 * relative error bound holds on a sweep of values, and that quantiles of known data and of a
 * merge come out where they must.
 */
#define HT_CHECK(cond)                                                                             \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "hist selftest: %s:%d: %s\n", __FILE__, __LINE__, #cond);              \
            fails++;                                                                               \
        }                                                                                          \
    } while (0)

int hist_selftest(void)
{
    int fails = 0;
    static struct hist a, b;

    /* Each bucket's edges land in that bucket, and buckets tile the range without gaps. */
    uint64_t prev_high = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        uint64_t hi = hist_bucket_high(i);
        uint64_t lo = i == 0 ? 0 : prev_high + 1;
        if (hist_index(hi) != i || hist_index(lo) != i) {
            HT_CHECK(hist_index(hi) == i && hist_index(lo) == i);
            break;
        }
        prev_high = hi;
    }
    HT_CHECK(prev_high == UINT64_MAX);

    /* Relative error of the reported bucket top is within 1/HIST_SUB. */
    for (uint64_t v = 1; v < (1ull << 40); v = v * 3 + 1) {
        uint64_t hi = hist_bucket_high(hist_index(v));
        HT_CHECK(hi >= v && (double)(hi - v) <= (double)v / HIST_SUB);
    }

    /* 1..1000 microseconds, once each: p50 near 500 us, p99 near 990 us, max exact. */
    hist_init(&a);
    for (uint64_t us = 1; us <= 1000; us++)
        hist_record(&a, us * 1000);
    HT_CHECK(a.count == 1000 && a.min == 1000 && a.max == 1000000);
    uint64_t p50 = hist_quantile(&a, 0.5), p99 = hist_quantile(&a, 0.99);
    HT_CHECK(p50 >= 500000 && p50 <= 500000 + 500000 / HIST_SUB);
    HT_CHECK(p99 >= 990000 && p99 <= 1000000);
    HT_CHECK(hist_quantile(&a, 1.0) == 1000000);
    HT_CHECK(hist_mean(&a) > 500000 && hist_mean(&a) < 501000);

    /* Merging: a (1..1000 us) plus b (1000 values of 5 s) puts p50 inside a, p75 at 5 s. */
    hist_init(&b);
    hist_record_n(&b, 5000000000ull, 1000);
    hist_merge(&b, &a);
    HT_CHECK(b.count == 2000 && b.min == 1000 && b.max == 5000000000ull);
    HT_CHECK(hist_quantile(&b, 0.5) <= 1000000 + 1000000 / HIST_SUB);
    HT_CHECK(hist_quantile(&b, 0.75) == 5000000000ull);

    /* Empty and tiny values. */
    hist_init(&b);
    HT_CHECK(hist_quantile(&b, 0.5) == 0 && hist_mean(&b) == 0.0);
    hist_record(&b, 0);
    hist_record(&b, 1);
    HT_CHECK(hist_quantile(&b, 0.5) == 0 && hist_quantile(&b, 0.99) == 1);
    return fails;
}
