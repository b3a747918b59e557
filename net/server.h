/*
 * server: the process-wide state and the per-worker state of ringkv-server.
 *
 * The server runs W worker threads.  Each worker owns, and alone touches: one io_uring, one
 * SO_REUSEPORT listening socket per bind address, the connections accepted there, the shards
 * s with s % W == its id, and its end of the xrings (net/xring.h) to every other worker.
 * The only state shared between workers is read-mostly: the config (net/config.h), the
 * shard array (pointers set once at start), and statistics counters that each worker writes
 * with relaxed atomic stores and INFO reads with relaxed loads.
 *
 * A request whose key lives in another worker's shard is posted to that worker through
 * the xring from this worker to it, executed there, and its reply bytes posted back; the
 * connection's reply slots (struct slot) keep pipelined replies in request order.
 */
#ifndef RK_SERVER_H
#define RK_SERVER_H

#include <liburing.h>
#include <pthread.h>
#include <stdint.h>
#include <stdbool.h>
#include "core/buf.h"
#include "core/keyspace.h"
#include "core/shard.h"
#include "net/proto.h"
#include "net/reply.h"
#include "net/xring.h"

struct worker;
struct conn;

/* Statistics counters of one worker; summed by INFO.  One X-macro so the struct, the sum and
 * the INFO field names cannot drift apart. */
#define WORKER_STATS(X)                                                                            \
    X(total_connections_received)                                                                  \
    X(total_commands_processed)                                                                    \
    X(rejected_connections)                                                                        \
    X(total_net_input_bytes)                                                                       \
    X(total_net_output_bytes)                                                                      \
    X(cross_worker_requests)                                                                       \
    X(connected_clients)

struct worker_stats {
#define X(f) uint64_t f;
    WORKER_STATS(X)
#undef X
};

/* Add to a counter that other threads read: a relaxed load and store, no lock prefix. */
#define STAT_ADD(w, f, n)                                                                          \
    __atomic_store_n(&(w)->stats.f, __atomic_load_n(&(w)->stats.f, __ATOMIC_RELAXED) + (n),        \
                     __ATOMIC_RELAXED)
#define STAT_GET(w, f) __atomic_load_n(&(w)->stats.f, __ATOMIC_RELAXED)

/* What replicas must hold for a part of a reply to count as acknowledged (net/repl_sync.c):
 * its shard's log up to pos.  A command whose parts wrote on several shards, and WAIT, need
 * the same replicas to hold every part. */
enum { PART_SYNC_NONE, PART_SYNC_ACKED, PART_SYNC_FELL_BACK };
struct part_sync {
    uint8_t state;    /* PART_SYNC_*: nothing to hold; held and acknowledged; timed out */
    bool refused;     /* PART_SYNC_FELL_BACK under sync-fallback error: the part is the error */
    uint32_t shard;   /* PART_SYNC_ACKED: the shard and log position */
    uint64_t pos;
    int64_t deadline; /* ms: when the part's hold would have timed out (INT64_MAX: never) */
};

/* One part of a reply that other workers produce (a whole reply, or the share of one key or
 * one shard of a multi-key command). */
struct part {
    struct buf b;
    long long ival;
    long nelem;
    bool done;
    struct part_sync ps; /* semi/sync writes and WAIT: what the part's shard logged */
};

enum combine {
    COMB_ONE,    /* the one part's bytes */
    COMB_ARRAY,  /* array header (sum of nelem) then the parts' bytes: MGET, KEYS */
    COMB_SUM,    /* integer: sum of ival: DEL, EXISTS, DBSIZE */
    COMB_OK,     /* +OK: MSET, FLUSHALL */
    COMB_DIGEST, /* XOR of 20-byte digests, as hex: DEBUG DIGEST */
    COMB_FIRST,  /* first part that is not nil, else nil: RANDOMKEY */
    COMB_MSETNX, /* phase 1 sums EXISTS, phase 2 sets: MSETNX */
    COMB_TEXT,   /* parts' text concatenated into one bulk: CLIENT LIST */
    COMB_WAIT,   /* integer: replicas holding every part's position: WAIT */
};

/* A reply not yet sent, in request order.  Slots exist only while some earlier reply of the
 * same connection is still being produced elsewhere; otherwise replies go straight into the
 * connection's output buffer. */
struct slot {
    struct slot *next;
    struct buf out; /* the finished reply */
    int nparts;
    int remaining; /* parts not yet done */
    uint8_t comb;  /* enum combine */
    uint8_t proto, crlf;
    bool done;         /* out holds the finished reply */
    bool part_is_elem; /* COMB_ARRAY: each part is one element (MGET) */
    int phase;         /* COMB_MSETNX: 1 checking, 2 setting */
    int argc;          /* COMB_MSETNX: a private copy of the arguments for phase 2 */
    struct arg *argv;
    char *argmem;
    /* Waiting for replicas that hold every part (net/repl_sync.c, sync_slot_gate) */
    long long wait_need;     /* COMB_WAIT: replicas asked for; its answer goes in wait_count */
    long long wait_count;
    int64_t wait_deadline;   /* ms, INT64_MAX: none */
    bool sync_failed;        /* not confirmed in time: sync-fallback applies to the reply */
    bool sync_unblocked;     /* COMB_WAIT: this server became a replica meanwhile */
    struct slot *sync_next;  /* on the worker's list of such slots */
    struct conn *sync_conn;
    struct part parts[];
};

