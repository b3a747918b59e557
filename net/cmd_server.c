/*
 * cmd_server: server and connection commands (see cmd_server.h).
 *
 * Replies and error texts follow Redis 7.0 byte for byte where ringkv has the same command.
 * ringkv speaks RESP2 only: HELLO 3 gets NOPROTO, as a server without RESP3 answers.
 * There is one database: SELECT 0 works, any other index is out of range.
 */
#include "net/cmd_server.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "net/config.h"
#include "net/dispatch.h"
#include "net/repl.h"

#define REDIS_COMPAT_VERSION "7.0.15"

static void reply_now_error(struct conn *c, struct req *req, const char *err)
{
    struct reply r;
    conn_reply_begin(c, &r, req->proto, req->crlf);
    reply_error(&r, err);
    conn_reply_end(c, &r);
}

static void reply_now_ok(struct conn *c, struct req *req)
{
    struct reply r;
    conn_reply_begin(c, &r, req->proto, req->crlf);
    reply_ok(&r);
    conn_reply_end(c, &r);
}

static void unknown_subcommand(struct conn *c, struct req *req, const char *cmd)
{
    struct reply r;
    conn_reply_begin(c, &r, req->proto, req->crlf);
    reply_errorf(&r, "ERR unknown subcommand '%.*s'. Try %s HELP.", (int)req->argv[1].len,
                 req->argv[1].p, cmd);
    conn_reply_end(c, &r);
}

/* ---- whole keyspace ------------------------------------------------------------------------ */

void srv_dbsize(struct conn *c, struct req *req)
{
    dispatch_shards(c, req, ks_dbsize_shard, COMB_SUM, req->argc, req->argv, 0);
}

void srv_flushall(struct conn *c, struct req *req)
{
    if (req->argc > 2 || (req->argc == 2 && !rk_eqi(req->argv[1].p, req->argv[1].len, "async") &&
                          !rk_eqi(req->argv[1].p, req->argv[1].len, "sync"))) {
        reply_now_error(c, req, RK_ERR_SYNTAX);
        return;
    }
    dispatch_shards(c, req, ks_flush_shard, COMB_OK, req->argc, req->argv, 0);
}

void srv_keys(struct conn *c, struct req *req)
{
    dispatch_shards(c, req, ks_keys_shard, COMB_ARRAY, req->argc, req->argv, 0);
}

void srv_randomkey(struct conn *c, struct req *req)
{
    struct worker *w = c->w;
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    char num[24];
    int n = rk_ll2str(num, (long long)(w->rng >> 1));
    struct arg argv[2] = {req->argv[0], {num, (size_t)n}};
    dispatch_shards(c, req, ks_randomkey_shard, COMB_FIRST, 2, argv, (int)(w->rng % srv.nshards));
}

void srv_scan(struct conn *c, struct req *req)
{
    unsigned long long cursor;
    if (rk_str2ull(req->argv[1].p, req->argv[1].len, &cursor) < 0) {
        reply_now_error(c, req, "ERR invalid cursor");
        return;
    }
    for (int i = 2; i < req->argc; i += 2) {
        const struct arg *o = &req->argv[i];
        if (i + 1 >= req->argc) {
            reply_now_error(c, req, RK_ERR_SYNTAX);
            return;
        }
        if (rk_eqi(o->p, o->len, "count")) {
            long long n;
            if (rk_str2ll(req->argv[i + 1].p, req->argv[i + 1].len, &n) < 0) {
                reply_now_error(c, req, RK_ERR_NOTINT);
                return;
            }
            if (n < 1) {
                reply_now_error(c, req, RK_ERR_SYNTAX);
                return;
            }
        } else if (!rk_eqi(o->p, o->len, "match") && !rk_eqi(o->p, o->len, "type")) {
            reply_now_error(c, req, RK_ERR_SYNTAX);
            return;
        }
    }
    uint32_t s = (uint32_t)(cursor & (srv.nshards - 1));
    dispatch_shard(c, req, s, ks_scan_shard, req->argc, req->argv);
}

