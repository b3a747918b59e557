/*
 * util: allocation that aborts on failure, clocks, Redis-strict number parsing and
 * formatting, glob matching, and the log.
 *
 * Number parsing follows Redis's rules (string2ll): a request's "007" or " 7" is not an
 * integer, so INCR on such a value fails exactly as it does in Redis.
 */
#include "core/util.h"

#include <ctype.h>
#include <stdlib.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int rk_log_level = RK_LOG_NOTICE;
char rk_log_role = 'M';
static FILE *log_fp;

void rk_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "ringkv: assertion failed: %s at %s:%d\n", expr, file, line);
    abort();
}

static void oom(size_t n)
{
    fprintf(stderr, "ringkv: out of memory allocating %zu bytes\n", n);
    abort();
}

void *rk_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (RK_UNLIKELY(!p))
        oom(n);
    return p;
}

void *rk_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (RK_UNLIKELY(!p))
        oom(n * size);
    return p;
}

void *rk_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (RK_UNLIKELY(!q))
        oom(n);
    return q;
}

char *rk_strndup(const char *s, size_t n)
{
    char *p = rk_malloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

int64_t rk_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t rk_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

uint64_t rk_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int rk_cpus_allowed(int *cpus, int max)
{
    cpu_set_t set;
    int n = 0;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        for (int c = 0; c < CPU_SETSIZE && n < max; c++)
            if (CPU_ISSET(c, &set)) {
                if (cpus)
                    cpus[n] = c;
                n++;
            }
    if (n == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        for (long c = 0; c < online && n < max; c++) {
            if (cpus)
                cpus[n] = (int)c;
            n++;
        }
    }
    if (n == 0 && max > 0) {
        if (cpus)
            cpus[0] = 0;
        n = 1;
    }
    return n;
}

int rk_str2ull(const char *s, size_t len, unsigned long long *out)
{
    if (len == 0 || len > 20)
        return -1;
    if (len > 1 && s[0] == '0')
        return -1;
    unsigned long long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (~0ull - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int rk_str2ll(const char *s, size_t len, long long *out)
{
    if (len == 0)
        return -1;
    int neg = 0;
    if (s[0] == '-') {
        neg = 1;
        s++;
        len--;
        if (len == 0 || s[0] == '0')
            return -1; /* "-" and "-0..." */
    }
    unsigned long long v;
    if (rk_str2ull(s, len, &v) < 0)
        return -1;
    if (neg) {
        if (v > (unsigned long long)LLONG_MAX + 1)
            return -1;
        *out = (long long)(0 - v);
    } else {
        if (v > (unsigned long long)LLONG_MAX)
            return -1;
        *out = (long long)v;
    }
    return 0;
}

int rk_str2ld(const char *s, size_t len, long double *out)
{
    char tmp[RK_LD_STR_MAX];
    if (len == 0 || len >= sizeof(tmp))
        return -1;
    if (isspace((unsigned char)s[0]))
        return -1;
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    char *end;
    errno = 0;
    long double v = strtold(tmp, &end);
    if ((size_t)(end - tmp) != len || (errno == ERANGE && (v == HUGE_VALL || v == -HUGE_VALL)) ||
        (errno == ERANGE && fpclassify(v) == FP_ZERO) || isnan(v))
        return -1;
    *out = v;
    return 0;
}

int rk_ll2str(char *buf, long long v)
{
    char tmp[24];
    unsigned long long u = v < 0 ? 0 - (unsigned long long)v : (unsigned long long)v;
    int n = 0;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    int len = 0;
    if (v < 0)
        buf[len++] = '-';
    while (n)
        buf[len++] = tmp[--n];
    buf[len] = '\0';
    return len;
}

int rk_ld2str(char *buf, size_t cap, long double v)
{
    /* As Redis's humanfriendly long double format: 17 digits after the point, then trailing
     * zeros and a trailing point removed.  "-0" is printed as "0". */
    int n = snprintf(buf, cap, "%.17Lf", v);
    if (n < 0 || (size_t)n >= cap)
        return -1;
    if (strchr(buf, '.')) {
        while (n > 0 && buf[n - 1] == '0')
            n--;
        if (n > 0 && buf[n - 1] == '.')
            n--;
    }
    buf[n] = '\0';
    if (n == 2 && buf[0] == '-' && buf[1] == '0') {
        buf[0] = '0';
        buf[1] = '\0';
        n = 1;
    }
    return n;
}

static int lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

bool rk_eqi(const char *s, size_t len, const char *cstr)
{
    size_t i = 0;
    for (; i < len; i++) {
        if (!cstr[i] || lower((unsigned char)s[i]) != lower((unsigned char)cstr[i]))
            return false;
    }
    return cstr[i] == '\0';
}

/* Glob matching with a depth bound: patterns like "*a*a*a*a*b" against long strings are
 * matched iteratively for '*' (backtracking to the last star only), so the cost is
 * O(plen * slen) at worst and nothing recurses. */
static bool class_match(const char **pp, const char *pend, int c, bool nocase)
{
    const char *p = *pp + 1; /* after '[' */
    bool negate = false, match = false;
    if (p < pend && *p == '^') {
        negate = true;
        p++;
    }
    while (p < pend && *p != ']') {
        if (*p == '\\' && p + 1 < pend) {
            p++;
            if ((nocase ? lower((unsigned char)*p) : (unsigned char)*p) == c)
                match = true;
            p++;
        } else if (p + 2 < pend && p[1] == '-' && p[2] != ']') {
            int a = (unsigned char)p[0], b = (unsigned char)p[2];
            if (a > b) {
                int t = a;
                a = b;
                b = t;
            }
            if (nocase) {
                a = lower(a);
                b = lower(b);
            }
            if (c >= a && c <= b)
                match = true;
            p += 3;
        } else {
            if ((nocase ? lower((unsigned char)*p) : (unsigned char)*p) == c)
                match = true;
            p++;
        }
    }
    *pp = p < pend ? p + 1 : p; /* past ']' (an unclosed class runs to the end) */
    return negate ? !match : match;
}

bool rk_glob_match(const char *pat, size_t plen, const char *s, size_t slen, bool nocase)
{
    const char *p = pat, *pend = pat + plen, *str = s, *send = s + slen;
    const char *star_p = NULL, *star_s = NULL;
    while (str < send) {
        if (p < pend && *p == '*') {
            while (p < pend && *p == '*')
                p++;
            if (p == pend)
                return true;
            star_p = p;
            star_s = str;
            continue;
        }
        if (p < pend) {
            int c = nocase ? lower((unsigned char)*str) : (unsigned char)*str;
            const char *np = p;
            bool ok;
            if (*p == '?') {
                ok = true;
                np = p + 1;
            } else if (*p == '[') {
                ok = class_match(&np, pend, c, nocase);
            } else {
                if (*p == '\\' && p + 1 < pend)
                    np = ++p;
                int pc = nocase ? lower((unsigned char)*p) : (unsigned char)*p;
                ok = pc == c;
                np = p + 1;
            }
            if (ok) {
                p = np;
                str++;
                continue;
            }
        }
        if (!star_p)
            return false;
        p = star_p;
        str = ++star_s;
    }
    while (p < pend && *p == '*')
        p++;
    return p == pend;
}

void rk_log_set_file(const char *path)
{
    if (log_fp && log_fp != stdout)
        fclose(log_fp);
    log_fp = NULL;
    if (path && *path) {
        log_fp = fopen(path, "a");
        if (!log_fp)
            fprintf(stderr, "ringkv: can't open the log file %s: %s\n", path, strerror(errno));
    }
}

void rk_log(int level, const char *fmt, ...)
{
    static const char marks[] = ".-*#";
    if (level < rk_log_level)
        return;
    FILE *fp = log_fp ? log_fp : stdout;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    localtime_r(&tv.tv_sec, &tm);
    char ts[64];
    size_t n = strftime(ts, sizeof(ts), "%d %b %Y %H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03d", (int)(tv.tv_usec / 1000));
    fprintf(fp, "%d:%c %s %c %s\n", (int)getpid(), __atomic_load_n(&rk_log_role, __ATOMIC_RELAXED),
            ts, marks[level & 3], msg);
    fflush(fp);
}
