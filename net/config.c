/*
 * config: the option table, and the four ways in: defaults, the config file, `--name value`
 * arguments and CONFIG GET/SET.
 *
 * Every option is one row of opts[]: its name, its type, where it lives in struct config, its
 * range, its default written as text, and its --help line.  Defaults are set by parsing the
 * default text exactly as a value from the command line would be, so a default can never be
 * a value the parser would refuse.  Each way in splits its input into words and hands them to
 * the same two steps: opt_parse() checks the words and turns them into a number (no side
 * effects), opt_apply() stores them.  Keeping the steps apart is what makes CONFIG SET
 * all-or-nothing: every pair is parsed before any is applied.
 *
 * Errors are worded twice.  At start-up a person reads them, so they say what a good value
 * looks like ("must be an integer between 0 and 65535") on one line of stderr.  CONFIG SET
 * replies are read by clients and tests written against Redis, so they use Redis 7.0's exact
 * texts ("argument couldn't be parsed into an integer").  Both come from the same error code.
 *
 * Concurrency.  Start-up is single-threaded.  Afterwards only CONFIG SET writes, and only the
 * options marked live; workers read those through the cfg_* helpers in config.h.  Numbers are
 * stored with relaxed atomic stores: a worker seeing the old limit for one more request is
 * fine, a torn value is not.  A live string (requirepass) is replaced by a fresh copy
 * published with a release store, pairing with the acquire load in cfg_requirepass(), so a
 * reader that sees the new pointer also sees its bytes.  The old copy is not freed, since a
 * worker may be comparing against it right now; it goes on a retired list (pushed with a CAS,
 * so two workers running CONFIG SET at once are safe) that keeps it reachable until
 * config_defaults(), which runs only before the workers start.  A password change costs a few
 * bytes for the life of the process, which is the price of a lock-free read on every AUTH.
 *
 * Some options exist only so that redis-server command lines and redis.conf files work
 * unchanged: save is accepted and ignored (there is no snapshot), appendonly and daemonize
 * accept only "no", databases only 1.  CONFIG GET reports them the way Redis would for such a
 * server, because clients (redis-benchmark among them) query them.
 */
#include "net/config.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"

struct config cfg;

enum opt_type {
    OT_INT,      /* integer in [min, max] (and a power of two if pow2) */
    OT_MEM,      /* memory size with Redis's units, in [min, max] bytes */
    OT_STR,      /* one word, any bytes but NUL */
    OT_WORDS,    /* one or more words, stored joined by single spaces (bind) */
    OT_LOGLEVEL, /* debug | verbose | notice | warning, stored as RK_LOG_* */
    OT_ENUM,     /* one of names[], stored as its index (int) */
    OT_ONLY_NO,  /* a yes/no option that ringkv accepts only as "no"; not stored */
    OT_IGNORED,  /* any words, accepted and ignored (save) */
};

#define FIELD(f) .off = offsetof(struct config, f), .size = sizeof(((struct config *)0)->f)
#define MB (1024LL * 1024)
#define BIND_MAX 16 /* as Redis's CONFIG_BINDADDR_MAX */

struct opt {
    const char *name;
    uint8_t type;  /* enum opt_type */
    bool live;     /* CONFIG SET may change it while running */
    bool pow2;     /* OT_INT: must also be a power of two */
    size_t off;    /* offset of the field in struct config */
    size_t size;   /* sizeof the field; 0 = not stored */
    int max_words; /* words it takes at start-up; 0 means 1 */
    long long min, max;
    const char *def;          /* the default, as text; NULL = computed by config_defaults() */
    const char *shown;        /* CONFIG GET's value for an option that is not stored */
    const char *rule;         /* the rule in words, where the type alone does not explain it */
    const char *arg;          /* --help: what the value looks like */
    const char *help;         /* --help: one short line */
    const char *const *names; /* OT_ENUM: the accepted words, NULL-terminated */
};

static const char *const sync_mode_names[] = {"async", "semi", "sync", NULL};
static const char *const sync_fallback_names[] = {"async", "error", NULL};
static const char *const transport_names[] = {"auto", "shm", "tcp", NULL};

