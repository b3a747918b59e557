/*
 * repl_cmd: the replication commands and INFO section, in Redis's format and field names:
 * INFO replication, ROLE, REPLICAOF / SLAVEOF, and RINGKV.SHMINFO (the first step of a
 * same-host replica's attach, see net/repl_replica.c).
 *
 * Offsets: a master's replication offset is the sum over shards of its log's tails; a
 * replica's is the sum of the positions it has applied.  Both are byte counts of the same
 * log, so offset differences are lag in bytes.
 */
#include "net/repl.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "net/config.h"
#include "net/dispatch.h"

static uint64_t master_offset(void)
{
    if (!repl.log.hdr)
        return 0;
    uint64_t sum = 0;
    for (uint32_t s = 0; s < srv.nshards; s++)
        sum += ring_tail(&repl.log, s);
    return sum;
}

static uint64_t slot_offset(const struct ctl_map *c, int k)
{
    uint64_t sum = 0;
    for (uint32_t s = 0; s < c->nshards; s++)
        sum += __atomic_load_n(&ctl_applied(c, k)[s], __ATOMIC_ACQUIRE);
    return sum;
}

static const char *sync_mode_name(int m)
{
    return m == SYNC_SYNC ? "sync" : m == SYNC_SEMI ? "semi" : "async";
}

/* The previous replication id and where its history ends (Redis: second_repl_offset is the
 * first offset that is not part of it). */
static void info_replid2(struct buf *b)
{
    uint64_t off = 0;
    uint64_t *so = __atomic_load_n(&repl.second_off, __ATOMIC_ACQUIRE);
    bool has = __atomic_load_n(&repl.has_replid2, __ATOMIC_ACQUIRE) && so;
    if (has)
        for (uint32_t s = 0; s < srv.nshards; s++)
            off += __atomic_load_n(&so[s], __ATOMIC_RELAXED);
    char id2[41];
    repl_str_get(id2, sizeof(id2), repl.replid2);
    if (has)
        buf_printf(b, "master_replid2:%s\r\nsecond_repl_offset:%llu\r\n", id2,
                   (unsigned long long)off + 1);
    else
        buf_printf(b, "master_replid2:0000000000000000000000000000000000000000\r\n"
                      "second_repl_offset:-1\r\n");
}

/* How long ago the oldest write replica k has not applied was made, in microseconds: from
 * each shard's samples (repl_lag_sample), else (older than they go back) the time since the
 * main thread last saw it caught up, which is never less. */
static int64_t replica_lag_us(int k, int64_t now_ms)
{
    uint64_t now_ns = rk_mono_ns();
    int64_t lag = 0;
    bool old = false;
    for (uint32_t s = 0; s < srv.nshards; s++) {
        uint64_t a = __atomic_load_n(&ctl_applied(&repl.ctl, k)[s], __ATOMIC_ACQUIRE);
        int64_t l = repl_lag_us(s, a, ring_tail(&repl.log, s), now_ns);
        if (l < 0)
            old = true;
        else if (l > lag)
            lag = l;
    }
    if (old) {
        int64_t since = now_ms - (int64_t)__atomic_load_n(&repl.peers[k].behind_since_ms,
                                                          __ATOMIC_RELAXED);
        if (since * 1000 > lag)
            lag = since * 1000;
    }
    return lag;
}