struct conn {
    struct worker *w;
    int fd;
    uint64_t id;
    int refs;               /* operations that still point at us: recv armed, send, parts away */
    bool closing;           /* stop reading, free once refs == 0 */
    bool close_after_reply; /* QUIT: close once everything is sent */
    bool recv_armed;
    bool sending;
    bool dirty; /* on the worker's flush list */
    bool authed;
    uint8_t last_proto;
    struct buf in; /* bytes received and not yet parsed */
    struct proto_state ps;
    struct req req;
    struct buf out;  /* bytes in flight in a send */
    struct buf pend; /* bytes to send next */
    struct slot *slot_head, *slot_tail;
    struct conn *next_dirty;
    struct conn *prev, *next; /* the worker's list of connections */
    char *name;               /* CLIENT SETNAME */
    char addr[64];            /* peer ip:port */
    char laddr[64];           /* local ip:port */
    int64_t ctime_ms;         /* connected at */
    int64_t last_ms;          /* last interaction */
    char last_cmd[24];
};

/* Replica apply lag histogram: 10 us buckets below 1 ms, then 1 ms buckets to 100 ms. */
#define REPL_LAG_BUCKETS 200
/* A replica reads this many log records ahead of applying them, so that their table lookups'
 * cache misses overlap (shard_prefetch, net/repl_replica.c's apply_some). */
#define REPL_APPLY_BATCH 16

/* A full-sync walk of one shard (net/repl_master.c). */
struct repl_walk {
    bool active;
    struct shard_walk sw;
    uint32_t req;
};

struct worker {
    int id;
    int cpu; /* pinned CPU, -1 if not pinned */
    pthread_t thread;
    struct io_uring ring;
    int ring_fd;
    int *listen_fds;
    int nlisten;
    struct io_uring_buf_ring *br; /* provided receive buffers */
    char *bufs;
    unsigned nbufs, bufsz;
    int event_fd; /* doorbell when IORING_OP_MSG_RING is not available */
    uint64_t event_val;
    struct xring **in;                  /* in[j]: from worker j to us */
    struct xring **out;                 /* out[j]: from us to worker j */
    struct xmsg **ovf_head, **ovf_tail; /* per target: records that did not fit in out[j] */
    uint8_t *ring_bell;                 /* per target: ring its doorbell at the end of this pass */
    int sleeping;       /* about to wait in the kernel: others must ring (seq_cst) */
    struct conn *dirty; /* connections with output to flush at the end of the pass */
    struct conn *conns; /* all connections */
    int64_t now_ms;     /* wall clock at the start of this pass */
    uint64_t rng;
    struct ks_stats ks; /* keyspace counters (owner writes relaxed) */
    struct worker_stats stats;
    struct __kernel_timespec tick;
    struct __kernel_timespec hurry_ts; /* hurry_timer's */
    bool tick_fast;                    /* the armed tick is the 10 ms (or faster) one */
    bool timer_armed;
    bool stop;
    struct buf scratch;     /* replies to other workers' requests are built here */
    int64_t awaiting;       /* requests posted to other workers whose replies are not back */
    struct slot *slot_pool; /* recycled slots (net/conn.c) */
    /* replication (net/repl_*.c) */
    uint32_t cur_shard;      /* shard of the command running now (for the log hook) */
    bool repl_appended;      /* appended to the log in this pass */
    uint64_t repl_last_end;  /* log position after the last append */
    struct repl_walk *walks; /* per own shard (index s / nworkers) */
    uint32_t walk_seen;
    uint32_t walk_rr;      /* own shard (index) the next walk slice starts at */
    bool walk_paced;       /* walking: the timer ticks every millisecond */
    int64_t walk_next_us;  /* the next walk slice is not before this (monotonic us) */
    unsigned pass_cqes;    /* completions the current loop pass handled */
    uint64_t walk_cmds;    /* all workers' commands processed, when last looked at */
    int64_t walk_cmd_us;   /* when that count last changed (monotonic us) */
    bool walk_quiet;       /* walking, and no client command for REPL_WALK_QUIET_US */
    uint64_t walk_rec_max; /* the largest record our walks appended (log bytes) */
    bool walk_throttled;
    struct repl_link *link; /* replica: the link we apply from */
    uint64_t link_epoch_seen;
    uint64_t passes;   /* loop passes (relaxed): FAILOVER waits for every worker to make some */
    uint64_t *rpos;    /* replica: per own shard, next log position to apply */
    uint8_t *rstarted; /* replica: per own shard, rpos is valid */
    char *rbuf[REPL_APPLY_BATCH]; /* replica: record copy buffers, one per record of a batch */
    void *ssync;                  /* per own shard: held replies and commands (net/repl_sync.c) */
    void *held_spare;             /* released held entries kept for reuse (net/repl_sync.c) */
    int held_nspare;
    int64_t sync_held;            /* entries held in all our shards' queues, and sync_slots */
    struct slot *sync_slots;      /* slots waiting for replicas holding all their parts */
    bool sync_wrote;              /* the command running now changed its shard */
    int64_t last_tick_ms;
    uint64_t lag_hist[REPL_LAG_BUCKETS]; /* replica: apply lag samples (relaxed counters) */
    size_t rcap[REPL_APPLY_BATCH];
    int slot_pool_len;
};

