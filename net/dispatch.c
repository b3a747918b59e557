/*
 * dispatch: parse, look up, check, route, run, combine.
 *
 * THE PATH OF A REQUEST.  Bytes arrive on the connection's worker A.  dispatch_input parses
 * every complete request in them (net/proto.c, zero-copy: argv points into the receive
 * buffer) and for each one looks up the command, checks arity and authentication, and routes
 * it:
 *
 *   - its key's shard belongs to A: the command runs at once, and the reply is appended to
 *     the connection's output (or to a slot, if an earlier reply is still outstanding);
 *   - the shard belongs to worker B: A copies the arguments into its xring to B (struct
 *     xm_req) and queues a slot for the reply.  B runs the command in its next pass and
 *     writes the reply bytes back into its xring to A (struct xm_rep); A puts them in the slot,
 *     and in the output once every earlier reply is there (net/conn.c).
 *
 * Because each xring is FIFO and a connection's requests are routed in order, the requests of
 * one connection reach each shard in the order the client sent them: "SET k v" followed by
 * "GET k" always sees v, wherever k lives.
 *
 * Multi-key commands become one single-key command per key, so each key's part is atomic
 * within its shard; MGET's, DEL's and MSET's parts are combined in key order.  MSETNX checks
 * every key first (phase 1) and sets them all only if none exists (phase 2: plain sets, so a
 * key named twice ends with its last value, as in Redis); between the phases another client
 * may write one of the keys: MSETNX is atomic only when all its keys share a shard.
 */
#include "net/dispatch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/cmd_server.h"
#include "net/config.h"
#include "net/repl.h"

/* A request posted to another worker.  The argument lengths follow, then their bytes. */
struct xm_req {
    struct conn *conn; /* the requester's; only the requester dereferences it */
    struct slot *slot;
    ks_cmd_fn *fn;
    uint64_t hash;
    uint32_t shard;
    int32_t part;
    uint8_t proto, crlf;
    uint32_t argc;
    uint32_t lens[];
};

/* ---- the command table ----------------------------------------------------------------- */

#define W_ CMD_WRITE | CMD_DENYOOM
#define R_ CMD_READONLY
#define KEY1 1, 1, 1