static void info_master(struct buf *b)
{
    int n = 0;
    for (int k = 0; k < CTL_MAX_REPLICAS; k++)
        n += __atomic_load_n(&repl.peers[k].active, __ATOMIC_ACQUIRE) != 0;
    uint64_t moff = master_offset();
    int64_t now = rk_now_ms();
    buf_printf(b, "role:master\r\nconnected_slaves:%d\r\n", n);
    for (int k = 0, i = 0; k < CTL_MAX_REPLICAS; k++) {
        struct repl_peer *p = &repl.peers[k];
        if (!__atomic_load_n(&p->active, __ATOMIC_ACQUIRE))
            continue;
        struct ctl_slot *sl = ctl_slot(&repl.ctl, k);
        uint64_t off = slot_offset(&repl.ctl, k);
        int st = (int)__atomic_load_n(&sl->state, __ATOMIC_ACQUIRE);
        int64_t hb = (int64_t)__atomic_load_n(&sl->heartbeat_ms, __ATOMIC_RELAXED);
        buf_printf(b,
                   "slave%d:ip=%s,port=%d,state=%s,offset=%llu,lag=%lld,transport=%s,pid=%d,"
                   "lag_bytes=%llu,lag_us=%lld\r\n",
                   i++, p->addr, p->port, st == CTL_ONLINE ? "online" : "wait_bgsave",
                   (unsigned long long)off, (long long)((now - hb) / 1000), p->tcp ? "tcp" : "shm",
                   (int)p->pid, (unsigned long long)(moff > off ? moff - off : 0),
                   (long long)(moff > off ? replica_lag_us(k, now) : 0));
    }
    char id[41];
    repl_str_get(id, sizeof(id), repl.replid);
    buf_printf(b, "master_failover_state:%s\r\nmaster_replid:%s\r\n", repl_failover_state(), id);
    info_replid2(b);
    buf_printf(b,
               "master_repl_offset:%llu\r\nrepl_backlog_active:%d\r\n"
               "repl_backlog_size:%llu\r\nrepl_backlog_first_byte_offset:0\r\n"
               "repl_backlog_histlen:%llu\r\nsync_mode:%s\r\nsync_replicas:%lld\r\n"
               "sync_timeouts:%llu\r\nsync_full:%llu\r\nsync_partial_ok:%llu\r\n"
               "sync_partial_err:%llu\r\nrepl_zerocopy_sends:%llu\r\n",
               (unsigned long long)moff, repl_logging() ? 1 : 0,
               (unsigned long long)(repl.log.hdr ? repl.log.size * repl.log.nshards : 0),
               (unsigned long long)moff, sync_mode_name(cfg_sync_mode()), cfg_sync_replicas(),
               (unsigned long long)__atomic_load_n(&repl.sync_timeouts, __ATOMIC_RELAXED),
               (unsigned long long)REPL_GET(repl.sync_full),
               (unsigned long long)REPL_GET(repl.sync_partial_ok),
               (unsigned long long)REPL_GET(repl.sync_partial_err),
               (unsigned long long)REPL_GET(repl.zc_sends));
}

static void info_replica(struct buf *b, struct worker *w)
{
    struct repl_link *L = w->link;
    /* With the link down, what this replica holds: its own log and what its workers applied
     * of it (TCP), or what it had applied when the link went down (shared memory). */
    bool copy = REPL_GET(repl.log_is_copy);
    uint64_t off = L                      ? slot_offset(&L->ctl, L->slot)
                   : copy && repl.ctl.hdr ? slot_offset(&repl.ctl, CTL_SELF)
                                          : REPL_GET(repl.last_offset);
    uint64_t rd = (L && L->self) || (!L && copy) ? master_offset() : off;
    int syncing = __atomic_load_n(&repl.sync_in_progress, __ATOMIC_RELAXED);
    int64_t now = rk_now_ms();
    char host[256], id[41];
    repl_str_get(host, sizeof(host), repl.master_host);
    repl_str_get(id, sizeof(id), repl.replid);
    buf_printf(b,
               "role:slave\r\nmaster_host:%s\r\nmaster_port:%d\r\nmaster_link_status:%s\r\n"
               "master_last_io_seconds_ago:%d\r\nmaster_sync_in_progress:%d\r\n"
               "slave_read_repl_offset:%llu\r\nslave_repl_offset:%llu\r\n",
               host, REPL_GET(repl.master_port), L ? "up" : "down", L ? 0 : -1, syncing,
               (unsigned long long)rd, (unsigned long long)off);
    if (!L)
        buf_printf(b, "master_link_down_since_seconds:%lld\r\n",
                   (long long)((now - REPL_GET(repl.link_down_since_ms)) / 1000));
    int n = 0;
    for (int k = 0; k < CTL_MAX_REPLICAS; k++)
        n += __atomic_load_n(&repl.peers[k].active, __ATOMIC_ACQUIRE) != 0;
    buf_printf(b,
               "master_link_transport:%s\r\nslave_priority:100\r\nslave_read_only:1\r\n"
               "replica_announced:1\r\nconnected_slaves:%d\r\nmaster_failover_state:%s\r\n"
               "master_replid:%s\r\n",
               L ? (L->self ? "tcp" : "shm") : "none", n, repl_failover_state(),
               L && !L->self ? L->log.hdr->replid : id);
    info_replid2(b);
    buf_printf(b,
               "master_repl_offset:%llu\r\nrepl_backlog_active:%d\r\n"
               "sync_full:%llu\r\nsync_partial_ok:%llu\r\nsync_partial_err:%llu\r\n"
               "replica_full_syncs:%llu\r\nreplica_partial_syncs:%llu\r\n",
               (unsigned long long)rd, REPL_GET(repl.log_is_copy) ? 1 : 0,
               (unsigned long long)REPL_GET(repl.sync_full),
               (unsigned long long)REPL_GET(repl.sync_partial_ok),
               (unsigned long long)REPL_GET(repl.sync_partial_err),
               (unsigned long long)REPL_GET(repl.full_syncs),
               (unsigned long long)REPL_GET(repl.partial_syncs));
    uint64_t ns, p50 = repl_lag_percentile(0.50, &ns), p99 = repl_lag_percentile(0.99, &ns);
    buf_printf(b, "apply_lag_samples:%llu\r\napply_lag_p50_us:%llu\r\napply_lag_p99_us:%llu\r\n",
               (unsigned long long)ns, (unsigned long long)p50, (unsigned long long)p99);
}

