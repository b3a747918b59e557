/*
 * repl: replication, the master and the replica sides.  This comment describes same-host
 * replication through shared memory; replication over TCP, cascading and promotion are
 * described in net/repl_tcp.c, and FAILOVER in net/repl_failover.c.
 *
 * MASTER.  At start a master creates its replication log (shm/ring.h: one ring per shard)
 * and its control region (shm/ctl.h), and listens on its Unix socket.  Nothing is written to
 * the log until the first replica attaches.  The main thread answers attach requests on the
 * Unix socket (net/repl_master.c): it hands over the log and control memfds and its workers'
 * eventfds with SCM_RIGHTS, and asks every worker to walk its shards.  Each worker then, for
 * each of its shards, notes the log's tail as the replica's start position, and walks the
 * shard's table in slices between other work, appending a SET record per entry, while new
 * writes go on into the same log.  Since the shard's owner writes both, in the order it does
 * them, the replica that applies the log from the start position ends with exactly the
 * master's data (records are idempotent).  The walk waits while the log is more than half a
 * ring ahead of a syncing replica, so a full sync never laps it.
 *
 * REPLICA.  Its main thread keeps the link: connects to the master's TCP port, asks for the
 * Unix socket (RINGKV.SHMINFO), checks that the master runs on this host, attaches, maps the
 * log read-only, and publishes the mapping to the workers.  Each replica worker applies the
 * log of its own shards in every loop pass and reports how far it got in its control slot.
 * A replica that is lapped or reads a corrupt frame drops the link and attaches again (a
 * full sync).  When the master dies, the replica keeps serving reads and reconnects.
 *
 * WAKE-UPS.  A side that is about to sleep sets its flag in the control region, fences, and
 * looks once more; the other side publishes, fences, and rings the eventfd of a sleeper.
 */
#ifndef RK_REPL_H
#define RK_REPL_H

#include <stdbool.h>
#include <stdint.h>

#include "core/keyspace.h"
#include "shm/ctl.h"
#include "shm/ring.h"

struct worker;
struct conn;
struct req;
struct buf;
struct slot;
struct part_sync;
struct reply;

/* The master's view of one attached replica (set by the main thread, read by workers). */
struct repl_peer {
    int active; /* 1 while attached (release by the main thread) */
    int nworkers;
    int efds[CTL_MAX_WORKERS]; /* the replica workers' eventfds */
    int32_t pid;
    char addr[64];
    int port;                /* the replica's own listening port, for INFO */
    int64_t behind_since_ms; /* main thread: last tick the replica was seen caught up */
    bool tcp;                /* a TCP replica: served by the replication thread */
    int tcp_closed;          /* repl thread: its socket is closed, the slot may be reclaimed */
    int tcp_kill;            /* main thread: cut it */
};

/* The TCP replication stream (net/repl_tcp.c): every message starts with this header. */
enum wire_type {
    WIRE_DATA = 1,      /* master: len raw log bytes of shard from pos follow */
    WIRE_COMMIT = 2,    /* master: shard's bytes below pos were intact when sent: publish them */
    WIRE_RESET = 3,     /* master, full sync: shard's log starts at pos */
    WIRE_WALKEND = 4,   /* master, full sync: shard's walk ended at pos */
    WIRE_PING = 5,      /* master: keep-alive */
    WIRE_WALKSTART = 6, /* master: a walk asked for by the replica (for its own replicas)
                         * starts at pos in shard's log, in the stream it already follows */
    WIRE_ACK = 16,      /* replica: shard = nshards, pos = walks it asked for (a counter), then
                         * per shard u64 received, u64 applied */
};
struct wire_hdr {
    uint32_t magic;
    uint8_t type;
    uint8_t pad[3];
    uint64_t pos;
    uint32_t shard;
    uint32_t len;
};

/* When each shard's log reached where (net/repl_master.c, repl_lag_sample): what makes a
 * replica's lag_us in INFO the age of the oldest write it has not applied. */