static const struct cmd_spec commands[] = {
    /* name, arity, flags, route, comb, step, ks, srv, first, last, step, group, since, summary */
    {"get", 2, R_ | CMD_FAST, ROUTE_KEY, 0, 0, ks_get, NULL, KEY1, "string", "1.0.0",
     "Get the value of a key"},
    {"set", -3, W_, ROUTE_KEY, 0, 0, ks_set, NULL, KEY1, "string", "1.0.0",
     "Set the string value of a key"},
    {"setnx", 3, W_ | CMD_FAST, ROUTE_KEY, 0, 0, ks_setnx, NULL, KEY1, "string", "1.0.0",
     "Set the value of a key, only if the key does not exist"},
    {"setex", 4, W_, ROUTE_KEY, 0, 0, ks_setex, NULL, KEY1, "string", "2.0.0",
     "Set the value and expiration of a key"},
    {"psetex", 4, W_, ROUTE_KEY, 0, 0, ks_psetex, NULL, KEY1, "string", "2.6.0",
     "Set the value and expiration in milliseconds of a key"},
    {"getset", 3, W_ | CMD_FAST, ROUTE_KEY, 0, 0, ks_getset, NULL, KEY1, "string", "1.0.0",
     "Set the string value of a key and return its old value"},
    {"getdel", 2, CMD_WRITE | CMD_FAST, ROUTE_KEY, 0, 0, ks_getdel, NULL, KEY1, "string", "6.2.0",
     "Get the value of a key and delete the key"},
    {"getex", -2, CMD_WRITE | CMD_FAST, ROUTE_KEY, 0, 0, ks_getex, NULL, KEY1, "string", "6.2.0",
     "Get the value of a key and optionally set its expiration"},
    {"mget", -2, R_ | CMD_FAST, ROUTE_KEYS, COMB_ARRAY, 1, ks_get, NULL, 1, -1, 1, "string",
     "1.0.0", "Get the values of all the given keys"},
    {"mset", -3, W_, ROUTE_KEYS, COMB_OK, 2, ks_mset_one, NULL, 1, -1, 2, "string", "1.0.1",
     "Set multiple keys to multiple values"},
    {"msetnx", -3, W_, ROUTE_KEYS, COMB_MSETNX, 2, ks_exists, NULL, 1, -1, 2, "string", "1.0.1",
     "Set multiple keys to multiple values, only if none of the keys exist"},
    {"del", -2, CMD_WRITE, ROUTE_KEYS, COMB_SUM, 1, ks_del, NULL, 1, -1, 1, "generic", "1.0.0",
     "Delete a key"},
    {"unlink", -2, CMD_WRITE | CMD_FAST, ROUTE_KEYS, COMB_SUM, 1, ks_del, NULL, 1, -1, 1, "generic",
     "4.0.0", "Delete a key asynchronously in another thread"},
    {"exists", -2, R_ | CMD_FAST, ROUTE_KEYS, COMB_SUM, 1, ks_exists, NULL, 1, -1, 1, "generic",
     "1.0.0", "Determine if a key exists"},
    {"touch", -2, R_ | CMD_FAST, ROUTE_KEYS, COMB_SUM, 1, ks_touch, NULL, 1, -1, 1, "generic",
     "3.2.1", "Alters the last access time of a key(s)"},
    {"type", 2, R_ | CMD_FAST, ROUTE_KEY, 0, 0, ks_type, NULL, KEY1, "generic", "1.0.0",
     "Determine the type stored at key"},
    {"incr", 2, W_ | CMD_FAST, ROUTE_KEY, 0, 0, ks_incr, NULL, KEY1, "string", "1.0.0",
     "Increment the integer value of a key by one"},
    {"decr", 2, W_ | CMD_FAST, ROUTE_KEY, 0, 0, ks_decr, NULL, KEY1, "string", "1.0.0",
     "Decrement the integer value of a key by one"},
    {"incrby", 3, W_ | CMD_FAST, ROUTE_KEY, 0, 0, ks_incrby, NULL, KEY1, "string", "1.0.0",
     "Increment the integer value of a key by the given amount"},
    {"decrby", 3, W_ | CMD_FAST, ROUTE_KEY, 0, 0, ks_decrby, NULL, KEY1, "string", "1.0.0",
     "Decrement the integer value of a key by the given number"},
    {"incrbyfloat", 3, W_ | CMD_FAST, ROUTE_KEY, 0, 0, ks_incrbyfloat, NULL, KEY1, "string",
     "2.6.0", "Increment the float value of a key by the given amount"},
    {"append", 3, W_ | CMD_FAST, ROUTE_KEY, 0, 0, ks_append, NULL, KEY1, "string", "2.0.0",
     "Append a value to a key"},
    {"strlen", 2, R_ | CMD_FAST, ROUTE_KEY, 0, 0, ks_strlen, NULL, KEY1, "string", "2.2.0",
     "Get the length of the value stored in a key"},
    {"getrange", 4, R_, ROUTE_KEY, 0, 0, ks_getrange, NULL, KEY1, "string", "2.4.0",
     "Get a substring of the string stored at a key"},
    {"setrange", 4, W_, ROUTE_KEY, 0, 0, ks_setrange, NULL, KEY1, "string", "2.2.0",
     "Overwrite part of a string at key starting at the specified offset"},
    {"expire", -3, CMD_WRITE | CMD_FAST, ROUTE_KEY, 0, 0, ks_expire, NULL, KEY1, "generic", "1.0.0",
     "Set a key's time to live in seconds"},
    {"pexpire", -3, CMD_WRITE | CMD_FAST, ROUTE_KEY, 0, 0, ks_pexpire, NULL, KEY1, "generic",
     "2.6.0", "Set a key's time to live in milliseconds"},
    {"expireat", -3, CMD_WRITE | CMD_FAST, ROUTE_KEY, 0, 0, ks_expireat, NULL, KEY1, "generic",
     "1.2.0", "Set the expiration for a key as a UNIX timestamp"},
    {"pexpireat", -3, CMD_WRITE | CMD_FAST, ROUTE_KEY, 0, 0, ks_pexpireat, NULL, KEY1, "generic",
     "2.6.0", "Set the expiration for a key as a UNIX timestamp specified in ms"},
    {"ttl", 2, R_ | CMD_FAST, ROUTE_KEY, 0, 0, ks_ttl, NULL, KEY1, "generic", "1.0.0",
     "Get the time to live for a key in seconds"},
    {"pttl", 2, R_ | CMD_FAST, ROUTE_KEY, 0, 0, ks_pttl, NULL, KEY1, "generic", "2.6.0",
     "Get the time to live for a key in milliseconds"},
    {"persist", 2, CMD_WRITE | CMD_FAST, ROUTE_KEY, 0, 0, ks_persist, NULL, KEY1, "generic",
     "2.2.0", "Remove the expiration from a key"},
    {"dbsize", 1, R_ | CMD_FAST, ROUTE_LOCAL, 0, 0, NULL, srv_dbsize, 0, 0, 0, "server", "1.0.0",
     "Return the number of keys in the selected database"},
    {"flushall", -1, CMD_WRITE, ROUTE_LOCAL, 0, 0, NULL, srv_flushall, 0, 0, 0, "server", "1.0.0",
     "Remove all keys from all databases"},
    {"flushdb", -1, CMD_WRITE, ROUTE_LOCAL, 0, 0, NULL, srv_flushall, 0, 0, 0, "server", "1.0.0",
     "Remove all keys from the current database"},
    {"keys", 2, R_, ROUTE_LOCAL, 0, 0, NULL, srv_keys, 0, 0, 0, "generic", "1.0.0",
     "Find all keys matching the given pattern"},
    {"scan", -2, R_, ROUTE_LOCAL, 0, 0, NULL, srv_scan, 0, 0, 0, "generic", "2.8.0",
     "Incrementally iterate the keys space"},
    {"randomkey", 1, R_, ROUTE_LOCAL, 0, 0, NULL, srv_randomkey, 0, 0, 0, "generic", "1.0.0",
     "Return a random key from the keyspace"},
    {"ping", -1, CMD_FAST | CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_ping, 0, 0, 0, "connection",
     "1.0.0", "Ping the server"},
    {"echo", 2, CMD_FAST | CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_echo, 0, 0, 0, "connection",
     "1.0.0", "Echo the given string"},
    {"select", 2, CMD_FAST | CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_select, 0, 0, 0, "connection",
     "1.0.0", "Change the selected database for the current connection"},
    {"auth", -2, CMD_NOAUTH | CMD_FAST | CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_auth, 0, 0, 0,
     "connection", "1.0.0", "Authenticate to the server"},
    {"hello", -1, CMD_NOAUTH | CMD_FAST | CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_hello, 0, 0, 0,
     "connection", "6.0.0", "Handshake with Redis"},
    {"quit", -1, CMD_NOAUTH | CMD_FAST | CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_quit, 0, 0, 0,
     "connection", "1.0.0", "Close the connection"},
    {"client", -2, CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_client, 0, 0, 0, "connection", "2.4.0",
     "A container for client connection commands"},
    {"info", -1, CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_info, 0, 0, 0, "server", "1.0.0",
     "Get information and statistics about the server"},
    {"config", -2, CMD_ADMIN | CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_config, 0, 0, 0, "server",
     "2.0.0", "A container for server configuration commands"},
    {"command", -1, CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_command, 0, 0, 0, "server", "2.8.13",
     "Get array of Redis command details"},
    {"shutdown", -1, CMD_ADMIN | CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_shutdown, 0, 0, 0,
     "server", "1.0.0", "Synchronously save the dataset to disk and then shut down"},
    {"role", 1, CMD_FAST | CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_role, 0, 0, 0, "server",
     "2.8.12", "Return the role of the instance in the context of replication"},
    {"replicaof", 3, CMD_ADMIN | CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_replicaof, 0, 0, 0,
     "server", "5.0.0", "Make the server a replica of another instance, or promote it as master"},
    {"slaveof", 3, CMD_ADMIN | CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_replicaof, 0, 0, 0, "server",
     "1.0.0", "Make the server a replica of another instance, or promote it as master"},
    {"ringkv.shminfo", 1, CMD_ADMIN | CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_shminfo, 0, 0, 0,
     "server", "0.1.0", "Where a same-host replica attaches (Unix socket, host, shards)"},
    {"failover", -1, CMD_ADMIN | CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_failover, 0, 0, 0,
     "server", "7.0.0",
     "Start a coordinated failover between this server and one of its replicas."},
    {"ringkv.psync", -6, CMD_ADMIN | CMD_STALE, ROUTE_LOCAL, 0, 0, NULL, srv_psync, 0, 0, 0,
     "server", "0.2.0", "A TCP replica asks for the replication stream (see docs/REPLICATION.md)"},
    {"wait", 3, 0, ROUTE_LOCAL, 0, 0, NULL, srv_wait, 0, 0, 0, "generic", "3.0.0",
     "Wait for the synchronous replication of all the write commands sent in the context of "
     "the current connection"},
    {"debug", -2, CMD_ADMIN, ROUTE_LOCAL, 0, 0, NULL, srv_debug, 0, 0, 0, "server", "1.0.0",
     "A container for debugging commands"},
};