/* One row per option, in --help order. */
/* clang-format off */
static const struct opt opts[] = {
    {.name = "port", .type = OT_INT, FIELD(port), .min = 0, .max = 65535, .def = "6379",
     .arg = "<port>", .help = "TCP port; 0 = no TCP listener"},
    {.name = "bind", .type = OT_WORDS, FIELD(bind), .max_words = BIND_MAX, .def = "127.0.0.1",
     .arg = "<addr> [addr ...]", .help = "addresses to listen on"},
    {.name = "maxclients", .type = OT_INT, .live = true, FIELD(maxclients), .min = 1,
     .max = 4294967295LL, .def = "10000", .arg = "<n>", .help = "most clients connected at once"},
    {.name = "requirepass", .type = OT_STR, .live = true, FIELD(requirepass), .def = "",
     .arg = "<password>", .help = "password for AUTH; empty = none"},
    {.name = "loglevel", .type = OT_LOGLEVEL, .live = true, FIELD(loglevel), .def = "notice",
     .arg = "<level>", .help = "debug, verbose, notice or warning"},
    {.name = "logfile", .type = OT_STR, FIELD(logfile), .def = "", .arg = "<path>",
     .help = "file to log to; empty = standard output"},
    {.name = "timeout", .type = OT_INT, .live = true, FIELD(timeout), .min = 0, .max = INT_MAX,
     .def = "0", .arg = "<seconds>", .help = "close clients idle this long; 0 = never"},
    {.name = "threads", .type = OT_INT, FIELD(threads), .min = 1, .max = 1024, .def = NULL,
     .arg = "<n>", .help = "worker threads, each pinned to one of the CPUs the process may use"},
    {.name = "shards", .type = OT_INT, .pow2 = true, FIELD(shards), .min = 1, .max = 65536,
     .def = "64", .rule = "shards must be a power of two between 1 and 65536", .arg = "<n>",
     .help = "keyspace shards, a power of two"},
    {.name = "proto-max-bulk-len", .type = OT_MEM, .live = true, FIELD(proto_max_bulk_len),
     .min = MB, .max = LLONG_MAX, .def = "512mb", .arg = "<size>",
     .help = "largest bulk string in a request, >= 1mb"},
    {.name = "client-query-buffer-limit", .type = OT_MEM, .live = true,
     FIELD(client_query_buffer_limit), .min = MB, .max = LLONG_MAX, .def = "1gb",
     .arg = "<size>", .help = "unparsed bytes held per client, >= 1mb"},
    {.name = "pidfile", .type = OT_STR, FIELD(pidfile), .def = "", .arg = "<path>",
     .help = "file to write the process id to; empty = none"},
    {.name = "unixsocket", .type = OT_STR, FIELD(unixsocket), .def = "auto", .arg = "<path>",
     .help = "Unix socket (mode 0600) where same-host replicas attach; auto = "
             "/tmp/ringkv-<port>.sock, empty = none"},
    {.name = "replicaof", .type = OT_WORDS, FIELD(replicaof), .max_words = 2, .def = NULL,
     .arg = "<host> <port>", .help = "start as a read-only replica of this master"},
    {.name = "masterauth", .type = OT_STR, .live = true, FIELD(masterauth), .def = "",
     .arg = "<password>", .help = "password a replica sends to its master"},
    {.name = "repl-transport", .type = OT_ENUM, .live = true, FIELD(repl_transport), .def = "auto",
     .names = transport_names, .arg = "auto|shm|tcp",
     .help = "how a replica follows its master: shm (shared memory, same host), tcp, or auto "
             "(shm when it can, else tcp); used at the next attach"},
    {.name = "repl-ring-size", .type = OT_MEM, FIELD(repl_ring_size), .min = 64 * 1024,
     .max = 1LL << 40, .def = "1mb", .arg = "<size>",
     .help = "replication log bytes per shard (rounded up to a power of two; a replica takes "
             "its master's); how far a TCP replica may fall behind"},
    {.name = "sync-mode", .type = OT_ENUM, .live = true, FIELD(sync_mode), .def = "async",
     .names = sync_mode_names, .arg = "async|semi|sync",
     .help = "reply to writes at once, once N replicas received, or once N applied"},
    {.name = "sync-replicas", .type = OT_INT, .live = true, FIELD(sync_replicas), .min = 1,
     .max = 64, .def = "1", .arg = "<n>", .help = "N for semi and sync modes"},
    {.name = "sync-timeout", .type = OT_INT, .live = true, FIELD(sync_timeout), .min = 1,
     .max = INT_MAX, .def = "1000", .arg = "<ms>",
     .help = "longest wait for replicas in semi and sync modes"},
    {.name = "sync-fallback", .type = OT_ENUM, .live = true, FIELD(sync_fallback),
     .def = "async", .names = sync_fallback_names, .arg = "async|error",
     .help = "at sync-timeout: reply anyway (counted in INFO) or reply an error"},
    {.name = "daemonize", .type = OT_ONLY_NO, .def = "no", .shown = "no",
     .rule = "ringkv does not daemonize (run it under a service manager); only 'no' is accepted",
     .arg = "no", .help = "only 'no': ringkv stays in the foreground"},
    {.name = "save", .type = OT_IGNORED, .live = true, .max_words = INT_MAX, .def = "",
     .shown = "", .arg = "<...>", .help = "ignored: ringkv keeps no snapshot"},
    {.name = "appendonly", .type = OT_ONLY_NO, .live = true, .def = "no", .shown = "no",
     .rule = "ringkv keeps no append-only file; only 'no' is accepted", .arg = "no",
     .help = "only 'no': there is no append-only file"},
    {.name = "databases", .type = OT_INT, .min = 1, .max = 1, .def = "1", .shown = "1",
     .rule = "ringkv has only database 0, so databases must be 1", .arg = "1",
     .help = "only 1: ringkv has database 0 only"},
};
/* clang-format on */