struct server {
    int nworkers;
    struct worker **workers;
    unsigned shard_bits;
    uint32_t nshards;
    struct shard **shards; /* shards[s] is owned by workers[s % nworkers] */
    bool use_msg_ring;     /* doorbells by IORING_OP_MSG_RING (else eventfd) */
    unsigned ring_flags;   /* the io_uring setup flags the workers got */
    int stop;              /* set by SHUTDOWN or a signal */
    uint64_t next_client_id;
    int64_t start_ms;
    char run_id[41];
    char executable[256];
};

extern struct server srv;

static inline struct worker *shard_owner(uint32_t s)
{
    return srv.workers[s % (uint32_t)srv.nworkers];
}

/* Record types in the xrings between workers. */
enum { XM_REQUEST = 1, XM_REPLY = 2, XM_CLIENT_LIST = 3, XM_WAIT = 4, XM_REPLY_SYNC = 5 };

/* worker.c */
int workers_start(void); /* 0 or -errno, after logging why */
void workers_stop_and_join(void);
void server_request_stop(void); /* any thread: ask every worker to stop */
/* A listening socket on addr:port without SO_REUSEPORT (to find a port in use), or -errno. */
int server_probe_bind(const char *addr, int port);
/* Post a record to worker `to` (through out[to], or the overflow list when full); rings its
 * doorbell at the end of the pass.  Returns the payload to fill in, valid until the pass ends. */
void *worker_post(struct worker *w, int to, size_t len, uint32_t type);

/* worker.c: take the connection's socket away from its worker (a TCP replica's stream goes to
 * the replication thread).  Returns a new descriptor for it, or -1; the connection ends. */
int conn_detach(struct conn *c);

/* conn.c: replies in request order */
/* A reply writer for a reply made right now on this worker.  Call conn_reply_end after. */
void conn_reply_begin(struct conn *c, struct reply *r, int proto, int crlf);
void conn_reply_end(struct conn *c, struct reply *r);
/* A slot for a reply that nparts parts from other workers will complete. */
struct slot *conn_slot_new(struct conn *c, int nparts, int comb, int proto, int crlf);
/* Part i of slot s is done (its bytes are in s->parts[i]): combine and flush when complete.
 * i == -1 drops the hold a fan-out keeps on its slot while it is still sending parts. */
void conn_part_done(struct conn *c, struct slot *s, int i);
/* Part i of slot s arrived from another worker: store it (or, for a single-part reply at the
 * head of the queue, append it straight to the output) and complete the slot if it was last. */
void conn_part_deliver(struct conn *c, struct slot *s, int i, const char *p, size_t n,
                       long long ival, long nelem, const struct part_sync *ps);
/* Slot s has every part: combine them (unless a next phase starts) and flush in order. */
void conn_slot_finish(struct conn *c, struct slot *s);
void conn_mark_dirty(struct conn *c);
void conn_close(struct conn *c);
void conn_release(struct conn *c);    /* frees c if it is closing and refs == 0 */
void conn_free_final(struct conn *c); /* at shutdown: free whatever state it is in */
void conn_slot_pool_free(struct worker *w);

/* dispatch.c */
/* Run every complete request in c->in (or in data/len when c->in is empty).  Returns the
 * number of bytes of data left unparsed, which the caller keeps in c->in. */
void dispatch_input(struct conn *c, const char *data, size_t len);
/* A request from another worker (xring record) and a reply coming back. */
void dispatch_remote_request(struct worker *w, int from, const void *msg, size_t len);
/* A request message that will run soon: start loading its key's table slot (stage 0) or,
 * later, its entry (stage 1) (shard_prefetch). */
void dispatch_prefetch_request(const void *msg, int stage);
void dispatch_remote_reply(struct worker *w, const void *msg, size_t len);
/* XM_REPLY_SYNC: a struct part_sync, then an XM_REPLY record. */
void dispatch_remote_reply_sync(struct worker *w, const void *msg, size_t len);
/* Any other record type (requests, CLIENT LIST). */
void dispatch_remote_other(struct worker *w, int from, uint32_t type, const void *msg, size_t len);
void dispatch_init(void);

#endif