/* Lookup: an open-addressing table of the lower-case names, built once at start. */
#define LOOKUP_SLOTS 256
static const struct cmd_spec *lookup[LOOKUP_SLOTS];

static unsigned name_hash(const char *s, size_t len)
{
    unsigned h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)(s[i] | 0x20)) * 16777619u;
    return h;
}

/* The keyspace functions of write commands only (none of them also serves a read). */
static ks_cmd_fn *write_fns[RK_ARRAY_LEN(commands)];
static size_t nwrite_fns;

static bool is_write_fn(ks_cmd_fn *fn)
{
    for (size_t i = 0; i < nwrite_fns; i++)
        if (write_fns[i] == fn)
            return true;
    return false;
}

void dispatch_init(void)
{
    _Static_assert(RK_ARRAY_LEN(commands) < LOOKUP_SLOTS / 2, "grow LOOKUP_SLOTS");
    memset(lookup, 0, sizeof(lookup));
    for (size_t i = 0; i < RK_ARRAY_LEN(commands); i++) {
        unsigned h = name_hash(commands[i].name, strlen(commands[i].name));
        while (lookup[h % LOOKUP_SLOTS])
            h++;
        lookup[h % LOOKUP_SLOTS] = &commands[i];
    }
    nwrite_fns = 0;
    for (size_t i = 0; i < RK_ARRAY_LEN(commands); i++) {
        ks_cmd_fn *fn = commands[i].ks;
        if (!fn || !(commands[i].flags & CMD_WRITE) || is_write_fn(fn))
            continue;
        bool reads = false;
        for (size_t j = 0; j < RK_ARRAY_LEN(commands); j++)
            reads |= commands[j].ks == fn && !(commands[j].flags & CMD_WRITE);
        if (!reads)
            write_fns[nwrite_fns++] = fn;
    }
}