#define NOPTS ((int)RK_ARRAY_LEN(opts))

static const char *const level_names[] = {"debug", "verbose", "notice", "warning"};

/* What is wrong with a value; worded by startup_why() and set_why(). */
enum perr {
    PE_OK,
    PE_NOTINT,
    PE_RANGE,
    PE_NOTMEM,
    PE_LEVEL,
    PE_NOTBOOL,
    PE_RULE,
    PE_NUL,
    PE_EMPTY
};

/* ---- values ---------------------------------------------------------------------------- */

static const struct opt *opt_find(const char *name, size_t len)
{
    for (int i = 0; i < NOPTS; i++)
        if (rk_eqi(name, len, opts[i].name))
            return &opts[i];
    return NULL;
}

/*
 * A memory size as Redis's memtoull reads it: decimal digits (leading zeros allowed), then
 * nothing or a unit, case-insensitive: b, k (1000), kb (1024), m, mb, g, gb.  No sign, no
 * space.  Digits only ("kb" alone) is 0, as in Redis; too big saturates at ULLONG_MAX so the
 * range check rejects it (Redis wraps around on the multiplication).  0 or -1.
 */
static int parse_mem(const char *s, size_t len, unsigned long long *out)
{
    static const struct {
        const char *unit;
        unsigned long long mul;
    } units[] = {
        {"", 1},
        {"b", 1},
        {"k", 1000ULL},
        {"kb", 1ULL << 10},
        {"m", 1000ULL * 1000},
        {"mb", 1ULL << 20},
        {"g", 1000ULL * 1000 * 1000},
        {"gb", 1ULL << 30},
    };
    size_t nd = 0;
    while (nd < len && s[nd] >= '0' && s[nd] <= '9')
        nd++;
    if (nd >= 128) /* Redis copies the digits into a 128-byte buffer and refuses more */
        return -1;
    unsigned long long mul = 0;
    for (size_t i = 0; i < RK_ARRAY_LEN(units) && !mul; i++)
        if (rk_eqi(s + nd, len - nd, units[i].unit))
            mul = units[i].mul;
    if (!mul)
        return -1;
    unsigned long long v = 0;
    for (size_t i = 0; i < nd; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (ULLONG_MAX - d) / 10) {
            v = ULLONG_MAX;
            break;
        }
        v = v * 10 + d;
    }
    *out = v > ULLONG_MAX / mul ? ULLONG_MAX : v * mul;
    return 0;
}

/* Check nw words as a value of o; a number goes to *out.  No side effects.  PE_OK or why not.
 * The caller has checked the word count. */
static int opt_parse(const struct opt *o, const struct arg *w, int nw, long long *out)
{
    *out = 0;
    switch (o->type) {
    case OT_INT: {
        long long v;
        if (rk_str2ll(w[0].p, w[0].len, &v) < 0)
            return PE_NOTINT;
        if (v < o->min || v > o->max)
            return PE_RANGE;
        if (o->pow2 && (v & (v - 1)))
            return PE_RULE;
        *out = v;
        return PE_OK;
    }
    case OT_MEM: {
        unsigned long long v;
        if (parse_mem(w[0].p, w[0].len, &v) < 0)
            return PE_NOTMEM;
        if (v < (unsigned long long)o->min || v > (unsigned long long)o->max)
            return PE_RANGE;
        *out = (long long)v;
        return PE_OK;
    }
    case OT_STR:
        return memchr(w[0].p, '\0', w[0].len) ? PE_NUL : PE_OK;
    case OT_WORDS:
        for (int i = 0; i < nw; i++) {
            if (w[i].len == 0)
                return PE_EMPTY;
            if (memchr(w[i].p, '\0', w[i].len))
                return PE_NUL;
        }
        return PE_OK;
    case OT_LOGLEVEL:
        for (int i = 0; i < (int)RK_ARRAY_LEN(level_names); i++) {
            if (rk_eqi(w[0].p, w[0].len, level_names[i])) {
                *out = i; /* level_names[i] is RK_LOG_* i */
                return PE_OK;
            }
        }
        return PE_LEVEL;
    case OT_ENUM:
        for (int i = 0; o->names[i]; i++) {
            if (rk_eqi(w[0].p, w[0].len, o->names[i])) {
                *out = i;
                return PE_OK;
            }
        }
        return PE_LEVEL;
    case OT_ONLY_NO:
        if (rk_eqi(w[0].p, w[0].len, "no"))
            return PE_OK;
        return rk_eqi(w[0].p, w[0].len, "yes") ? PE_RULE : PE_NOTBOOL;
    default: /* OT_IGNORED */
        return PE_OK;
    }
}