/* ---- connection --------------------------------------------------------------------------- */

void srv_ping(struct conn *c, struct req *req)
{
    struct reply r;
    if (req->argc > 2) {
        conn_reply_begin(c, &r, req->proto, req->crlf);
        reply_error_arity(&r, "ping");
        conn_reply_end(c, &r);
        return;
    }
    conn_reply_begin(c, &r, req->proto, req->crlf);
    if (req->argc == 2)
        reply_bulk(&r, req->argv[1].p, req->argv[1].len);
    else
        reply_status(&r, "PONG");
    conn_reply_end(c, &r);
}

void srv_echo(struct conn *c, struct req *req)
{
    struct reply r;
    conn_reply_begin(c, &r, req->proto, req->crlf);
    reply_bulk(&r, req->argv[1].p, req->argv[1].len);
    conn_reply_end(c, &r);
}

void srv_select(struct conn *c, struct req *req)
{
    long long db;
    if (rk_str2ll(req->argv[1].p, req->argv[1].len, &db) < 0)
        reply_now_error(c, req, RK_ERR_NOTINT);
    else if (db != 0)
        reply_now_error(c, req, "ERR DB index is out of range");
    else
        reply_now_ok(c, req);
}

/* 1: accepted, 0: wrong password (reply sent), -1: no password configured (reply sent). */
static int check_password(struct conn *c, struct req *req, const struct arg *user,
                          const struct arg *pass)
{
    const char *pw = cfg_requirepass();
    if (pw[0] == '\0' && !user) {
        reply_now_error(c, req,
                        "ERR AUTH <password> called without any password configured for the "
                        "default user. Are you sure your configuration is correct?");
        return -1;
    }
    bool ok = (!user || rk_eqi(user->p, user->len, "default")) &&
              (pw[0] == '\0' || (pass->len == strlen(pw) && memcmp(pass->p, pw, pass->len) == 0));
    if (!ok) {
        rk_log(RK_LOG_VERBOSE, "client %s: wrong password", c->addr);
        reply_now_error(c, req, "WRONGPASS invalid username-password pair or user is disabled.");
        return 0;
    }
    c->authed = true;
    return 1;
}

void srv_auth(struct conn *c, struct req *req)
{
    if (req->argc > 3) {
        reply_now_error(c, req, RK_ERR_SYNTAX);
        return;
    }
    const struct arg *user = req->argc == 3 ? &req->argv[1] : NULL;
    if (check_password(c, req, user, &req->argv[req->argc - 1]) == 1)
        reply_now_ok(c, req);
}

static bool valid_client_name(const struct arg *a)
{
    for (size_t i = 0; i < a->len; i++)
        if (a->p[i] < '!' || a->p[i] > '~')
            return false;
    return true;
}

static void set_name(struct conn *c, const struct arg *a)
{
    rk_free(c->name);
    c->name = a->len ? rk_strndup(a->p, a->len) : NULL;
}