const struct cmd_spec *dispatch_commands(size_t *n)
{
    *n = RK_ARRAY_LEN(commands);
    return commands;
}

const struct cmd_spec *dispatch_lookup(const char *name, size_t len)
{
    if (len == 0 || len > 32)
        return NULL;
    unsigned h = name_hash(name, len);
    const struct cmd_spec *c;
    while ((c = lookup[h % LOOKUP_SLOTS])) {
        if (rk_eqi(name, len, c->name))
            return c;
        h++;
    }
    return NULL;
}

/* ---- running keyspace commands ---------------------------------------------------------- */

void dispatch_ks_run(struct worker *w, uint32_t shard, uint64_t hash, ks_cmd_fn *fn, int argc,
                     const struct arg *argv, struct reply *r)
{
    /* A write admitted on another worker just before this server became a replica must not
     * run here unlogged: refuse it as the admitting worker would now. */
    if (repl_is_replica() && is_write_fn(fn)) {
        reply_error(r, "READONLY You can't write against a read only replica.");
        return;
    }
    struct ks_ctx ctx = {
        .shard = srv.shards[shard],
        .hash = hash,
        .shard_idx = shard,
        .shard_bits = srv.shard_bits,
        .now_ms = w->now_ms,
        .r = r,
        .stats = &w->ks,
        .max_string = (uint64_t)cfg_max_bulk(),
        .keep_expired = repl_is_replica(),
    };
    if ((repl_logging() || sync_active()) && !repl_is_replica()) {
        ctx.on_change = repl_on_change;
        ctx.on_change_arg = w;
        w->cur_shard = shard;
    }
    fn(&ctx, argc, argv);
}

/* Post fn(argv) on shard s to its owner; the reply comes back as part `part` of slot sl. */
static void post_request(struct conn *c, struct slot *sl, int part, uint32_t s, uint64_t hash,
                         ks_cmd_fn *fn, int argc, const struct arg *argv, int proto, int crlf)
{
    struct worker *w = c->w, *o = shard_owner(s);
    size_t len = sizeof(struct xm_req) + sizeof(uint32_t) * (size_t)argc;
    for (int i = 0; i < argc; i++)
        len += argv[i].len;
    struct xm_req *m = worker_post(w, o->id, len, XM_REQUEST);
    m->conn = c;
    m->slot = sl;
    m->fn = fn;
    m->hash = hash;
    m->shard = s;
    m->part = part;
    m->proto = (uint8_t)proto;
    m->crlf = (uint8_t)crlf;
    m->argc = (uint32_t)argc;
    char *p = (char *)&m->lens[argc];
    for (int i = 0; i < argc; i++) {
        m->lens[i] = (uint32_t)argv[i].len;
        memcpy(p, argv[i].p, argv[i].len);
        p += argv[i].len;
    }
    c->refs++;
    w->awaiting++;
    STAT_ADD(w, cross_worker_requests, 1);
}

/* Part `part` of slot sl: fn(argv) on shard s, here or on its owner. */
static void run_part(struct conn *c, struct slot *sl, int part, uint32_t s, uint64_t hash,
                     ks_cmd_fn *fn, int argc, const struct arg *argv, int proto, int crlf)
{
    if (shard_owner(s) != c->w) {
        post_request(c, sl, part, s, hash, fn, argc, argv, proto, crlf);
        return;
    }
    if (sync_active() && !repl_is_replica()) {
        struct sync_target t = {.conn = c, .slot = sl, .part = part};
        c->refs++;
        sync_exec(c->w, s, hash, fn, argc, argv, proto, crlf, &t);
        return;
    }
    struct part *pt = &sl->parts[part];
    struct reply r;
    reply_init(&r, &pt->b, proto, crlf);
    dispatch_ks_run(c->w, s, hash, fn, argc, argv, &r);
    pt->ival = r.ival;
    pt->nelem = r.nelem;
    conn_part_done(c, sl, part);
}

void dispatch_prefetch_request(const void *msg, int stage)
{
    const struct xm_req *m = msg;
    if (stage == 0)
        shard_prefetch(srv.shards[m->shard], m->hash);
    else
        shard_prefetch_entry(srv.shards[m->shard], m->hash);
}