void repl_info(struct buf *b, struct worker *w)
{
    if (repl_is_replica())
        info_replica(b, w);
    else
        info_master(b);
}

void srv_role(struct conn *c, struct req *req)
{
    struct reply r;
    conn_reply_begin(c, &r, req->proto, req->crlf);
    if (repl_is_replica()) {
        struct repl_link *L = c->w->link;
        reply_array(&r, 5);
        reply_bulk_cstr(&r, "slave");
        char host[256];
        repl_str_get(host, sizeof(host), repl.master_host);
        reply_bulk_cstr(&r, host);
        reply_int(&r, REPL_GET(repl.master_port));
        reply_bulk_cstr(&r, !L ? "connect"
                            : __atomic_load_n(&repl.sync_in_progress, __ATOMIC_RELAXED)
                                ? "sync"
                                : "connected");
        reply_int(&r, L ? (long long)slot_offset(&L->ctl, L->slot) : -1);
    } else {
        reply_array(&r, 3);
        reply_bulk_cstr(&r, "master");
        reply_int(&r, (long long)master_offset());
        int n = 0;
        for (int k = 0; k < CTL_MAX_REPLICAS; k++)
            n += __atomic_load_n(&repl.peers[k].active, __ATOMIC_ACQUIRE) != 0;
        reply_array(&r, n);
        for (int k = 0; k < CTL_MAX_REPLICAS; k++) {
            struct repl_peer *p = &repl.peers[k];
            if (!__atomic_load_n(&p->active, __ATOMIC_ACQUIRE))
                continue;
            char port[16], off[24];
            snprintf(port, sizeof(port), "%d", p->port);
            rk_ll2str(off, (long long)slot_offset(&repl.ctl, k));
            reply_array(&r, 3);
            reply_bulk_cstr(&r, p->addr);
            reply_bulk_cstr(&r, port);
            reply_bulk_cstr(&r, off);
        }
    }
    conn_reply_end(c, &r);
}

void srv_replicaof(struct conn *c, struct req *req)
{
    struct reply r;
    conn_reply_begin(c, &r, req->proto, req->crlf);
    const struct arg *h = &req->argv[1], *p = &req->argv[2];
    struct repl_req *rq = rk_calloc(1, sizeof(*rq));
    long long port;
    if (rk_eqi(h->p, h->len, "no") && rk_eqi(p->p, p->len, "one")) {
        rq->no_one = true;
    } else if (rk_str2ll(p->p, p->len, &port) < 0 || port <= 0 || port > 65535) {
        reply_error(&r, "ERR Invalid master port");
        conn_reply_end(c, &r);
        rk_free(rq);
        return;
    } else if (h->len >= sizeof(rq->host)) {
        reply_error(&r, "ERR Invalid master host");
        conn_reply_end(c, &r);
        rk_free(rq);
        return;
    } else {
        memcpy(rq->host, h->p, h->len);
        rq->port = (int)port;
    }
    /* The main thread picks it up on its next tick (within 100 ms). */
    struct repl_req *old = __atomic_exchange_n(&repl.pending, rq, __ATOMIC_ACQ_REL);
    rk_free(old);
    reply_ok(&r);
    conn_reply_end(c, &r);
}