void srv_hello(struct conn *c, struct req *req)
{
    int i = 1;
    if (req->argc >= 2) {
        long long ver;
        if (rk_str2ll(req->argv[1].p, req->argv[1].len, &ver) < 0) {
            reply_now_error(c, req, "ERR Protocol version is not an integer or out of range");
            return;
        }
        if (ver != 2) {
            reply_now_error(c, req, "NOPROTO unsupported protocol version");
            return;
        }
        i = 2;
    }
    const struct arg *name = NULL;
    for (; i < req->argc; i++) {
        const struct arg *o = &req->argv[i];
        int left = req->argc - i - 1;
        if (rk_eqi(o->p, o->len, "auth") && left >= 2) {
            if (check_password(c, req, &req->argv[i + 1], &req->argv[i + 2]) != 1)
                return;
            i += 2;
        } else if (rk_eqi(o->p, o->len, "setname") && left >= 1) {
            name = &req->argv[++i];
            if (!valid_client_name(name)) {
                reply_now_error(c, req,
                                "ERR Client names cannot contain spaces, newlines or "
                                "special characters.");
                return;
            }
        } else {
            struct reply r;
            conn_reply_begin(c, &r, req->proto, req->crlf);
            reply_errorf(&r, "ERR Syntax error in HELLO option '%.*s'", (int)o->len, o->p);
            conn_reply_end(c, &r);
            return;
        }
    }
    if (!c->authed && cfg_requirepass()[0]) {
        reply_now_error(c, req,
                        "NOAUTH HELLO must be called with the client already authenticated, "
                        "otherwise the HELLO AUTH <user> <pass> option can be used to "
                        "authenticate the client and select the RESP protocol version at the "
                        "same time");
        return;
    }
    if (name)
        set_name(c, name);
    struct reply r;
    conn_reply_begin(c, &r, req->proto, req->crlf);
    reply_array(&r, 14);
    reply_bulk_cstr(&r, "server");
    reply_bulk_cstr(&r, "redis");
    reply_bulk_cstr(&r, "version");
    reply_bulk_cstr(&r, REDIS_COMPAT_VERSION);
    reply_bulk_cstr(&r, "proto");
    reply_int(&r, 2);
    reply_bulk_cstr(&r, "id");
    reply_int(&r, (long long)c->id);
    reply_bulk_cstr(&r, "mode");
    reply_bulk_cstr(&r, "standalone");
    reply_bulk_cstr(&r, "role");
    reply_bulk_cstr(&r, repl_is_replica() ? "replica" : "master");
    reply_bulk_cstr(&r, "modules");
    reply_array(&r, 0);
    conn_reply_end(c, &r);
}

void srv_quit(struct conn *c, struct req *req)
{
    reply_now_ok(c, req);
    c->close_after_reply = true;
}

void conn_describe(struct conn *x, struct buf *b, int64_t now_ms)
{
    buf_printf(
        b,
        "id=%llu addr=%s laddr=%s fd=%d name=%s age=%lld idle=%lld flags=N db=0 sub=0 psub=0 "
        "ssub=0 multi=-1 qbuf=%zu qbuf-free=%zu argv-mem=0 multi-mem=0 obl=0 oll=%d omem=%zu "
        "tot-mem=%zu events=r cmd=%s user=default redir=-1 resp=2\n",
        (unsigned long long)x->id, x->addr, x->laddr, x->fd, x->name ? x->name : "",
        (long long)((now_ms - x->ctime_ms) / 1000), (long long)((now_ms - x->last_ms) / 1000),
        x->in.len, x->in.cap - x->in.len, x->slot_head ? 1 : 0, x->out.cap + x->pend.cap,
        sizeof(*x) + x->in.cap + x->out.cap + x->pend.cap, x->last_cmd[0] ? x->last_cmd : "NULL");
}