void dispatch_remote_request(struct worker *w, int from, const void *msg, size_t len)
{
    const struct xm_req *m = msg;
    rk_assert(len >= sizeof(*m) + sizeof(uint32_t) * m->argc);
    struct arg stackv[8];
    struct arg *argv = m->argc <= 8 ? stackv : rk_malloc(sizeof(struct arg) * m->argc);
    const char *p = (const char *)&m->lens[m->argc];
    for (uint32_t i = 0; i < m->argc; i++) {
        argv[i].p = p;
        argv[i].len = m->lens[i];
        p += m->lens[i];
    }
    rk_assert((size_t)(p - (const char *)msg) == len);
    if (sync_active() && !repl_is_replica()) {
        struct sync_target t = {
            .remote = true, .from = from, .conn = m->conn, .slot = m->slot, .part = m->part};
        sync_exec(w, m->shard, m->hash, m->fn, (int)m->argc, argv, m->proto, m->crlf, &t);
        if (argv != stackv)
            rk_free(argv);
        return;
    }
    struct reply r;
    w->scratch.len = 0;
    reply_init(&r, &w->scratch, m->proto, m->crlf);
    dispatch_ks_run(w, m->shard, m->hash, m->fn, (int)m->argc, argv, &r);
    if (argv != stackv)
        rk_free(argv);
    struct xm_rep *rp = worker_post(w, from, sizeof(*rp) + w->scratch.len, XM_REPLY);
    rp->conn = m->conn;
    rp->slot = m->slot;
    rp->ival = r.ival;
    rp->nelem = r.nelem;
    rp->part = m->part;
    rp->blen = (uint32_t)w->scratch.len;
    if (w->scratch.len)
        memcpy(rp->bytes, w->scratch.p, w->scratch.len);
    if (w->scratch.cap > (1u << 20))
        buf_free(&w->scratch);
}

/* A part's reply from another worker (len: the record's bytes from rp on); ps or NULL. */
static void remote_reply(struct worker *w, const struct xm_rep *rp, size_t len,
                         const struct part_sync *ps)
{
    rk_assert(len == sizeof(*rp) + rp->blen);
    struct conn *c = rp->conn;
    rk_assert(c->w == w);
    c->refs--;
    w->awaiting--;
    conn_part_deliver(c, rp->slot, rp->part, rp->bytes, rp->blen, rp->ival, rp->nelem, ps);
    conn_release(c);
}

void dispatch_remote_reply(struct worker *w, const void *msg, size_t len)
{
    remote_reply(w, msg, len, NULL);
}

void dispatch_remote_reply_sync(struct worker *w, const void *msg, size_t len)
{
    const struct part_sync *ps = msg;
    rk_assert(len >= sizeof(*ps));
    remote_reply(w, (const struct xm_rep *)(ps + 1), len - sizeof(*ps), ps);
}

/* ---- fan-out -------------------------------------------------------------------------------- */

void dispatch_shards(struct conn *c, struct req *req, ks_cmd_fn *fn, int comb, int argc,
                     const struct arg *argv, int start)
{
    int proto = comb == COMB_FIRST ? PROTO_RESP : req->proto;
    struct slot *sl = conn_slot_new(c, (int)srv.nshards, comb, req->proto, req->crlf);
    sl->phase = start;
    sl->remaining++; /* hold: parts that finish here must not complete it mid-loop */
    for (uint32_t s = 0; s < srv.nshards; s++)
        run_part(c, sl, (int)s, s, 0, fn, argc, argv, proto, req->crlf);
    conn_part_done(c, sl, -1);
}

void dispatch_shard(struct conn *c, struct req *req, uint32_t s, ks_cmd_fn *fn, int argc,
                    const struct arg *argv)
{
    if (shard_owner(s) == c->w && !sync_active()) {
        struct reply r;
        conn_reply_begin(c, &r, req->proto, req->crlf);
        dispatch_ks_run(c->w, s, 0, fn, argc, argv, &r);
        conn_reply_end(c, &r);
        return;
    }
    struct slot *sl = conn_slot_new(c, 1, COMB_ONE, req->proto, req->crlf);
    sl->remaining++;
    run_part(c, sl, 0, s, 0, fn, argc, argv, req->proto, req->crlf);
    conn_part_done(c, sl, -1);
}

/* Run argv's per-key command for each key (step arguments per key) as parts of slot sl. */
static void run_keys(struct conn *c, struct slot *sl, ks_cmd_fn *fn, int step, int argc,
                     const struct arg *argv, int proto, int crlf)
{
    sl->remaining++; /* hold */
    for (int i = 1, part = 0; i + step - 1 < argc; i += step, part++) {
        struct arg sub[3] = {argv[0], argv[i], step > 1 ? argv[i + 1] : argv[i]};
        uint64_t h = kv_hash(argv[i].p, argv[i].len);
        run_part(c, sl, part, kv_shard_of(h, srv.shard_bits), h, fn, step + 1, sub, proto, crlf);
    }
    conn_part_done(c, sl, -1);
}

