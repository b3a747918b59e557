/*
 * ctl: the small writable control region shared by a master and its same-host replicas.
 *
 * The replication log (shm/ring.h) is written only by the master and mapped read-only by
 * replicas.  Everything replicas must tell the master goes here instead: one slot per
 * replica, cache-line aligned, with its pid and heartbeat, per shard the position it has
 * applied up to, and per worker a "sleeping" flag that asks the master to ring its eventfd
 * when it publishes new records.  The master tells replicas, per shard, where their full sync
 * starts and where its table walk ended.
 *
 * Every field has one writer: the master (M) or the slot's replica (R), as marked.  Positions
 * are stored with release and loaded with acquire; flags and heartbeats are relaxed.  Neither
 * side trusts the other's numbers for memory safety: a position is only ever compared, never
 * used to index memory without the ring's own checks.
 */
#ifndef RK_CTL_H
#define RK_CTL_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define CTL_MAGIC 0x524b5643544c3031ull /* "RKVCTL01" */
#define CTL_MAX_REPLICAS 16
#define CTL_MAX_WORKERS 64
/* One more slot after the replicas' own: a TCP replica's workers report in it what they applied
 * of the copy of the master's log that its receiver writes (net/repl_tcp.c). */
#define CTL_SELF CTL_MAX_REPLICAS

enum ctl_slot_state {
    CTL_FREE = 0,    /* M: nobody */
    CTL_SYNCING = 1, /* M: attached, full sync under way */
    CTL_ONLINE = 2,  /* R: caught up with the end of every shard's walk */
};

struct ctl_hdr {
    uint64_t magic;
    uint32_t nshards;
    uint32_t master_workers;
    int32_t master_pid; /* M */
    uint32_t pad;
    uint64_t master_heartbeat_ms;          /* M, every 100 ms */
    uint32_t ack_waiting[CTL_MAX_WORKERS]; /* M: worker w waits for acks: ring its eventfd */
    uint64_t slot_off;                     /* offset of slot 0 */
    uint64_t slot_size;                    /* bytes per slot */
    uint64_t map_len;
};

struct ctl_slot {
    _Alignas(64) uint32_t state; /* enum ctl_slot_state (M sets SYNCING/FREE, R ONLINE) */
    int32_t pid;                 /* M, from the attach request */
    uint32_t nworkers;           /* M: the replica's worker count */
    uint32_t walk_req;           /* M: the walk generation this replica waits for */
    uint64_t heartbeat_ms;       /* R */
    uint64_t attach_ms;          /* M */
    _Alignas(64) uint32_t sleeping[CTL_MAX_WORKERS]; /* R: worker w sleeps: ring its eventfd */
    /* Then, per shard, each an array of nshards uint64_t:
     *   sync_start[s]  M: where this replica starts reading shard s (valid once start_set)
     *   start_set[s]   M: 1 once sync_start[s] is written
     *   walk_end[s]    M: position where shard s's walk for this replica ended (0 = not yet)
     *   applied[s]     R: position this replica has applied shard s up to
     *   received[s]    M: for a TCP replica, the position it has received shard s up to
     *                  (written by the master's sender from the replica's acks; 0 for
     *                  same-host replicas, which apply what they read) */
};

struct ctl_map {
    struct ctl_hdr *hdr;
    /* The header's layout, as written or checked: never read from the mapping again (every
     * replica may write it). */
    uint32_t nshards;
    size_t slot_off, slot_size;
    size_t map_len;
    int fd;
};

int ctl_create(struct ctl_map *c, uint32_t nshards, uint32_t master_workers);
/* Map a control region made by ctl_create read-write, checking it.  Takes fd. 0 or -errno. */
int ctl_attach(struct ctl_map *c, int fd);
void ctl_close(struct ctl_map *c);

static inline struct ctl_slot *ctl_slot(const struct ctl_map *c, int k)
{
    return (struct ctl_slot *)((char *)c->hdr + c->slot_off + (size_t)k * c->slot_size);
}
static inline uint64_t *ctl_sync_start(const struct ctl_map *c, int k)
{
    return (uint64_t *)((char *)ctl_slot(c, k) + sizeof(struct ctl_slot));
}
static inline uint64_t *ctl_start_set(const struct ctl_map *c, int k)
{
    return ctl_sync_start(c, k) + c->nshards;
}
static inline uint64_t *ctl_walk_end(const struct ctl_map *c, int k)
{
    return ctl_sync_start(c, k) + 2 * (size_t)c->nshards;
}
static inline uint64_t *ctl_applied(const struct ctl_map *c, int k)
{
    return ctl_sync_start(c, k) + 3 * (size_t)c->nshards;
}

/* Zero n words that other threads or processes may be reading (atomically) meanwhile. */
static inline void ctl_zero(uint64_t *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        __atomic_store_n(&a[i], 0, __ATOMIC_RELAXED);
}

static inline uint64_t *ctl_received(const struct ctl_map *c, int k)
{
    return ctl_sync_start(c, k) + 4 * (size_t)c->nshards;
}

#endif