void srv_client(struct conn *c, struct req *req)
{
    const struct arg *sub = &req->argv[1];
    struct reply r;
    if (rk_eqi(sub->p, sub->len, "id") && req->argc == 2) {
        conn_reply_begin(c, &r, req->proto, req->crlf);
        reply_int(&r, (long long)c->id);
        conn_reply_end(c, &r);
    } else if (rk_eqi(sub->p, sub->len, "setname") && req->argc == 3) {
        if (!valid_client_name(&req->argv[2])) {
            reply_now_error(c, req,
                            "ERR Client names cannot contain spaces, newlines or special "
                            "characters.");
            return;
        }
        set_name(c, &req->argv[2]);
        reply_now_ok(c, req);
    } else if (rk_eqi(sub->p, sub->len, "getname") && req->argc == 2) {
        conn_reply_begin(c, &r, req->proto, req->crlf);
        if (c->name)
            reply_bulk_cstr(&r, c->name);
        else
            reply_nil(&r);
        conn_reply_end(c, &r);
    } else if (rk_eqi(sub->p, sub->len, "list") &&
               (req->argc == 2 ||
                (req->argc == 4 && rk_eqi(req->argv[2].p, req->argv[2].len, "type")))) {
        dispatch_client_list(c, req);
    } else if (rk_eqi(sub->p, sub->len, "info") && req->argc == 2) {
        struct buf b = {0};
        conn_describe(c, &b, c->w->now_ms);
        conn_reply_begin(c, &r, req->proto, req->crlf);
        reply_verbatim(&r, b.p, b.len);
        conn_reply_end(c, &r);
        buf_free(&b);
    } else if (rk_eqi(sub->p, sub->len, "setinfo") && req->argc == 4) {
        reply_now_ok(c, req);
    } else if (rk_eqi(sub->p, sub->len, "help")) {
        static const char *lines[] = {
            "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "GETNAME",
            "    Return the name of the current connection.",
            "ID",
            "    Return the ID of the current connection.",
            "INFO",
            "    Return information about the current client connection.",
            "LIST",
            "    Return information about client connections.",
            "SETNAME <name>",
            "    Assign the name <name> to the current connection.",
            "HELP",
            "    Print this help."};
        conn_reply_begin(c, &r, req->proto, req->crlf);
        reply_array(&r, (long)RK_ARRAY_LEN(lines));
        for (size_t i = 0; i < RK_ARRAY_LEN(lines); i++)
            reply_status(&r, lines[i]);
        conn_reply_end(c, &r);
    } else if (rk_eqi(sub->p, sub->len, "id") || rk_eqi(sub->p, sub->len, "setname") ||
               rk_eqi(sub->p, sub->len, "getname") || rk_eqi(sub->p, sub->len, "info") ||
               rk_eqi(sub->p, sub->len, "setinfo")) {
        char lower[16];
        size_t n = sub->len < sizeof(lower) ? sub->len : sizeof(lower) - 1;
        for (size_t i = 0; i < n; i++)
            lower[i] = (char)((sub->p[i] >= 'A' && sub->p[i] <= 'Z') ? sub->p[i] + 32 : sub->p[i]);
        conn_reply_begin(c, &r, req->proto, req->crlf);
        reply_errorf(&r, "ERR wrong number of arguments for 'client|%.*s' command", (int)n, lower);
        conn_reply_end(c, &r);
    } else if (rk_eqi(sub->p, sub->len, "list")) {
        reply_now_error(c, req, RK_ERR_SYNTAX);
    } else {
        unknown_subcommand(c, req, "CLIENT");
    }
}

/* ---- INFO ---------------------------------------------------------------------------------- */

static void human_bytes(char *out, size_t cap, double n)
{
    const char *units = "BKMGTP";
    int u = 0;
    while (n >= 1024 && u < 5) {
        n /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(out, cap, "%.0fB", n);
    else
        snprintf(out, cap, "%.2f%c", n, units[u]);
}

static size_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return rss * (size_t)sysconf(_SC_PAGESIZE);
}

static bool want(int argc, const struct arg *argv, const char *section, bool in_default)
{
    if (argc <= 1)
        return in_default;
    for (int i = 1; i < argc; i++) {
        if (rk_eqi(argv[i].p, argv[i].len, section) || rk_eqi(argv[i].p, argv[i].len, "all") ||
            rk_eqi(argv[i].p, argv[i].len, "everything") ||
            (in_default && rk_eqi(argv[i].p, argv[i].len, "default")))
            return true;
    }
    return false;
}