static void route_keys(struct conn *c, struct req *req, const struct cmd_spec *cmd)
{
    int nkeys = (req->argc - 1) / cmd->step;
    struct slot *sl = conn_slot_new(c, nkeys, cmd->comb, req->proto, req->crlf);
    sl->part_is_elem = true;
    if (cmd->comb == COMB_MSETNX) {
        /* Phase 2 needs the arguments after this request's buffer is gone: keep a copy. */
        size_t total = 0;
        for (int i = 0; i < req->argc; i++)
            total += req->argv[i].len;
        sl->argmem = rk_malloc(total ? total : 1);
        sl->argv = rk_malloc(sizeof(struct arg) * (size_t)req->argc);
        sl->argc = req->argc;
        char *p = sl->argmem;
        for (int i = 0; i < req->argc; i++) {
            memcpy(p, req->argv[i].p, req->argv[i].len);
            sl->argv[i].p = p;
            sl->argv[i].len = req->argv[i].len;
            p += req->argv[i].len;
        }
        sl->phase = 1;
    }
    run_keys(c, sl, cmd->ks, cmd->step, req->argc, req->argv, req->proto, req->crlf);
}

static const char hexdig[] = "0123456789abcdef";

bool dispatch_combine(struct conn *c, struct slot *s)
{
    struct reply r;
    reply_init(&r, &s->out, s->proto, s->crlf);
    /* Semi/sync writes not confirmed in time under sync-fallback error: the reply is the
     * error, whether one part timed out or the parts' replicas were not the same ones. */
    if (s->sync_failed && cfg_sync_fallback() == FALLBACK_ERROR) {
        sync_norepl(&r);
        return true;
    }
    if (s->sync_unblocked) {
        /* Redis's answer to a WAIT blocked when its server turns into a replica. */
        reply_error(&r, "UNBLOCKED force unblock from blocking operation, instance state "
                        "changed (master -> replica?)");
        return true;
    }
    /* A part refused under sync-fallback error is the reply, where the combined reply would
     * not carry the parts' own bytes. */
    if (s->comb == COMB_OK || s->comb == COMB_SUM || s->comb == COMB_MSETNX) {
        for (int i = 0; i < s->nparts; i++) {
            if (s->parts[i].ps.refused) {
                buf_append(&s->out, s->parts[i].b.p, s->parts[i].b.len);
                return true;
            }
        }
    }
    switch (s->comb) {
    case COMB_ONE:
        if (s->nparts) {
            struct buf t = s->out;
            s->out = s->parts[0].b;
            s->parts[0].b = t;
        }
        break;
    case COMB_ARRAY: {
        long n = 0;
        for (int i = 0; i < s->nparts; i++)
            n += s->part_is_elem ? 1 : s->parts[i].nelem;
        reply_array(&r, n);
        for (int i = 0; i < s->nparts; i++)
            buf_append(&s->out, s->parts[i].b.p, s->parts[i].b.len);
        break;
    }
    case COMB_SUM: {
        long long sum = 0;
        for (int i = 0; i < s->nparts; i++)
            sum += s->parts[i].ival;
        reply_int(&r, sum);
        break;
    }
    case COMB_OK:
        reply_ok(&r);
        break;
    case COMB_WAIT:
        reply_int(&r, s->wait_count);
        break;
    case COMB_DIGEST: {
        uint8_t acc[KS_DIGEST_LEN] = {0};
        for (int i = 0; i < s->nparts; i++) {
            rk_assert(s->parts[i].b.len == KS_DIGEST_LEN);
            ks_digest_combine(acc, (const uint8_t *)s->parts[i].b.p);
        }
        char hex[KS_DIGEST_LEN * 2];
        for (int i = 0; i < KS_DIGEST_LEN; i++) {
            hex[2 * i] = hexdig[acc[i] >> 4];
            hex[2 * i + 1] = hexdig[acc[i] & 15];
        }
        reply_status_len(&r, hex, sizeof(hex));
        break;
    }
    case COMB_FIRST: {
        /* Parts are RESP: "$-1\r\n" or "$<n>\r\n<bytes>\r\n". */
        bool found = false;
        for (int k = 0; k < s->nparts && !found; k++) {
            /* Start at a random shard (s->phase) so no shard is favoured. */
            const struct buf *b = &s->parts[(k + s->phase) % s->nparts].b;
            if (b->len < 4 || b->p[0] != '$' || b->p[1] == '-')
                continue;
            const char *nl = memchr(b->p, '\n', b->len);
            rk_assert(nl != NULL);
            size_t hdr = (size_t)(nl - b->p) + 1;
            reply_bulk(&r, b->p + hdr, b->len - hdr - 2);
            found = true;
        }
        if (!found)
            reply_nil(&r);
        break;
    }
    case COMB_MSETNX: {
        if (s->phase == 1) {
            long long exists = 0;
            for (int i = 0; i < s->nparts; i++)
                exists += s->parts[i].ival;
            if (exists == 0) {
                s->phase = 2;
                for (int i = 0; i < s->nparts; i++) {
                    buf_free(&s->parts[i].b);
                    s->parts[i].done = false;
                }
                s->remaining = s->nparts;
                run_keys(c, s, ks_mset_one, 2, s->argc, s->argv, PROTO_RESP, 0);
                return false;
            }
            reply_int(&r, 0);
        } else {
            reply_int(&r, 1);
        }
        break;
    }
    case COMB_TEXT: {
        size_t total = 0;
        for (int i = 0; i < s->nparts; i++)
            total += s->parts[i].b.len;
        struct buf t = {0};
        buf_reserve(&t, total);
        for (int i = 0; i < s->nparts; i++)
            buf_append(&t, s->parts[i].b.p, s->parts[i].b.len);
        reply_verbatim(&r, t.p, t.len);
        buf_free(&t);
        break;
    }
    }
    return true;
}