#define LAG_HIST 256         /* samples per shard */
#define LAG_SAMPLE_NS 100000 /* at most one sample per shard per 100 us */
struct lag_hist {
    uint64_t pos[LAG_HIST], ns[LAG_HIST]; /* the log's end, and CLOCK_MONOTONIC then */
    uint32_t n;                           /* samples taken; the newest at (n - 1) % LAG_HIST */
};

struct repl_state {
    /* both roles */
    bool is_replica; /* set at start or by REPLICAOF (main thread), read by all */
    char replid[41];
    /* master */
    struct ring_map log;
    struct ctl_map ctl;
    int unix_fd; /* listening Unix socket, -1 if none */
    char unix_path[108];
    int logging;       /* workers append to the log (set once a replica attached) */
    uint32_t walk_req; /* bumped per attach: workers start a walk */
    struct repl_peer peers[CTL_MAX_REPLICAS];
    uint64_t sync_timeouts; /* writes answered by the fallback at sync-timeout */
    struct lag_hist *lagh;  /* per shard, written by its owner worker, read by INFO */
    /* replica */
    char master_host[256];
    int master_port;
    struct repl_link *link;    /* current link or NULL (release by the main thread) */
    uint64_t link_epoch;       /* bumped whenever link changes */
    struct repl_link *retired; /* old links, unmapped once every worker moved on */
    int relink;                /* a worker found the log lapped or corrupt: resync */
    int sync_in_progress;
    int64_t link_down_since_ms;
    int64_t next_try_ms;
    int backoff_ms;
    struct repl_req *pending; /* REPLICAOF from a worker, for the main thread */
    uint64_t full_syncs;      /* replica: full syncs it took (replica_full_syncs) */
    uint64_t partial_syncs;   /* replica: partial resyncs its master accepted */
    bool follow_tcp;  /* use TCP whatever repl-transport says (after a FAILOVER to a TCP replica) */
    bool log_valid;   /* our data is exactly what our log's history (replid, tails) says:
                       * a PSYNC may offer it (false during a full sync, after a shm one) */
    bool log_is_copy; /* our log is a copy of replid's (TCP replica), positions and all */
    bool tcp_link;    /* the current link is TCP (main thread; INFO reads it relaxed) */
    int rx_lost;      /* the replication thread lost the TCP link to the master */
    int64_t link_up_ms; /* when the current link came up */
    /* both: the previous replication id and, per shard, the position up to which this log is
     * that id's log (after a promotion), for partial resyncs of the old master's replicas */
    char replid2[41];
    uint64_t *second_off; /* per shard (allocated once, by the first promotion) */
    bool has_replid2;     /* replid2 and second_off are set */
    /* master: PSYNC requests that workers handed over (a stack), and the counters of INFO */
    struct repl_psync *psyncs;
    /* FAILOVER (main thread; workers read writes_paused and failover_state) */
    int writes_paused;
    int failover_state; /* enum failover_state */
    struct repl_failover *failover_req;
    int failover_abort;
    /* replica with replicas of its own: walks to ask the master for (a counter the replication
     * thread passes on in its acks), since only the master's workers can walk */
    uint32_t walk_upstream;
    int drop_shm_peers; /* our log was reset by a full sync: same-host replicas must resync */
    uint64_t last_offset; /* replica: what it had applied when a shm link went down (INFO) */
    uint64_t sync_full, sync_partial_ok, sync_partial_err;
    uint64_t zc_sends; /* batches sent with IORING_OP_SENDMSG_ZC */
};

enum failover_state { FO_NONE = 0, FO_WAIT_SYNC = 1, FO_IN_PROGRESS = 2 };

/* A FAILOVER request, from a worker to the main thread. */
struct repl_failover {
    char host[256]; /* "" = pick the most up-to-date online replica */
    int port;
    long long timeout_ms; /* 0 = none */
    bool force;
};

/* A RINGKV.PSYNC request, handed by a worker to the main thread with its socket. */
struct repl_psync {
    struct repl_psync *next;
    int fd;
    int port;
    char addr[64];
    char replid[41];
    uint64_t *pos; /* per shard */
};

