/*
 * hist: a log-linear latency histogram, in the manner of HdrHistogram.
 *
 * Values are nanoseconds.  The range is cut into power-of-two bands and each band into
 * HIST_SUB linear sub-buckets, so the relative error of any reported value is at most
 * 1/HIST_SUB (about 3%) from one nanosecond up to the top of uint64_t, in a fixed array of
 * counters: recording is a count-leading-zeros, a shift and an increment, with no branch on
 * the size of the value and no allocation.
 *
 * A histogram is owned by one thread while it records; histograms from several threads are
 * combined afterwards with hist_merge(), which is exact (counts add bucket by bucket).
 *
 * Percentiles are reported as the highest value that falls in the bucket holding the
 * requested rank, clamped to the exact maximum seen: a reported p99 is never below the true
 * p99, and never above it by more than one sub-bucket.
 */
#ifndef RK_BENCH_HIST_H
#define RK_BENCH_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 5
#define HIST_SUB (1u << HIST_SUB_BITS) /* linear sub-buckets per power of two */
/* Bands 0..(64 - HIST_SUB_BITS - 1); band 0 holds 2 * HIST_SUB exact values. */
#define HIST_BUCKETS ((64 - HIST_SUB_BITS) * HIST_SUB + HIST_SUB)

struct hist {
    uint64_t count;
    uint64_t min; /* exact, UINT64_MAX while empty */
    uint64_t max; /* exact */
    double sum;   /* for the mean */
    uint64_t counts[HIST_BUCKETS];
};

/* Empty a histogram (also a valid way to create one: it holds no pointers). */
void hist_init(struct hist *h);

/* Bucket index of a value, and the highest value that lands in a bucket. */
static inline unsigned hist_index(uint64_t v)
{
    /* The band is how far the top bit sits above the sub-bucket bits; values below
     * 2 * HIST_SUB are their own bucket.  v | HIST_SUB keeps clz defined for v == 0. */
    unsigned msb = 63u - (unsigned)__builtin_clzll(v | HIST_SUB);
    unsigned band = msb - HIST_SUB_BITS;
    return (band << HIST_SUB_BITS) + (unsigned)(v >> band);
}

/* Record one value.  Inline: it sits on the load generator's per-reply path. */
static inline void hist_record(struct hist *h, uint64_t v)
{
    h->counts[hist_index(v)]++;
    h->count++;
    h->sum += (double)v;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

/* Record the same value n times (a batch of replies that arrived together). */
void hist_record_n(struct hist *h, uint64_t v, uint64_t n);

/* Add every count of src into dst. */
void hist_merge(struct hist *dst, const struct hist *src);

/* The value at quantile q (0 < q <= 1, e.g. 0.999) as described at the top; 0 when empty. */
uint64_t hist_quantile(const struct hist *h, double q);

/* Mean in the recorded unit; 0 when empty. */
double hist_mean(const struct hist *h);

/* Highest value that lands in bucket i (exposed for the self-test). */
uint64_t hist_bucket_high(unsigned i);

/* Self-test of indexing, merging and quantiles; returns the number of failed checks and
 * prints each failure to stderr. */
int hist_selftest(void);

#endif