/* ---- CLIENT LIST across workers ------------------------------------------------------------ */

struct xm_clist {
    struct conn *conn;
    struct slot *slot;
    int32_t part;
};

static void list_conns(struct worker *w, struct buf *b)
{
    for (struct conn *x = w->conns; x; x = x->next)
        if (!x->closing)
            conn_describe(x, b, w->now_ms);
}

void dispatch_client_list(struct conn *c, struct req *req)
{
    struct slot *sl = conn_slot_new(c, srv.nworkers, COMB_TEXT, req->proto, req->crlf);
    sl->remaining++;
    for (int i = 0; i < srv.nworkers; i++) {
        if (i == c->w->id) {
            list_conns(c->w, &sl->parts[i].b);
            conn_part_done(c, sl, i);
            continue;
        }
        struct xm_clist *m = worker_post(c->w, i, sizeof(*m), XM_CLIENT_LIST);
        m->conn = c;
        m->slot = sl;
        m->part = i;
        c->refs++;
    }
    conn_part_done(c, sl, -1);
}

static void remote_client_list(struct worker *w, int from, const struct xm_clist *m)
{
    w->scratch.len = 0;
    list_conns(w, &w->scratch);
    struct xm_rep *rp = worker_post(w, from, sizeof(*rp) + w->scratch.len, XM_REPLY);
    rp->conn = m->conn;
    rp->slot = m->slot;
    rp->ival = 0;
    rp->nelem = 0;
    rp->part = m->part;
    rp->blen = (uint32_t)w->scratch.len;
    if (w->scratch.len)
        memcpy(rp->bytes, w->scratch.p, w->scratch.len);
}

struct xm_wait {
    struct conn *conn;
    struct slot *slot;
    int32_t part;
    uint32_t shard;
};

void dispatch_wait(struct conn *c, struct req *req, long long need, long long timeout_ms)
{
    struct slot *sl = conn_slot_new(c, (int)srv.nshards, COMB_WAIT, req->proto, req->crlf);
    sl->wait_need = need;
    sl->wait_deadline = timeout_ms > 0 && timeout_ms <= INT64_MAX - c->w->now_ms
                            ? c->w->now_ms + timeout_ms
                            : INT64_MAX;
    sl->remaining++;
    for (uint32_t s = 0; s < srv.nshards; s++) {
        struct worker *o = shard_owner(s);
        if (o == c->w) {
            struct sync_target t = {.conn = c, .slot = sl, .part = (int)s};
            c->refs++;
            sync_wait_part(c->w, s, &t);
            continue;
        }
        struct xm_wait *m = worker_post(c->w, o->id, sizeof(*m), XM_WAIT);
        m->conn = c;
        m->slot = sl;
        m->part = (int32_t)s;
        m->shard = s;
        c->refs++;
    }
    conn_part_done(c, sl, -1);
}

void dispatch_remote_other(struct worker *w, int from, uint32_t type, const void *msg, size_t len)
{
    if (type == XM_WAIT) {
        rk_assert(len == sizeof(struct xm_wait));
        const struct xm_wait *m = msg;
        struct sync_target t = {
            .remote = true, .from = from, .conn = m->conn, .slot = m->slot, .part = m->part};
        sync_wait_part(w, m->shard, &t);
    } else if (type == XM_CLIENT_LIST) {
        rk_assert(len == sizeof(struct xm_clist));
        remote_client_list(w, from, msg);
    } else {
        dispatch_remote_request(w, from, msg, len);
    }
}

/* ---- the request path ---------------------------------------------------------------------- */