/* Retired strings: kept reachable, never freed while workers may read them. */
struct retired {
    struct retired *next;
    char *s;
};
static struct retired *retired_head;

static void retire(char *s)
{
    if (!s)
        return;
    struct retired *n = rk_malloc(sizeof(*n));
    n->s = s;
    n->next = __atomic_load_n(&retired_head, __ATOMIC_RELAXED);
    /* Push only, nothing pops while workers run, so there is no ABA; relaxed is enough
     * because the list is read only by config_defaults() on a single thread. */
    while (!__atomic_compare_exchange_n(&retired_head, &n->next, n, true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
        ;
}

static void set_str(const struct opt *o, char **field, char *s)
{
    /* Release: the copy's bytes are written before a reader that loads the pointer with
     * acquire (cfg_requirepass) can see it.  An exchange, so that two CONFIG SETs at once on
     * two workers each retire exactly the copy they replaced. */
    char *old = __atomic_exchange_n(field, s, __ATOMIC_RELEASE);
    if (o->live)
        retire(old);
    else
        rk_free(old); /* immutable: only ever replaced before the workers start */
}

/* Store a value that opt_parse() accepted. */
static void opt_apply(const struct opt *o, const struct arg *w, int nw, long long v)
{
    if (!o->size)
        return;
    void *field = (char *)&cfg + o->off;
    switch (o->type) {
    case OT_INT:
    case OT_MEM:
    case OT_LOGLEVEL:
    case OT_ENUM:
        if (o->size == sizeof(int))
            __atomic_store_n((int *)field, (int)v, __ATOMIC_RELAXED);
        else
            __atomic_store_n((long long *)field, v, __ATOMIC_RELAXED);
        if (o->type == OT_LOGLEVEL)
            __atomic_store_n(&rk_log_level, (int)v, __ATOMIC_RELAXED);
        break;
    case OT_STR:
        set_str(o, field, rk_strndup(w[0].p, w[0].len));
        break;
    case OT_WORDS: {
        size_t n = 0;
        for (int i = 0; i < nw; i++)
            n += w[i].len + 1;
        char *s = rk_malloc(n ? n : 1), *d = s;
        for (int i = 0; i < nw; i++) {
            if (i)
                *d++ = ' ';
            memcpy(d, w[i].p, w[i].len);
            d += w[i].len;
        }
        *d = '\0';
        set_str(o, field, s);
        break;
    }
    default:
        break;
    }
}

/* CONFIG GET's text for o: points into num (>= 24 bytes), a string option, or a literal. */
static const char *opt_show(const struct opt *o, char *num, size_t *len)
{
    const char *s;
    if (!o->size) {
        s = o->shown;
    } else {
        void *field = (char *)&cfg + o->off;
        long long v = 0;
        switch (o->type) {
        case OT_STR:
        case OT_WORDS:
            s = __atomic_load_n((char **)field, __ATOMIC_ACQUIRE);
            break;
        default:
            if (o->size == sizeof(int))
                v = __atomic_load_n((int *)field, __ATOMIC_RELAXED);
            else
                v = __atomic_load_n((long long *)field, __ATOMIC_RELAXED);
            if (o->type == OT_LOGLEVEL) {
                s = level_names[v & 3];
            } else if (o->type == OT_ENUM) {
                s = o->names[v];
            } else {
                rk_ll2str(num, v);
                s = num;
            }
            break;
        }
    }
    *len = strlen(s);
    return s;
}

/* ---- defaults -------------------------------------------------------------------------- */

/* The default worker count: the CPUs this process may run on (nproc's answer), so that
 * `taskset -c 4-7 ringkv-server` starts 4 workers, one on each of those CPUs. */
static int usable_cpus(void)
{
    return rk_cpus_allowed(NULL, 1024);
}

void config_defaults(void)
{
    /* Only before the workers start (or between tests): this frees replaced strings. */
    char **strs[] = {&cfg.bind,        &cfg.requirepass, &cfg.logfile,   &cfg.pidfile,
                     &cfg.config_file, &cfg.unixsocket,  &cfg.replicaof, &cfg.masterauth};
    for (size_t i = 0; i < RK_ARRAY_LEN(strs); i++) {
        rk_free(*strs[i]);
        *strs[i] = NULL;
    }
    while (retired_head) {
        struct retired *n = retired_head;
        retired_head = n->next;
        rk_free(n->s);
        rk_free(n);
    }
    for (int i = 0; i < NOPTS; i++) {
        const struct opt *o = &opts[i];
        if (!o->size || !o->def)
            continue;
        struct arg w = {o->def, strlen(o->def)};
        long long v;
        int e = opt_parse(o, &w, 1, &v);
        rk_assert(e == PE_OK);
        opt_apply(o, &w, 1, v);
    }
    cfg.threads = usable_cpus();
    cfg.config_file = rk_strndup("", 0);
    cfg.replicaof = rk_strndup("", 0);
}

static void ensure_defaults(void)
{
    if (!cfg.bind)
        config_defaults();
}

/* ---- start-up errors ------------------------------------------------------------------- */

/* Where a directive came from: a file and line, or the command line (file NULL). */
struct src {
    const char *file;
    int line;
};

static void startup_error(const struct src *src, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void startup_error(const struct src *src, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (src && src->file)
        fprintf(stderr, "ringkv-server: %s:%d: %s\n", src->file, src->line, msg);
    else
        fprintf(stderr, "ringkv-server: %s\n", msg);
}

/* Words as a person should see them in an error: joined by spaces, unprintable bytes as
 * \xHH, cut at about 200 bytes, so the message stays one readable line. */
static void show_words(const struct arg *w, int nw, char *out, size_t cap)
{
    size_t n = 0;
    for (int i = 0; i < nw; i++) {
        for (size_t j = 0; j <= w[i].len; j++) {
            if (j == w[i].len && i == nw - 1)
                break;
            /* after each word but the last, a space */
            unsigned char c = j == w[i].len ? ' ' : (unsigned char)w[i].p[j];
            if (n + 8 >= cap) {
                memcpy(out + n, "...", 4);
                return;
            }
            if (c < 0x20 || c >= 0x7f)
                n += (size_t)snprintf(out + n, cap - n, "\\x%02x", c);
            else
                out[n++] = (char)c;
        }
    }
    out[n] = '\0';
}

/* What a good value looks like, for a person at start-up. */
static void startup_why(const struct opt *o, int e, char *out, size_t cap)
{
    if (e == PE_NUL) {
        snprintf(out, cap, "must not contain a NUL byte");
    } else if (e == PE_EMPTY) {
        snprintf(out, cap, "an address must not be empty");
    } else if (o->rule) {
        snprintf(out, cap, "%s", o->rule);
    } else if (o->type == OT_INT) {
        snprintf(out, cap, "must be an integer between %lld and %lld", o->min, o->max);
    } else if (o->type == OT_MEM) {
        snprintf(out, cap,
                 "must be a memory size of at least %lldmb: bytes, or a number with a unit "
                 "(k kb m mb g gb)",
                 o->min / MB);
    } else if (o->type == OT_ENUM) {
        size_t n = (size_t)snprintf(out, cap, "must be one of");
        for (int i = 0; o->names[i] && n < cap; i++)
            n += (size_t)snprintf(out + n, cap - n, "%s %s", i ? "," : "", o->names[i]);
    } else {
        snprintf(out, cap, "must be one of debug, verbose, notice, warning");
    }
}

/*
 * Apply one directive: name and its words, from a file line or a --name on the command line.
 * Unknown names, wrong word counts and bad values print one line and return -1; 0 when
 * applied.
 */
static int apply_directive(const struct src *src, const char *name, size_t nlen,
                           const struct arg *w, int nw)
{
    const char *dash = src->file ? "" : "--";
    const char *what = src->file ? "" : "option ";
    int shown_len = nlen > 100 ? 100 : (int)nlen;
    const struct opt *o = opt_find(name, nlen);
    if (!o) {
        char hint[160] = "";
        if (memchr(name, '_', nlen) && nlen < 64) {
            char fixed[64];
            for (size_t i = 0; i < nlen; i++)
                fixed[i] = name[i] == '_' ? '-' : name[i];
            const struct opt *near = opt_find(fixed, nlen);
            if (near)
                snprintf(hint, sizeof(hint), " (did you mean '%s%s'?)", dash, near->name);
        }
        startup_error(src, "unknown option '%s%.*s'%s", dash, shown_len, name, hint);
        return -1;
    }
    int minw = o->type == OT_IGNORED ? 0 : 1;
    int maxw = o->max_words ? o->max_words : 1;
    if (nw < minw) {
        startup_error(src, "%s'%s%.*s' needs a value", what, dash, shown_len, name);
        return -1;
    }
    if (nw > maxw) {
        if (maxw == 1)
            startup_error(src, "%s'%s%.*s' takes one value, not %d", what, dash, shown_len, name,
                          nw);
        else
            startup_error(src, "%s'%s%.*s' takes at most %d values, not %d", what, dash, shown_len,
                          name, maxw, nw);
        return -1;
    }
    long long v;
    int e = opt_parse(o, w, nw, &v);
    if (e != PE_OK) {
        char val[256], why[256];
        show_words(w, nw, val, sizeof(val));
        startup_why(o, e, why, sizeof(why));
        startup_error(src, "bad value '%s' for '%s': %s", val, o->name, why);
        return -1;
    }
    opt_apply(o, w, nw, v);
    return 0;
}

/* ---- config file ----------------------------------------------------------------------- */

/* The words of one line; arg[i].p points into text. */
struct words {
    struct buf text; /* each word's bytes, NUL-terminated */
    size_t *off;     /* start of word i in text */
    struct arg *arg;
    int n, cap;
};

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f' || c == '\0';
}

static int hex_val(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/*
 * Split a line as Redis splits config lines and inline requests: words apart by white space;
 * "..." with \n \r \t \b \a \xHH and \<any> escapes; '...' with only \' ; a quote may open in
 * the middle of a word (a"b c"d is one word), and a closing quote must be followed by white
 * space or the end of the line.  Returns 0, or -1 on unbalanced quotes.
 */
static int split_line(const char *p, size_t len, struct words *ws)
{
    const char *end = p + len;
    ws->n = 0;
    ws->text.len = 0;
    for (;;) {
        while (p < end && is_space(*p))
            p++;
        if (p == end)
            break;
        if (ws->n == ws->cap) {
            ws->cap = ws->cap ? ws->cap * 2 : 8;
            ws->off = rk_realloc(ws->off, (size_t)ws->cap * sizeof(*ws->off));
            ws->arg = rk_realloc(ws->arg, (size_t)ws->cap * sizeof(*ws->arg));
        }
        size_t start = ws->text.len;
        bool inq = false, insq = false, done = false;
        while (!done) {
            if (inq) {
                if (p == end)
                    return -1;
                if (*p == '\\' && end - p >= 4 && p[1] == 'x' && hex_val(p[2]) >= 0 &&
                    hex_val(p[3]) >= 0) {
                    buf_putc(&ws->text, (char)(hex_val(p[2]) * 16 + hex_val(p[3])));
                    p += 3;
                } else if (*p == '\\' && end - p >= 2) {
                    char c = *++p;
                    c = c == 'n'   ? '\n'
                        : c == 'r' ? '\r'
                        : c == 't' ? '\t'
                        : c == 'b' ? '\b'
                        : c == 'a' ? '\a'
                                   : c;
                    buf_putc(&ws->text, c);
                } else if (*p == '"') {
                    if (p + 1 < end && !is_space(p[1]))
                        return -1;
                    done = true;
                } else {
                    buf_putc(&ws->text, *p);
                }
            } else if (insq) {
                if (p == end)
                    return -1;
                if (*p == '\\' && end - p >= 2 && p[1] == '\'') {
                    buf_putc(&ws->text, '\'');
                    p++;
                } else if (*p == '\'') {
                    if (p + 1 < end && !is_space(p[1]))
                        return -1;
                    done = true;
                } else {
                    buf_putc(&ws->text, *p);
                }
            } else if (p == end || is_space(*p)) {
                done = true;
            } else if (*p == '"') {
                inq = true;
            } else if (*p == '\'') {
                insq = true;
            } else {
                buf_putc(&ws->text, *p);
            }
            if (p < end)
                p++;
        }
        ws->off[ws->n] = start;
        ws->arg[ws->n].len = ws->text.len - start;
        ws->n++;
        buf_putc(&ws->text, '\0');
    }
    for (int i = 0; i < ws->n; i++)
        ws->arg[i].p = ws->text.p + ws->off[i];
    return 0;
}

static void words_free(struct words *ws)
{
    buf_free(&ws->text);
    rk_free(ws->off);
    rk_free(ws->arg);
}

int config_load_file(const char *path)
{
    ensure_defaults();
    bool is_stdin = strcmp(path, "-") == 0;
    FILE *fp = is_stdin ? stdin : fopen(path, "r");
    if (!fp) {
        startup_error(NULL, "can't open config file '%s': %s", path, strerror(errno));
        return -1;
    }
    struct src src = {is_stdin ? "(stdin)" : path, 0};
    struct words ws = {0};
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;
    while (rc == 0 && (n = getline(&line, &cap, fp)) >= 0) {
        src.line++;
        const char *p = line;
        while (p < line + n && is_space(*p))
            p++;
        if (p == line + n || *p == '#')
            continue;
        if (split_line(line, (size_t)n, &ws) < 0) {
            startup_error(&src, "unbalanced quotes");
            rc = -1;
        } else if (ws.n > 0) {
            rc = apply_directive(&src, ws.arg[0].p, ws.arg[0].len, ws.arg + 1, ws.n - 1);
        }
    }
    if (rc == 0 && ferror(fp)) {
        startup_error(NULL, "can't read config file '%s': %s", path, strerror(errno));
        rc = -1;
    }
    free(line);
    words_free(&ws);
    if (!is_stdin)
        fclose(fp);
    if (rc == 0) {
        char *abs = is_stdin ? NULL : realpath(path, NULL);
        rk_free(cfg.config_file);
        cfg.config_file = rk_strndup(abs ? abs : "", abs ? strlen(abs) : 0);
        free(abs);
    }
    return rc;
}

/* ---- command line ---------------------------------------------------------------------- */

void config_print_help(FILE *fp)
{
    fprintf(fp, "Usage: ringkv-server [config-file] [--option value ...]\n");
    for (int i = 0; i < NOPTS; i++) {
        const struct opt *o = &opts[i];
        char left[64], def[48];
        snprintf(left, sizeof(left), "--%s %s", o->name, o->arg);
        if (!o->def && o->off == offsetof(struct config, threads))
            snprintf(def, sizeof(def), "usable CPUs: %d", usable_cpus());
        else if (!o->def)
            snprintf(def, sizeof(def), "none");
        else if (!*o->def)
            snprintf(def, sizeof(def), "\"\"");
        else
            snprintf(def, sizeof(def), "%s", o->def);
        fprintf(fp, "  %-34s  %s (default %s%s)\n", left, o->help, def, o->live ? ", live" : "");
    }
    fprintf(fp,
            "  %-34s  print this help, or the version, and exit\n"
            "A config file holds the same options without the dashes, one per line ('port 6380');\n"
            "--options are applied on top of it.  Sizes: 1k = 1000, 1kb = 1024, and m, mb, g, gb.\n"
            "'live' options can be changed while running with CONFIG SET.  save and appendonly\n"
            "exist so that redis-server command lines work: --save '' --appendonly no.\n"
            "Example: ringkv-server --port 6380 --bind 127.0.0.1 ::1 --threads 4 --save ''\n",
            "--help, --version");
}

int config_from_args(int argc, char **argv)
{
    ensure_defaults();
    /* --help and --version win wherever they are; a value never starts with "--". */
    for (int i = 1; i < argc; i++) {
        bool first = i == 1;
        if (rk_eqi(argv[i], strlen(argv[i]), "--help") || (first && !strcmp(argv[i], "-h"))) {
            config_print_help(stdout);
            exit(0);
        }
        if (rk_eqi(argv[i], strlen(argv[i]), "--version") || (first && !strcmp(argv[i], "-v"))) {
            printf("ringkv-server %s\n", RINGKV_VERSION);
            exit(0);
        }
    }
    int i = 1;
    if (i < argc && strncmp(argv[i], "--", 2) != 0) {
        if (config_load_file(argv[i]) < 0)
            return -1;
        i++;
    }
    struct arg *w = rk_malloc(sizeof(*w) * (size_t)(argc > 0 ? argc : 1));
    struct src src = {NULL, 0};
    int rc = 0;
    while (i < argc && rc == 0) {
        if (strncmp(argv[i], "--", 2) != 0) {
            startup_error(NULL,
                          "unexpected argument '%s': options start with --, and only the "
                          "first argument can be a config file",
                          argv[i]);
            rc = -1;
            break;
        }
        const char *name = argv[i] + 2;
        int nw = 0;
        for (i++; i < argc && strncmp(argv[i], "--", 2) != 0; i++) {
            w[nw].p = argv[i];
            w[nw].len = strlen(argv[i]);
            nw++;
        }
        rc = apply_directive(&src, name, strlen(name), w, nw);
    }
    rk_free(w);
    return rc;
}

/* ---- CONFIG GET / SET ------------------------------------------------------------------ */

void config_cmd_get(struct reply *r, int argc, const struct arg *argv)
{
    if (argc < 1) {
        reply_error_arity(r, "config|get");
        return;
    }
    ensure_defaults();
    /* As Redis 7.0: a pattern without glob characters is a name, looked up directly and
     * echoed as the client spelled it; a glob reports the names as the table spells them.
     * Each option appears once, at the place of the first pattern that matched it. */
    const char *name[NOPTS];
    size_t name_len[NOPTS];
    int order[NOPTS], n = 0;
    bool hit[NOPTS] = {false};
    for (int i = 0; i < argc && n < NOPTS; i++) {
        const struct arg *pat = &argv[i];
        bool glob = memchr(pat->p, '*', pat->len) || memchr(pat->p, '?', pat->len) ||
                    memchr(pat->p, '[', pat->len);
        if (!glob) {
            const struct opt *o = opt_find(pat->p, pat->len);
            if (o && !hit[o - opts]) {
                int k = (int)(o - opts);
                hit[k] = true;
                name[k] = pat->p;
                name_len[k] = pat->len;
                order[n++] = k;
            }
            continue;
        }
        for (int k = 0; k < NOPTS; k++) {
            if (hit[k] ||
                !rk_glob_match(pat->p, pat->len, opts[k].name, strlen(opts[k].name), true))
                continue;
            hit[k] = true;
            name[k] = opts[k].name;
            name_len[k] = strlen(opts[k].name);
            order[n++] = k;
        }
    }
    reply_array(r, 2L * n);
    for (int i = 0; i < n; i++) {
        int k = order[i];
        char num[24];
        size_t len;
        const char *v = opt_show(&opts[k], num, &len);
        reply_bulk(r, name[k], name_len[k]);
        reply_bulk(r, v, len);
    }
}

/* Redis 7.0's words for a value CONFIG SET refuses. */
static void set_why(const struct opt *o, int e, char *out, size_t cap)
{
    switch (e) {
    case PE_NOTINT:
        snprintf(out, cap, "argument couldn't be parsed into an integer");
        break;
    case PE_RANGE:
        snprintf(out, cap, "argument must be between %lld and %lld inclusive", o->min, o->max);
        break;
    case PE_NOTMEM:
        snprintf(out, cap, "argument must be a memory value");
        break;
    case PE_LEVEL:
        if (o->type == OT_ENUM) {
            size_t n = (size_t)snprintf(out, cap, "argument(s) must be one of the following:");
            for (int i = 0; o->names[i] && n < cap; i++)
                n += (size_t)snprintf(out + n, cap - n, "%s %s", i ? "," : "", o->names[i]);
        } else {
            snprintf(out, cap,
                     "argument(s) must be one of the following: debug, verbose, notice, "
                     "warning");
        }
        break;
    case PE_NOTBOOL:
        snprintf(out, cap, "argument must be 'yes' or 'no'");
        break;
    case PE_NUL:
        snprintf(out, cap, "argument must not contain a NUL byte");
        break;
    default:
        startup_why(o, e, out, cap);
        break;
    }
}

void config_cmd_set(struct reply *r, int argc, const struct arg *argv)
{
    if (argc < 2 || argc % 2 != 0) {
        reply_error_arity(r, "config|set");
        return;
    }
    ensure_defaults();
    /* As Redis 7.0, in two passes.  First the names, pair by pair: unknown, immutable or
     * repeated stops at that pair (the name echoed as sent).  Every option can appear once,
     * so by pair NOPTS + 1 one of those has happened and the arrays below are big enough. */
    int npairs = argc / 2;
    const struct opt *po[NOPTS];
    bool seen[NOPTS] = {false};
    for (int i = 0; i < npairs; i++) {
        const struct arg *nm = &argv[2 * i];
        const struct opt *o = opt_find(nm->p, nm->len);
        if (!o) {
            reply_errorf(r, "ERR Unknown option or number of arguments for CONFIG SET - '%.*s'",
                         (int)nm->len, nm->p);
            return;
        }
        if (!o->live || seen[o - opts]) {
            reply_errorf(r, "ERR CONFIG SET failed (possibly related to argument '%.*s') - %s",
                         (int)nm->len, nm->p,
                         o->live ? "duplicate parameter" : "can't set immutable config");
            return;
        }
        seen[o - opts] = true;
        rk_assert(i < NOPTS);
        po[i] = o;
    }
    /* Then every value, before any is applied: all or nothing. */
    long long val[NOPTS];
    for (int i = 0; i < npairs; i++) {
        int e = opt_parse(po[i], &argv[2 * i + 1], 1, &val[i]);
        if (e != PE_OK) {
            char why[256];
            set_why(po[i], e, why, sizeof(why));
            reply_errorf(r, "ERR CONFIG SET failed (possibly related to argument '%s') - %s",
                         po[i]->name, why);
            return;
        }
    }
    for (int i = 0; i < npairs; i++)
        opt_apply(po[i], &argv[2 * i + 1], 1, val[i]);
    reply_ok(r);
}
