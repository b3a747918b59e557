/*
 * lg: the ringkv-bench load generator's internal interface, shared by the files of bench/.
 *
 *   main.c    options, start-up, progress line, report and JSON
 *   client.c  one io_uring per thread driving its connections (the hot path)
 *   keygen.c  random numbers, key choice (uniform, zipf), key digits, value contents
 *   parse.c   RESP2 and line-protocol reply parsers, and the hidden --selftest
 *   hist.c    latency histograms (hist.h)
 *
 * Keys are LG_KEY_PREFIX followed by LG_KEY_DIGITS zero-padded decimal digits of an index in
 * [0, keyspace), the same shape redis-benchmark produces with -r, so both tools touch the
 * same keys.  The value of key i is a pure function of (seed, i, value size): see keygen.c.
 * That is what makes --verify possible with any number of clients writing at once: every
 * writer of key i writes the same bytes, so any GET of i must return exactly those bytes, or
 * nil if no SET of i has been acknowledged yet.
 *
 * bench/ depends on nothing else in the tree, so it builds on its own.
 */
#ifndef RK_BENCH_LG_H
#define RK_BENCH_LG_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "bench/hist.h"

#define LG_KEY_PREFIX "key:"
#define LG_KEY_PREFIX_LEN 4
#define LG_KEY_DIGITS 12
#define LG_KEY_LEN (LG_KEY_PREFIX_LEN + LG_KEY_DIGITS)
#define LG_KEYSPACE_MAX 1000000000000ull /* 10^LG_KEY_DIGITS */

#define LG_STALL_NS (10ull * 1000000000ull) /* no progress this long: give up */

enum lg_cmd { LG_SET = 0, LG_GET = 1, LG_WAIT = 2, LG_NCMD = 3 };
enum lg_proto { LG_RESP = 0, LG_LINE = 1 };

struct lg_config {
    const char *host;
    int port;
    unsigned clients; /* connections in all */
    unsigned threads;
    unsigned pipeline; /* SET/GET requests in flight per connection */
    uint64_t requests; /* SET+GET requests in all; 0 = bounded by duration only */
    double duration;   /* seconds; 0 = bounded by requests only */
    double rate;       /* at most this many SET+GET requests/s in all; 0 = unpaced */
    uint64_t keyspace;
    double zipf_theta; /* 0 = uniform */
    uint32_t value_size;
    uint32_t ratio_set; /* SET:GET weights */
    uint32_t ratio_get;
    int protocol; /* enum lg_proto */
    uint64_t seed;
    int wait_n; /* append WAIT wait_n 0 after each SET; -1 = no WAIT */
    bool verify;
    bool quiet;
    const char *json_path;
};

/* ---- keygen.c ---- */

/* splitmix64: one multiply-xorshift step per number; state is any 64-bit value. */
static inline uint64_t lg_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A number in [0, n) from one 64-bit draw (multiply-high; bias below 2^-40 for n < 2^24). */
static inline uint64_t lg_rand_below(uint64_t *state, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)lg_rand(state) * n) >> 64);
}

/* Mix of a 64-bit value (the splitmix64 finaliser), for hashing seeds and key indices. */
static inline uint64_t lg_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

struct lg_keygen {
    uint64_t keyspace;
    double theta; /* 0 = uniform */
    /* zipf (Gray et al.): precomputed once, read-only while threads draw */
    double zetan, alpha, eta, half_pow_theta;
    uint64_t perm_mul; /* rank -> key permutation: (rank * perm_mul + perm_add) % keyspace */
    uint64_t perm_add;
};

/* Prepare key choice over [0, keyspace); theta 0 for uniform, else 0 < theta < 1. */
void lg_keygen_init(struct lg_keygen *kg, uint64_t keyspace, double theta, uint64_t seed);
/* Draw a key index.  kg is shared and read-only; *rng is the caller's own state. */
uint64_t lg_keygen_zipf(const struct lg_keygen *kg, uint64_t *rng);
static inline uint64_t lg_keygen_next(const struct lg_keygen *kg, uint64_t *rng)
{
    if (kg->theta == 0.0)
        return lg_rand_below(rng, kg->keyspace);
    return lg_keygen_zipf(kg, rng);
}

/* Write k (< 10^12) as exactly LG_KEY_DIGITS zero-padded decimal digits; no terminator. */
void lg_key_digits(char *dst, uint64_t k);

/*
 * Values.  A pool of random alphanumeric bytes is made once from the seed; the value of key
 * k is a window of the pool at an offset hashed from (seed, k), with the key's own digits
 * written over its first bytes so that values of different keys differ.  Alphanumeric so a
 * value is one word of the line protocol.
 */