static void execute(struct conn *c, struct req *req)
{
    struct worker *w = c->w;
    STAT_ADD(w, total_commands_processed, 1);
    const struct cmd_spec *cmd = dispatch_lookup(req->argv[0].p, req->argv[0].len);
    struct reply r;
    if (!cmd) {
        conn_reply_begin(c, &r, req->proto, req->crlf);
        reply_error_unknown(&r, req->argv, req->argc);
        conn_reply_end(c, &r);
        return;
    }
    size_t nl = strlen(cmd->name);
    memcpy(c->last_cmd, cmd->name, nl < sizeof(c->last_cmd) ? nl + 1 : sizeof(c->last_cmd));
    if ((cmd->arity > 0 && req->argc != cmd->arity) || req->argc < -cmd->arity ||
        (cmd->route == ROUTE_KEYS && (req->argc - 1) % cmd->step != 0)) {
        conn_reply_begin(c, &r, req->proto, req->crlf);
        reply_error_arity(&r, cmd->name);
        conn_reply_end(c, &r);
        return;
    }
    if (!c->authed && !(cmd->flags & CMD_NOAUTH)) {
        if (cfg_requirepass()[0] == '\0') {
            c->authed = true; /* the password was removed at run time */
        } else {
            conn_reply_begin(c, &r, req->proto, req->crlf);
            reply_error(&r, RK_ERR_NOAUTH);
            conn_reply_end(c, &r);
            return;
        }
    }
    if ((cmd->flags & CMD_WRITE) && repl_logging() && !repl_is_replica()) {
        /* A write whose arguments could not fit in one log record would leave replicas
         * behind: refuse it up front (repl-ring-size sets the limit). */
        size_t total = 0;
        for (int i = 1; i < req->argc; i++)
            total += req->argv[i].len;
        if (total > ring_max_payload(&repl.log) - 64) {
            conn_reply_begin(c, &r, req->proto, req->crlf);
            reply_errorf(&r,
                         "ERR the write is too large for the replication log (%zu bytes; "
                         "raise repl-ring-size)",
                         total);
            conn_reply_end(c, &r);
            return;
        }
    }
    if ((cmd->flags & CMD_WRITE) && repl_is_replica()) {
        conn_reply_begin(c, &r, req->proto, req->crlf);
        reply_error(&r, "READONLY You can't write against a read only replica.");
        conn_reply_end(c, &r);
        return;
    }
    if ((cmd->flags & CMD_WRITE) && __atomic_load_n(&repl.writes_paused, __ATOMIC_ACQUIRE)) {
        conn_reply_begin(c, &r, req->proto, req->crlf);
        reply_error(&r, "TRYAGAIN writes are paused while a FAILOVER hands over to a replica");
        conn_reply_end(c, &r);
        return;
    }
    switch (cmd->route) {
    case ROUTE_KEY: {
        uint64_t h = kv_hash(req->argv[1].p, req->argv[1].len);
        uint32_t s = kv_shard_of(h, srv.shard_bits);
        if (shard_owner(s) == w && !sync_active()) {
            conn_reply_begin(c, &r, req->proto, req->crlf);
            dispatch_ks_run(w, s, h, cmd->ks, req->argc, req->argv, &r);
            conn_reply_end(c, &r);
        } else if (shard_owner(s) == w) {
            struct slot *sl = conn_slot_new(c, 1, COMB_ONE, req->proto, req->crlf);
            sl->remaining++;
            run_part(c, sl, 0, s, h, cmd->ks, req->argc, req->argv, req->proto, req->crlf);
            conn_part_done(c, sl, -1);
        } else {
            struct slot *sl = conn_slot_new(c, 1, COMB_ONE, req->proto, req->crlf);
            post_request(c, sl, 0, s, h, cmd->ks, req->argc, req->argv, req->proto, req->crlf);
        }
        break;
    }
    case ROUTE_KEYS:
        route_keys(c, req, cmd);
        break;
    default:
        cmd->srv(c, req);
        break;
    }
}

static void protocol_error(struct conn *c, ssize_t err, int line)
{
    char buf[128];
    struct reply r;
    const char *msg = proto_strerror(err, &c->ps, buf, sizeof(buf));
    conn_reply_begin(c, &r, line ? PROTO_LINE : PROTO_RESP, 1);
    reply_errorf(&r, "ERR %s", msg);
    conn_reply_end(c, &r);
    rk_log(RK_LOG_VERBOSE, "protocol error from client %s: %s", c->addr, msg);
    c->close_after_reply = true;
    conn_mark_dirty(c);
}

void dispatch_input(struct conn *c, const char *data, size_t len)
{
    bool direct = c->in.len == 0;
    const char *p = data;
    size_t n = len;
    if (!direct) {
        buf_append(&c->in, data, len);
        p = c->in.p;
        n = c->in.len;
    }
    struct proto_limits lim = {
        .max_bulk = (size_t)cfg_max_bulk(), .max_inline = 64 * 1024, .max_mbulk = 1024 * 1024};
    size_t off = 0;
    while (off < n && !c->closing && !c->close_after_reply) {
        ssize_t rc = proto_parse(&c->ps, p + off, n - off, &lim, &c->req);
        if (rc == PROTO_NEED)
            break;
        if (rc < 0) {
            protocol_error(c, rc, p[off] != '*');
            off = n;
            proto_state_free(&c->ps);
            proto_state_init(&c->ps);
            break;
        }
        off += (size_t)rc;
        if (c->req.argc > 0) {
            c->last_proto = c->req.proto;
            execute(c, &c->req);
        }
    }
    if (direct) {
        if (off < n)
            buf_append(&c->in, p + off, n - off);
    } else {
        buf_consume(&c->in, off);
    }
    if (c->in.len == 0 && c->in.cap > (64u << 10))
        buf_free(&c->in);
    if ((long long)c->in.len > cfg_qbuf_limit()) {
        rk_log(RK_LOG_WARNING, "closing client %s: query buffer over client-query-buffer-limit",
               c->addr);
        conn_close(c);
    } else if (c->ps.need > c->in.len) {
        buf_reserve(&c->in, c->ps.need - c->in.len); /* one allocation for a big value */
    }
}
