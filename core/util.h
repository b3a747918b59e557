/*
 * util: the small pieces every module uses.
 *
 * Allocation never returns NULL to callers: on out-of-memory we log and abort, as Redis's
 * zmalloc does.  The cache's own memory limit is a policy matter handled above malloc.
 *
 * rk_assert() is always on: an invariant that fails logs file:line and aborts.
 */
#ifndef RK_UTIL_H
#define RK_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdlib.h>

#define RK_LIKELY(x) __builtin_expect(!!(x), 1)
#define RK_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define RK_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define RK_CACHELINE 64

void rk_assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));
#define rk_assert(e) (RK_LIKELY(e) ? (void)0 : rk_assert_fail(#e, __FILE__, __LINE__))

void *rk_malloc(size_t n);
void *rk_calloc(size_t n, size_t size);
void *rk_realloc(void *p, size_t n);
char *rk_strndup(const char *s, size_t n);
#define rk_free free

/* Wall clock in ms / us since the epoch (expiry deadlines are absolute wall-clock ms). */
int64_t rk_now_ms(void);
int64_t rk_now_us(void);
/* Monotonic clock in ns, for intervals and latency. */
uint64_t rk_mono_ns(void);

/* The CPUs this thread may run on (its affinity mask, as `taskset` or a cgroup's cpuset left
 * it), ascending, at most max of them, written to cpus (NULL: only counted); returns how many
 * (at least 1).  Where the mask can't be read: CPUs 0 .. online-1. */
int rk_cpus_allowed(int *cpus, int max);

/*
 * String <-> number, with Redis's strictness: no leading spaces, no '+', no leading zeros
 * ("0" alone is fine), no trailing bytes, must fit in the type.  Return 0 on success and -1
 * when the string is not a valid number.
 */
int rk_str2ll(const char *s, size_t len, long long *out);
int rk_str2ull(const char *s, size_t len, unsigned long long *out);
/* Parse a long double as Redis's INCRBYFLOAT does: no spaces, not nan/inf. 0 or -1. */
int rk_str2ld(const char *s, size_t len, long double *out);
/* Write v in decimal into buf (at least 21 bytes); returns the length. */
int rk_ll2str(char *buf, long long v);
/* Format a long double the way Redis's INCRBYFLOAT replies ("%.17Lf", trailing zeros and
 * a trailing dot trimmed).  buf holds at least 5*1024 bytes (MAX_LONG_DOUBLE_CHARS). Returns
 * the length. */
#define RK_LD_STR_MAX 5120
int rk_ld2str(char *buf, size_t cap, long double v);

/* Glob-style match as Redis's stringmatchlen: * ? [abc] [^a] [a-z] and \ escapes.
 * nocase matches ASCII case-insensitively.  Returns true on a match. */
bool rk_glob_match(const char *pat, size_t plen, const char *s, size_t slen, bool nocase);

/* ASCII case-insensitive compare of a length-delimited string with a C string. */
bool rk_eqi(const char *s, size_t len, const char *cstr);

/* Logging, as Redis: levels debug, verbose, notice, warning.  Written to the log file
 * (stdout by default) with pid, role char and time. */
enum { RK_LOG_DEBUG = 0, RK_LOG_VERBOSE, RK_LOG_NOTICE, RK_LOG_WARNING };
extern int rk_log_level;
extern char rk_log_role;                /* 'M' master, 'S' replica, as Redis's log lines */
void rk_log_set_file(const char *path); /* "" or NULL = stdout */
void rk_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