struct lg_values {
    char *pool;
    uint32_t size; /* bytes per value */
    uint64_t salt; /* from the seed */
};

#define LG_VALUE_WINDOWS 4096 /* distinct pool offsets */

void lg_values_init(struct lg_values *v, uint32_t size, uint64_t seed);
void lg_values_free(struct lg_values *v);
/* Write the value of key k (v->size bytes) at dst. */
void lg_value_write(const struct lg_values *v, char *dst, uint64_t k);
/* True when [p, p + len) is exactly the value of key k. */
bool lg_value_check(const struct lg_values *v, const char *p, size_t len, uint64_t k);

int lg_keygen_selftest(void);

/* ---- parse.c ---- */

enum lg_rtype {
    LG_R_STATUS, /* +text */
    LG_R_ERROR,  /* -text, or a line-protocol error line */
    LG_R_INT,    /* :n */
    LG_R_BULK,   /* $n, or a line-protocol value line */
    LG_R_NIL,    /* $-1, *-1, or the line "(nil)" */
    LG_R_ARRAY,  /* *n, elements checked and skipped */
};

struct lg_reply {
    int type;      /* enum lg_rtype */
    const char *p; /* text or bulk contents, pointing into the caller's buffer */
    size_t len;
    long long ival; /* LG_R_INT: the value; LG_R_ARRAY: the element count */
    size_t need;    /* on "need more": total bytes the reply needs if known, else 0 */
};

/*
 * Parse one reply at the start of buf[0, len).
 * Returns > 0, the bytes the reply takes (*r filled); 0, need more bytes (r->need set when
 * the full size is already known); -1, the bytes are not a valid reply.
 */
ssize_t lg_resp_parse(const char *buf, size_t len, struct lg_reply *r);

/*
 * Parse one line-protocol reply: one line ended by \n or \r\n, longer than max_line bytes
 * (without its end) an error.  "(nil)" is LG_R_NIL, "OK" LG_R_STATUS, a line that starts with
 * an upper-case word and a space ("ERR ...", "WRONGTYPE ...") LG_R_ERROR, a line of digits
 * with an optional '-' LG_R_INT (ival set), anything else LG_R_BULK.  Returns as above.
 */
ssize_t lg_line_parse(const char *buf, size_t len, size_t max_line, struct lg_reply *r);

/* Self-tests of every module of bench/; returns the number of failures (0 = pass). */
int lg_selftest(void);

/* ---- client.c ---- */

struct lg_cmd_stats {
    uint64_t count;      /* replies received */
    uint64_t errors;     /* error replies */
    uint64_t mismatches; /* replies of the wrong type for the command */
    struct hist lat;     /* ns from batch send to reply */
};

struct lg_stats {
    struct lg_cmd_stats cmd[LG_NCMD];
    uint64_t conn_errors;     /* connect failures, resets, EOF, unparseable streams */
    uint64_t stalls;          /* threads that saw no progress for LG_STALL_NS */
    uint64_t wait_short;      /* WAIT replies below the number asked for */
    uint64_t verify_checked;  /* GET replies checked */
    uint64_t verify_hits;     /* ... that returned the expected value */
    uint64_t verify_nils;     /* ... nil for a key with no acknowledged SET at send time */
    uint64_t verify_failures; /* wrong value, or nil after an acknowledged SET */
};

/* What every thread shares; read-only while threads run except the atomics. */
struct lg_shared {
    const struct lg_config *cfg;
    struct lg_keygen keygen;
    struct lg_values values;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    _Atomic uint64_t *acked;  /* verify: bit k set once a SET of key k was acknowledged */
    _Atomic int stop;         /* set by SIGINT: finish the batches in flight and stop */
    pthread_barrier_t *start; /* threads + main: all connected, go */
};

struct lg_thread {
    struct lg_shared *sh;
    unsigned id;
    unsigned nconns;
    uint64_t quota; /* requests this thread issues; UINT64_MAX = until deadline */
    pthread_t tid;
    _Atomic uint64_t done; /* SET+GET replies so far, stored once per loop pass */
    _Atomic int finished;
    uint64_t start_ns;     /* after the start barrier */
    uint64_t end_ns;       /* when the last reply arrived */
    char ring_mode[48];    /* set-up flags the ring got, for the report */
    char first_error[160]; /* first connection-level error, for the report */
    struct lg_stats st;
};

/* Thread body: connect nconns sockets, meet at the start barrier, run, close. */
void *lg_thread_main(void *arg);

/* Monotonic clock, ns. */
uint64_t lg_now_ns(void);

#endif