/* A REPLICAOF request handed from a worker to the main thread. */
struct repl_req {
    bool no_one;
    char host[256];
    int port;
};

extern struct repl_state repl;

/* The main thread changes a few strings and counters of struct repl_state that INFO and ROLE
 * read on workers: it writes them with these, and readers read with these (relaxed atomics,
 * byte by byte for strings: an INFO during a change may show a mix, nothing else reads them
 * off the main thread). */
static inline void repl_str_set(char *dst, size_t cap, const char *src)
{
    size_t i = 0;
    for (; i + 1 < cap && src[i]; i++)
        __atomic_store_n(&dst[i], src[i], __ATOMIC_RELAXED);
    __atomic_store_n(&dst[i], '\0', __ATOMIC_RELAXED);
}
static inline void repl_str_get(char *out, size_t cap, const char *src)
{
    size_t i = 0;
    for (; i + 1 < cap; i++) {
        out[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
        if (!out[i])
            break;
    }
    out[i] = '\0';
}
/* A worker walking its shards for a full sync walks for at most REPL_WALK_SLICE_US at a time,
 * at most once every REPL_WALK_PERIOD_US; its timer ticks at that period meanwhile
 * (net/worker.c). */
#define REPL_WALK_SLICE_US 10
#define REPL_WALK_PERIOD_US 75
/* ... unless no client command came for this long (to any worker): then a worker walks
 * whenever it has nothing else to do, and a full sync of an idle master goes at the speed of
 * the replica. */
#define REPL_WALK_QUIET_US 2000

#define REPL_INC(x) __atomic_fetch_add(&(x), 1, __ATOMIC_RELAXED)
#define REPL_GET(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

/* The link a replica follows: published by the main thread (release), read by workers. */
struct repl_link {
    struct ring_map log; /* the master's log, read-only */
    struct ctl_map ctl;  /* the master's control region */
    int slot;            /* our slot there */
    int master_workers;
    int master_efds[CTL_MAX_WORKERS];
    int32_t master_pid;
    bool self;      /* TCP: log and ctl are this server's own (a copy the receiver writes) */
    bool partial;   /* TCP: a partial resync: keep the data */
    int tcp_fd;     /* TCP: the socket, handed to the replication thread */
    uint64_t epoch; /* repl.link_epoch when it was published */
    struct repl_link *next_retired;
};

/* Main thread, before anything else starts: note the master to follow (replicaof) and adopt
 * its shard count when it can be reached.  0, or -1 after printing why. */
int repl_prepare(void);
/* Before the worker threads start: create the log, the control region and the Unix socket.
 * 0, or -1 after logging why. */
int repl_init(void);
/* Main thread, about every 100 ms: attach requests, dead replicas, heartbeats (master); the
 * link to the master (replica). */
void repl_main_tick(void);
void repl_shutdown(void);

/* Master worker, once per pass: start and advance walks, wake sleeping replicas. */
void repl_master_pass(struct worker *w);
/* Record that shard s's log ended at tail at now_ns (the shard's writer; at most one sample
 * per LAG_SAMPLE_NS). */
void repl_lag_sample(uint32_t s, uint64_t tail, uint64_t now_ns);
/* The age in microseconds of the oldest write of shard s past applied (the log ends at tail),
 * from the samples; -1 when it is older than the oldest sample kept. */
int64_t repl_lag_us(uint32_t s, uint64_t applied, uint64_t tail, uint64_t now_ns);
/* Master worker, before sleeping: true if it has walk work to do now. */
bool repl_master_busy(struct worker *w);
/* Replica worker, once per pass: apply the log of our shards, report, wake the master. */
void repl_replica_pass(struct worker *w);
/* Replica worker, before sleeping: true if records are waiting (else sets our flag). */
bool repl_replica_busy(struct worker *w);

/* Keyspace change hook (struct ks_ctx on_change; arg is the worker, w->cur_shard the shard). */
void repl_on_change(void *arg, enum ks_change what, const struct kv_entry *e, const char *key,
                    size_t klen);
/* Active expiry hook (shard_expire_step's on_expire): a DEL record. */
void repl_on_expire(void *arg, const struct kv_entry *e);
bool repl_logging(void);
static inline bool repl_is_replica(void)
{
    return __atomic_load_n(&repl.is_replica, __ATOMIC_ACQUIRE);
}

/* repl_sync.c: semi-sync and sync writes (see there). */
struct sync_target;
bool sync_active(void);
/* Run fn for target on shard s (owned by w), holding or deferring it as the mode requires. */
void sync_exec(struct worker *w, uint32_t s, uint64_t hash, ks_cmd_fn *fn, int argc,
               const struct arg *argv, int proto, int crlf, const struct sync_target *t);
/* One shard's part of WAIT: answers at once with where shard s's log ends (its part_sync);
 * the slot then waits in sync_slot_gate. */
void sync_wait_part(struct worker *w, uint32_t s, const struct sync_target *t);
/* Deliver a part's reply to t; ps (NULL: none) says what replicas must hold for it. */
void sync_deliver(struct worker *w, const struct sync_target *t, const char *p, size_t n,
                  long long ival, long nelem, const struct part_sync *ps);
/* On c's worker, once slot sl has all its parts: true if it must wait for replicas that hold
 * every part (it is then finished later, by sync_progress); false to finish it now. */
bool sync_slot_gate(struct conn *c, struct slot *sl);
/* The error a write gets when sync-fallback is error and replicas did not confirm it. */
void sync_norepl(struct reply *r);
void sync_progress(struct worker *w);
bool sync_busy(struct worker *w);

/* Replica: the q-quantile (0..1) of the apply lag, in microseconds (the upper bound of its
 * histogram bucket), over every sample since start; *samples gets their number. */
uint64_t repl_lag_percentile(double q, uint64_t *samples);

/* This host's boot id (/proc/sys/kernel/random/boot_id): same id, same host. */
void repl_boot_id(char *out, size_t cap);

/* Main thread: stop following a master and become one (REPLICAOF NO ONE, FAILOVER). */
void repl_promote(const char *why);
/* INFO master_failover_state: no-failover, waiting-for-sync or failover-in-progress. */
const char *repl_failover_state(void);
/* A new random 40-hex-digit replication id. */
void repl_new_replid(char out[41]);

/* repl_replica.c, for repl_master.c */
int repl_replica_prepare(void);
void repl_replica_tick(void);
void repl_replica_shutdown(void);

/* repl_tcp.c: the replication thread. */
int repl_tcp_init(void);
void repl_tcp_shutdown(void);
/* Main thread: serve a TCP replica in slot `slot` on fd (full sync, or from pos[]). */
void repl_tcp_add_replica(int fd, int slot, bool full, const uint64_t *pos);
/* Main thread: follow the master on fd (the handshake is done). */
void repl_tcp_start_rx(int fd, bool full);
/* Main thread: drop the upstream link and wait until nothing more is written to our log. */
void repl_tcp_stop_rx(void);
extern uint32_t repl_rx_waiting; /* the replication thread waits for our applied positions */
extern int repl_tcp_efd;
/* Master main thread: answer the PSYNC requests workers handed over. */
void repl_psync_tick(void);

/* Commands: INFO replication, ROLE, REPLICAOF / SLAVEOF, RINGKV.SHMINFO. */
void repl_info(struct buf *b, struct worker *w);
void srv_role(struct conn *c, struct req *req);
void srv_replicaof(struct conn *c, struct req *req);
void srv_shminfo(struct conn *c, struct req *req);
void srv_psync(struct conn *c, struct req *req);
void srv_failover(struct conn *c, struct req *req);
/* Main thread: one step of a FAILOVER in progress (repl_failover.c). */
void repl_failover_tick(void);
/* Main thread, replica side: become a replica of host:port (REPLICAOF host port). */
void repl_follow(const char *host, int port, bool tcp);

#endif