void srv_info_text(struct buf *b, struct worker *w, int argc, const struct arg *argv)
{
    int64_t now = rk_now_ms();
    bool first = true;
#define SECTION(name)                                                                              \
    do {                                                                                           \
        buf_printf(b, "%s# %s\r\n", first ? "" : "\r\n", name);                                    \
        first = false;                                                                             \
    } while (0)
    if (want(argc, argv, "server", true)) {
        struct utsname u;
        uname(&u);
        SECTION("Server");
        buf_printf(b,
                   "redis_version:%s\r\nringkv_version:%s\r\nredis_mode:standalone\r\n"
                   "os:%s %s %s\r\narch_bits:%d\r\nmultiplexing_api:io_uring\r\n"
                   "process_id:%d\r\nrun_id:%s\r\ntcp_port:%d\r\nserver_time_usec:%lld\r\n"
                   "uptime_in_seconds:%lld\r\nuptime_in_days:%lld\r\nhz:10\r\nexecutable:%s\r\n"
                   "config_file:%s\r\nio_threads_active:0\r\nworker_threads:%d\r\nshards:%u\r\n"
                   "io_uring_flags:%s%s\r\n",
                   REDIS_COMPAT_VERSION, RINGKV_VERSION, u.sysname, u.release, u.machine,
                   (int)(sizeof(void *) * 8), (int)getpid(), srv.run_id, cfg.port,
                   (long long)rk_now_us(), (long long)(now - srv.start_ms) / 1000,
                   (long long)(now - srv.start_ms) / 86400000, srv.executable, cfg.config_file,
                   srv.nworkers, srv.nshards,
                   (srv.ring_flags & IORING_SETUP_DEFER_TASKRUN)  ? "single_issuer,defer_taskrun"
                   : (srv.ring_flags & IORING_SETUP_COOP_TASKRUN) ? "coop_taskrun"
                                                                  : "none",
                   srv.use_msg_ring ? ",msg_ring" : ",eventfd");
    }
    uint64_t clients = 0;
    for (int i = 0; i < srv.nworkers; i++)
        clients += STAT_GET(srv.workers[i], connected_clients);
    if (want(argc, argv, "clients", true)) {
        SECTION("Clients");
        buf_printf(b, "connected_clients:%llu\r\nmaxclients:%lld\r\nblocked_clients:0\r\n",
                   (unsigned long long)clients, cfg_maxclients());
    }
    if (want(argc, argv, "memory", true)) {
        size_t used = 0;
        for (uint32_t s = 0; s < srv.nshards; s++)
            used += shard_mem(srv.shards[s]);
        size_t rss = rss_bytes();
        char h1[32], h2[32];
        human_bytes(h1, sizeof(h1), (double)used);
        human_bytes(h2, sizeof(h2), (double)rss);
        SECTION("Memory");
        buf_printf(b,
                   "used_memory:%zu\r\nused_memory_human:%s\r\nused_memory_rss:%zu\r\n"
                   "used_memory_rss_human:%s\r\nmaxmemory:0\r\nmaxmemory_human:0B\r\n"
                   "maxmemory_policy:noeviction\r\nmem_allocator:libc\r\n",
                   used, h1, rss, h2);
    }
    if (want(argc, argv, "stats", true)) {
        struct worker_stats sum = {0};
        uint64_t hits = 0, misses = 0, expired = 0;
        for (int i = 0; i < srv.nworkers; i++) {
            struct worker *w = srv.workers[i];
#define X(f) sum.f += STAT_GET(w, f);
            WORKER_STATS(X)
#undef X
            hits += __atomic_load_n(&w->ks.keyspace_hits, __ATOMIC_RELAXED);
            misses += __atomic_load_n(&w->ks.keyspace_misses, __ATOMIC_RELAXED);
            expired += __atomic_load_n(&w->ks.expired_keys, __ATOMIC_RELAXED);
        }
        SECTION("Stats");
#define X(f)                                                                                       \
    if (strcmp(#f, "connected_clients") != 0)                                                      \
        buf_printf(b, #f ":%llu\r\n", (unsigned long long)sum.f);
        WORKER_STATS(X)
#undef X
        buf_printf(b,
                   "expired_keys:%llu\r\nevicted_keys:0\r\nkeyspace_hits:%llu\r\n"
                   "keyspace_misses:%llu\r\n",
                   (unsigned long long)expired, (unsigned long long)hits,
                   (unsigned long long)misses);
    }
    if (want(argc, argv, "replication", true)) {
        SECTION("Replication");
        repl_info(b, w);
    }
    if (want(argc, argv, "cpu", true)) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        SECTION("CPU");
        buf_printf(b, "used_cpu_sys:%ld.%06ld\r\nused_cpu_user:%ld.%06ld\r\n",
                   (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec, (long)ru.ru_utime.tv_sec,
                   (long)ru.ru_utime.tv_usec);
    }
    if (want(argc, argv, "keyspace", true)) {
        size_t keys = 0, expires = 0;
        for (uint32_t s = 0; s < srv.nshards; s++) {
            keys += shard_count(srv.shards[s]);
            expires += shard_expires(srv.shards[s]);
        }
        SECTION("Keyspace");
        if (keys)
            buf_printf(b, "db0:keys=%zu,expires=%zu,avg_ttl=0\r\n", keys, expires);
    }
#undef SECTION
}

void srv_info(struct conn *c, struct req *req)
{
    struct buf b = {0};
    srv_info_text(&b, c->w, req->argc, req->argv);
    struct reply r;
    conn_reply_begin(c, &r, req->proto, req->crlf);
    reply_verbatim(&r, b.p ? b.p : "", b.len);
    conn_reply_end(c, &r);
    buf_free(&b);
}

/* ---- CONFIG, COMMAND ----------------------------------------------------------------------- */

static void reply_help(struct conn *c, struct req *req, const char *const *lines, size_t n)
{
    struct reply r;
    conn_reply_begin(c, &r, req->proto, req->crlf);
    reply_array(&r, (long)n);
    for (size_t i = 0; i < n; i++)
        reply_status(&r, lines[i]);
    conn_reply_end(c, &r);
}

void srv_config(struct conn *c, struct req *req)
{
    const struct arg *sub = &req->argv[1];
    struct reply r;
    if (rk_eqi(sub->p, sub->len, "get") || rk_eqi(sub->p, sub->len, "set")) {
        bool get = rk_eqi(sub->p, sub->len, "get");
        conn_reply_begin(c, &r, req->proto, req->crlf);
        if (get)
            config_cmd_get(&r, req->argc - 2, req->argv + 2);
        else
            config_cmd_set(&r, req->argc - 2, req->argv + 2);
        conn_reply_end(c, &r);
    } else if (rk_eqi(sub->p, sub->len, "resetstat") && req->argc == 2) {
        for (int i = 0; i < srv.nworkers; i++) {
            struct worker *w = srv.workers[i];
#define X(f)                                                                                       \
    if (strcmp(#f, "connected_clients") != 0)                                                      \
        __atomic_store_n(&w->stats.f, 0, __ATOMIC_RELAXED);
            WORKER_STATS(X)
#undef X
            __atomic_store_n(&w->ks.keyspace_hits, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&w->ks.keyspace_misses, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&w->ks.expired_keys, 0, __ATOMIC_RELAXED);
            /* A replica's apply-lag histogram (INFO apply_lag_*) starts over too. */
            for (int b = 0; b < REPL_LAG_BUCKETS; b++)
                __atomic_store_n(&w->lag_hist[b], 0, __ATOMIC_RELAXED);
        }
        reply_now_ok(c, req);
    } else if (rk_eqi(sub->p, sub->len, "help") && req->argc == 2) {
        static const char *const lines[] = {
            "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "GET <pattern>",
            "    Return parameters matching the glob-like <pattern> and their values.",
            "SET <directive> <value>",
            "    Set the configuration <directive> to <value>.",
            "RESETSTAT",
            "    Reset statistics reported by the INFO command.",
            "HELP",
            "    Print this help."};
        reply_help(c, req, lines, RK_ARRAY_LEN(lines));
    } else if (rk_eqi(sub->p, sub->len, "rewrite") && req->argc == 2) {
        reply_now_error(c, req,
                        cfg.config_file[0] ? "ERR CONFIG REWRITE is not supported by ringkv"
                                           : "ERR The server is running without a config file");
    } else {
        unknown_subcommand(c, req, "CONFIG");
    }
}

static void command_info(struct reply *r, const struct cmd_spec *k)
{
    static const struct {
        uint32_t flag;
        const char *name;
    } flagnames[] = {{CMD_WRITE, "write"}, {CMD_READONLY, "readonly"}, {CMD_DENYOOM, "denyoom"},
                     {CMD_ADMIN, "admin"}, {CMD_NOAUTH, "no_auth"},    {CMD_STALE, "stale"},
                     {CMD_FAST, "fast"}};
    reply_array(r, 10);
    reply_bulk_cstr(r, k->name);
    reply_int(r, k->arity);
    long nf = 0;
    for (size_t i = 0; i < RK_ARRAY_LEN(flagnames); i++)
        nf += (k->flags & flagnames[i].flag) != 0;
    reply_array(r, nf);
    for (size_t i = 0; i < RK_ARRAY_LEN(flagnames); i++)
        if (k->flags & flagnames[i].flag)
            reply_status(r, flagnames[i].name);
    reply_int(r, k->first_key);
    reply_int(r, k->last_key);
    reply_int(r, k->key_step);
    char cat[32];
    snprintf(cat, sizeof(cat), "@%s", k->group);
    bool rw = k->flags & (CMD_WRITE | CMD_READONLY);
    reply_array(r, rw ? 2 : 1);
    if (rw)
        reply_status(r, (k->flags & CMD_WRITE) ? "@write" : "@read");
    reply_status(r, cat);
    reply_array(r, 0); /* tips */
    reply_array(r, 0); /* key specs */
    reply_array(r, 0); /* subcommands */
}

static void command_docs(struct reply *r, const struct cmd_spec *k)
{
    reply_bulk_cstr(r, k->name);
    reply_array(r, 6);
    reply_bulk_cstr(r, "summary");
    reply_bulk_cstr(r, k->summary);
    reply_bulk_cstr(r, "since");
    reply_bulk_cstr(r, k->since);
    reply_bulk_cstr(r, "group");
    reply_bulk_cstr(r, k->group);
}

void srv_command(struct conn *c, struct req *req)
{
    size_t n;
    const struct cmd_spec *all = dispatch_commands(&n);
    struct reply r;
    const struct arg *sub = req->argc > 1 ? &req->argv[1] : NULL;
    if (sub && rk_eqi(sub->p, sub->len, "count") && req->argc == 2) {
        conn_reply_begin(c, &r, req->proto, req->crlf);
        reply_int(&r, (long long)n);
    } else if (!sub || rk_eqi(sub->p, sub->len, "info")) {
        conn_reply_begin(c, &r, req->proto, req->crlf);
        if (req->argc <= 2) {
            reply_array(&r, (long)n);
            for (size_t i = 0; i < n; i++)
                command_info(&r, &all[i]);
        } else {
            reply_array(&r, req->argc - 2);
            for (int i = 2; i < req->argc; i++) {
                const struct cmd_spec *k = dispatch_lookup(req->argv[i].p, req->argv[i].len);
                if (k)
                    command_info(&r, k);
                else
                    reply_nil_array(&r);
            }
        }
    } else if (rk_eqi(sub->p, sub->len, "docs")) {
        conn_reply_begin(c, &r, req->proto, req->crlf);
        if (req->argc == 2) {
            reply_array(&r, (long)n * 2);
            for (size_t i = 0; i < n; i++)
                command_docs(&r, &all[i]);
        } else {
            long found = 0;
            for (int i = 2; i < req->argc; i++)
                found += dispatch_lookup(req->argv[i].p, req->argv[i].len) != NULL;
            reply_array(&r, found * 2);
            for (int i = 2; i < req->argc; i++) {
                const struct cmd_spec *k = dispatch_lookup(req->argv[i].p, req->argv[i].len);
                if (k)
                    command_docs(&r, k);
            }
        }
    } else if (rk_eqi(sub->p, sub->len, "help") && req->argc == 2) {
        static const char *const lines[] = {
            "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "(no subcommand)",
            "    Return details about all commands.",
            "COUNT",
            "    Return the total number of commands in this server.",
            "LIST",
            "    Return a list of all commands in this server.",
            "INFO [<command-name> ...]",
            "    Return details about multiple commands.",
            "DOCS [<command-name> ...]",
            "    Return documentation details about multiple commands.",
            "HELP",
            "    Print this help."};
        reply_help(c, req, lines, RK_ARRAY_LEN(lines));
        return;
    } else if (rk_eqi(sub->p, sub->len, "list") && req->argc == 2) {
        conn_reply_begin(c, &r, req->proto, req->crlf);
        reply_array(&r, (long)n);
        for (size_t i = 0; i < n; i++)
            reply_bulk_cstr(&r, all[i].name);
    } else {
        unknown_subcommand(c, req, "COMMAND");
        return;
    }
    conn_reply_end(c, &r);
}

/* ---- SHUTDOWN, DEBUG ----------------------------------------------------------------------- */

void srv_shutdown(struct conn *c, struct req *req)
{
    for (int i = 1; i < req->argc; i++) {
        const struct arg *a = &req->argv[i];
        if (!rk_eqi(a->p, a->len, "nosave") && !rk_eqi(a->p, a->len, "save") &&
            !rk_eqi(a->p, a->len, "now") && !rk_eqi(a->p, a->len, "force")) {
            reply_now_error(c, req, RK_ERR_SYNTAX);
            return;
        }
    }
    rk_log(RK_LOG_WARNING, "User requested shutdown...");
    server_request_stop();
    c->close_after_reply = true;
    conn_mark_dirty(c);
}

void srv_debug(struct conn *c, struct req *req)
{
    const struct arg *sub = &req->argv[1];
    if (rk_eqi(sub->p, sub->len, "digest") && req->argc == 2) {
        dispatch_shards(c, req, ks_digest_shard, COMB_DIGEST, req->argc, req->argv, 0);
    } else if (rk_eqi(sub->p, sub->len, "help")) {
        struct reply r;
        conn_reply_begin(c, &r, req->proto, req->crlf);
        reply_array(&r, 3);
        reply_status(&r, "DEBUG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:");
        reply_status(&r, "DIGEST");
        reply_status(&r, "    Output a hex signature representing the current DB content.");
        conn_reply_end(c, &r);
    } else {
        unknown_subcommand(c, req, "DEBUG");
    }
}

void srv_wait(struct conn *c, struct req *req)
{
    long long need, timeout;
    if (rk_str2ll(req->argv[1].p, req->argv[1].len, &need) < 0 ||
        rk_str2ll(req->argv[2].p, req->argv[2].len, &timeout) < 0) {
        reply_now_error(c, req, RK_ERR_NOTINT);
        return;
    }
    if (timeout < 0) {
        reply_now_error(c, req, "ERR timeout is negative");
        return;
    }
    if (timeout > INT64_MAX - c->w->now_ms) {
        reply_now_error(c, req, "ERR timeout is out of range");
        return;
    }
    if (repl_is_replica()) {
        reply_now_error(c, req,
                        "ERR WAIT cannot be used with replica instances. Please also "
                        "note that since Redis 4.0 if a replica is configured to be "
                        "writable (which is not the default) writes to replicas are "
                        "just local and are not propagated.");
        return;
    }
    dispatch_wait(c, req, need, timeout);
}