void srv_shminfo(struct conn *c, struct req *req)
{
    struct reply r;
    conn_reply_begin(c, &r, req->proto, req->crlf);
    char id[64], n[24], pid[24], size[24];
    repl_boot_id(id, sizeof(id));
    rk_ll2str(n, srv.nshards);
    rk_ll2str(pid, (long long)getpid());
    rk_ll2str(size, repl.log.hdr ? (long long)repl.log.size : 0);
    reply_array(&r, 5);
    /* No Unix socket to offer (none, or this server is a replica): replicas use TCP. */
    reply_bulk_cstr(&r, repl.unix_fd >= 0 && (!repl_is_replica() || REPL_GET(repl.tcp_link))
                            ? repl.unix_path
                            : "");
    reply_bulk_cstr(&r, id);
    reply_bulk_cstr(&r, n);
    reply_bulk_cstr(&r, pid);
    reply_bulk_cstr(&r, size);
    conn_reply_end(c, &r);
}

/* RINGKV.PSYNC <replid> <shards> <ring size> <port> <pos 0> ... <pos shards-1>: a TCP replica
 * asks for the stream.  The socket leaves this worker: the main thread answers +CONTINUE or
 * +FULLRESYNC on it (net/repl_master.c) and the replication thread streams (net/repl_tcp.c). */
void srv_psync(struct conn *c, struct req *req)
{
    struct reply r;
    long long nsh, size, port;
    const char *err = NULL;
    if (!repl.log.hdr)
        err = "ERR replication is off on this server (too many threads for it)";
    else if (rk_str2ll(req->argv[2].p, req->argv[2].len, &nsh) < 0 || nsh != (long long)srv.nshards)
        err = "ERR shard count differs from the master's: restart the replica with --replicaof";
    else if (rk_str2ll(req->argv[3].p, req->argv[3].len, &size) < 0 ||
             (uint64_t)size != repl.log.size)
        err = "ERR repl-ring-size differs from the master's: restart the replica with --replicaof";
    else if (rk_str2ll(req->argv[4].p, req->argv[4].len, &port) < 0 || port < 0 || port > 65535)
        err = "ERR invalid port";
    else if (req->argc != 5 + (int)nsh || req->argv[1].len > 40)
        err = "ERR syntax error";
    struct repl_psync *ps = NULL;
    if (!err) {
        ps = rk_calloc(1, sizeof(*ps));
        ps->pos = rk_calloc(srv.nshards, sizeof(uint64_t));
        memcpy(ps->replid, req->argv[1].p, req->argv[1].len);
        ps->port = (int)port;
        for (uint32_t s = 0; s < srv.nshards && !err; s++) {
            unsigned long long v;
            if (rk_str2ull(req->argv[5 + s].p, req->argv[5 + s].len, &v) < 0)
                err = "ERR invalid position";
            ps->pos[s] = v;
        }
    }
    if (!err) {
        snprintf(ps->addr, sizeof(ps->addr), "%s", c->addr);
        char *colon = strrchr(ps->addr, ':');
        if (colon)
            *colon = '\0';
        ps->fd = conn_detach(c);
        if (ps->fd < 0)
            err = "ERR can't hand the connection over";
    }
    if (err) {
        if (ps) {
            rk_free(ps->pos);
            rk_free(ps);
        }
        conn_reply_begin(c, &r, req->proto, req->crlf);
        reply_error(&r, err);
        conn_reply_end(c, &r);
        return;
    }
    struct repl_psync *head = __atomic_load_n(&repl.psyncs, __ATOMIC_RELAXED);
    do
        ps->next = head;
    while (!__atomic_compare_exchange_n(&repl.psyncs, &head, ps, true, __ATOMIC_RELEASE,
                                        __ATOMIC_RELAXED));
}
