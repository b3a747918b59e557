/*
 * dispatch: from a parsed request to its reply, wherever the key lives.
 *
 * The command table names every command once: arity (Redis's convention: n exactly, -n at
 * least n), flags, and how it is routed:
 *   ROUTE_LOCAL  server commands, run on the connection's worker (net/cmd_server.c);
 *   ROUTE_KEY    one key: run on the worker that owns argv[1]'s shard;
 *   ROUTE_KEYS   several keys (MGET, MSET, DEL ...): split into one single-key command per key,
 *                each run on its owner, and the parts combined into one reply (enum combine).
 * Server commands that need every shard (DBSIZE, KEYS, FLUSHALL, DEBUG DIGEST, RANDOMKEY) or
 * one chosen shard (SCAN) call dispatch_shards() / dispatch_shard().
 */
#ifndef RK_DISPATCH_H
#define RK_DISPATCH_H

#include "net/server.h"

enum route { ROUTE_LOCAL, ROUTE_KEY, ROUTE_KEYS };

enum cmd_flags {
    CMD_WRITE = 1 << 0,    /* changes the keyspace */
    CMD_READONLY = 1 << 1, /* reads the keyspace */
    CMD_NOAUTH = 1 << 2,   /* allowed before AUTH (AUTH, HELLO, QUIT) */
    CMD_FAST = 1 << 3,
    CMD_ADMIN = 1 << 4,
    CMD_DENYOOM = 1 << 5,
    CMD_LOADING = 1 << 6,
    CMD_STALE = 1 << 7,
};

typedef void srv_cmd_fn(struct conn *c, struct req *req);

struct cmd_spec {
    const char *name; /* lower case */
    int arity;
    uint32_t flags;                      /* enum cmd_flags */
    uint8_t route;                       /* enum route */
    uint8_t comb;                        /* ROUTE_KEYS: enum combine */
    uint8_t step;                        /* ROUTE_KEYS: arguments per key (1, or 2 for MSET) */
    ks_cmd_fn *ks;                       /* ROUTE_KEY, ROUTE_KEYS: the single-key command */
    srv_cmd_fn *srv;                     /* ROUTE_LOCAL */
    int first_key, last_key, key_step;   /* COMMAND INFO */
    const char *group, *since, *summary; /* COMMAND DOCS */
};

const struct cmd_spec *dispatch_commands(size_t *n);
const struct cmd_spec *dispatch_lookup(const char *name, size_t len);

/* Run fn on every shard with argv, and combine the parts into one reply (comb).  start is
 * the shard COMB_FIRST looks at first. */
void dispatch_shards(struct conn *c, struct req *req, ks_cmd_fn *fn, int comb, int argc,
                     const struct arg *argv, int start);
/* Run fn on shard s only; its reply is the reply. */
void dispatch_shard(struct conn *c, struct req *req, uint32_t s, ks_cmd_fn *fn, int argc,
                    const struct arg *argv);
/* CLIENT LIST: every worker lists its connections. */
void dispatch_client_list(struct conn *c, struct req *req);
/* One line of CLIENT LIST for c (appended to b). */
void conn_describe(struct conn *c, struct buf *b, int64_t now_ms);

/* A reply coming back from the worker that ran a request: the reply bytes follow. */
struct xm_rep {
    struct conn *conn;
    struct slot *slot;
    long long ival;
    long nelem;
    int32_t part;
    uint32_t blen;
    char bytes[];
};

/* Where a reply made on a shard's owner goes: part `part` of a slot of connection conn, on
 * this worker (remote false; the caller took a reference on conn) or on worker `from`. */
struct sync_target {
    bool remote;
    int from;
    struct conn *conn;
    struct slot *slot;
    int part;
};

/* Run a keyspace command on shard s of this worker, replying through r. */
void dispatch_ks_run(struct worker *w, uint32_t s, uint64_t hash, ks_cmd_fn *fn, int argc,
                     const struct arg *argv, struct reply *r);
/* WAIT numreplicas timeout: one part per shard, the smallest count wins. */
void dispatch_wait(struct conn *c, struct req *req, long long need, long long timeout_ms);

/* conn.c calls this when every part of s is in: build s->out and return true, or start the
 * next phase (MSETNX) and return false. */
bool dispatch_combine(struct conn *c, struct slot *s);

#endif
