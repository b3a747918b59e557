/*
 * repl_tcp: replication over TCP, both ends, on one thread of its own ("the replication
 * thread", one per process, with its own io_uring; it is never on a request's path).
 *
 * MASTER END.  A replica connects to the master's port and sends RINGKV.PSYNC (its
 * replication id and, per shard, the position it has); the worker that reads it hands the
 * socket to the main thread (net/repl_master.c), which answers +CONTINUE or +FULLRESYNC, takes
 * a replica slot in the control region as a same-host replica would, and hands the socket
 * here.  From then on this thread is that replica's reader of the log: per loop pass it sends
 * each replica one batch, a sendmsg whose iovecs point straight into the log's mapping
 * (sendmsg_zc for large batches where the kernel has it), and it writes the positions the
 * replica acknowledges into the slot, where the sync modes and the walks read them.
 *
 * THE STREAM (master to replica) is a sequence of messages, each a 24-byte struct wire_hdr:
 *   DATA    shard, pos, len, then len raw log bytes: the frames of the master's log from pos
 *   COMMIT  shard, pos: every DATA byte of the shard below pos was intact when it was sent
 *   RESET   shard, pos: full sync: the shard's log starts at pos (the walk's start)
 *   WALKEND shard, pos: full sync: the walk of the shard ended at pos
 *   WALKSTART shard, pos: a walk the replica asked for (for a replica of its own, see
 *           CASCADING) starts at pos, in the stream it already follows
 *   PING    nothing: sent when there has been nothing else for a while
 * and from replica to master ACK messages: per shard the position received (published in
 * its own log) and the position applied.
 *
 * Why COMMIT: the writer of a ring never waits for a reader, so bytes handed to the kernel by
 * reference could be overwritten while a send copies them.  After a batch completes (for a
 * zero-copy send, after the kernel's notification that it let go of the pages), this thread
 * checks each shard's `reserve` as any reader does (shm/ring.h); only then does it send a
 * COMMIT for those bytes, and the replica publishes nothing that is not committed.  A batch
 * the writer lapped is never committed: the master cuts the replica, which comes back with a
 * full sync.  So a ring's capacity (repl-ring-size) is the limit of how far a replica may fall
 * behind: the master never buffers a replica's stream anywhere else.
 *
 * CASCADING.  A TCP replica can have replicas of its own, over TCP and through shared memory:
 * they read its copy of the log like any log.  Only a master's workers can walk their shards,
 * so for a full sync of such a replica, its master is asked (a counter in the ACKs) for a walk
 * into the stream the replica already follows; WALKSTART and WALKEND mark where it is, and the
 * replica's own replicas start reading there.  While one of them is in a full sync the
 * receiver does not overwrite what it has not read yet (TCP pushes back up the chain).
 *
 * REPLICA END.  The replica's main thread connects, handshakes and hands the socket here.  This
 * thread writes the bytes it receives into the replica's own log, at the same positions (both
 * have the same ring size and shard count), checks every frame of a committed range, and
 * publishes it; the replica's workers apply their shards from that log exactly as a same-host
 * replica applies the master's (net/repl_replica.c, with a "self" link).  Because the copy is
 * byte for byte, positions mean the same on both, which is what makes partial resyncs, and
 * promotion without a full copy, work.  It stops reading the socket while the workers are a
 * ring behind (TCP pushes back on the master), and acknowledges received and applied
 * positions, coalesced: at most one ACK in flight, at least every 250 ms.
 */
#include "net/repl.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/config.h"
#include "net/server.h"

#define WIRE_MAGIC 0x52455032u /* "REP2": log frames with checks (shm/ring.h) */
#define BATCH_BYTES (1u << 20)
#define MAX_IOV 512
#define ZC_MIN 65536
#define PING_MS 250
#define ACK_MS 250
#define PEER_TIMEOUT_MS 3000
#define RXBUF (256u * 1024)

enum { UDT_EVENT = 1, UDT_TXSEND, UDT_TXRECV, UDT_RXRECV, UDT_RXSEND, UDT_IGNORE };
#define UDT(p, k) ((uint64_t)(uintptr_t)(p) | (uint64_t)(k))
#define UDT_KIND(u) ((int)((u)&7))
#define UDT_PTR(u) ((void *)(uintptr_t)((u) & ~(uint64_t)7))

struct tx {
    struct tx *next;
    int fd, slot;
    bool zc;           /* zero-copy sends are worth it (not over loopback, where the kernel
                        * copies anyway and only reports later) */
    bool walking;      /* a walk for it is under way (its full sync, or one it asked for) */
    uint32_t walk_gen; /* walks the replica asked for, as last seen (UINT32_MAX: no ACK yet) */
    bool walk_pending; /* it asked for one while another was under way */
    bool dead;         /* cut: waiting for in-flight operations before closing */
    const char *why;   /* why it was cut */
    int ops;           /* operations in flight */
    uint64_t *sent;    /* per shard: next position to send */
    uint64_t *verify;  /* per shard: verified, COMMIT not sent yet (0 = none) */
    uint8_t *started, *walkend_sent, *walkstart_sent;
    uint32_t rr; /* shard to start the next batch at */
    /* the batch in flight */
    bool sending;
    int notifs;            /* zero-copy notifications still to come */
    struct wire_hdr *hdrs; /* MAX_IOV headers */
    struct iovec *iov;     /* MAX_IOV */
    int niov, iov_at;      /* iovecs, and the first one not fully sent */
    struct msghdr mh;
    struct chunk {
        uint32_t s;
        uint64_t from, to;
    } * chunks;
    int nchunks;
    /* acks */
    char *rbuf; /* room for two ACKs */
    size_t rcap, rlen;
    bool recv_armed;
    int64_t last_send_ms, last_ack_ms;
};

struct rx {
    int fd;
    bool full;
    bool dead;
    const char *why;
    int ops;
    char *buf;
    size_t len, off;
    bool recv_armed;
    uint64_t *recv;      /* per shard: end of what was written into our log */
    uint64_t *pub;       /* per shard: published (committed) end */
    uint64_t *walkstart; /* per shard: a walk's start + 1 not yet handed out (0: none) */
    uint64_t *walkend;   /* per shard: its end + 1, handed out after the start */
    uint8_t *started;
    /* the DATA message being copied */
    uint32_t cur_s;
    uint64_t cur_pos;
    size_t cur_left;
    bool throttled;
    /* acks */
    char *abuf;
    size_t alen;
    bool ack_inflight;
    uint64_t acked_sum;
    int64_t last_ack_ms, last_rx_ms;
};

static struct {
    pthread_t thread;
    bool running;
    struct io_uring ring;
    int efd;
    uint64_t eval;
    pthread_mutex_t mu; /* guards the hand-over fields below (main thread <-> this one) */
    struct tx *tx_new;  /* sessions handed over, not yet started */
    int rx_new_fd;      /* upstream socket handed over, -1 if none */
    bool rx_new_full;
    bool rx_stop; /* main thread: drop the upstream link */
    struct tx *txs;
    struct rx *rx;
    bool zc_ok;
    int stop;
} T = {.efd = -1, .rx_new_fd = -1, .mu = PTHREAD_MUTEX_INITIALIZER, .zc_ok = true};

uint32_t repl_rx_waiting; /* set by this thread before it sleeps: workers ring repl_tcp_efd */
int repl_tcp_efd = -1;

static struct io_uring_sqe *sqe_get(void)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&T.ring);
    if (!sqe) {
        io_uring_submit(&T.ring);
        sqe = io_uring_get_sqe(&T.ring);
    }
    return sqe;
}

static void kick(void)
{
    uint64_t one = 1;
    ssize_t n = write(T.efd, &one, sizeof(one));
    (void)n;
}

static uint64_t ring_size(void)
{
    return repl.log.size;
}

/* ---- hand-over from the main thread ------------------------------------------------------- */

void repl_tcp_add_replica(int fd, int slot, bool full, const uint64_t *pos)
{
    struct tx *t = rk_calloc(1, sizeof(*t));
    uint32_t n = srv.nshards;
    t->fd = fd;
    t->slot = slot;
    t->walking = full;
    t->rcap = 2 * (sizeof(struct wire_hdr) + 16 * (size_t)n);
    t->rbuf = rk_malloc(t->rcap);
    t->walk_gen = UINT32_MAX; /* the first ACK sets the baseline */
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    t->zc = true;
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            t->zc = (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) != 127;
        else if (ss.ss_family == AF_INET6)
            t->zc = !IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr);
    }
    t->walkstart_sent = rk_calloc(n, 1);
    t->sent = rk_calloc(n, sizeof(uint64_t));
    t->verify = rk_calloc(n, sizeof(uint64_t));
    t->started = rk_calloc(n, 1);
    t->walkend_sent = rk_calloc(n, 1);
    t->hdrs = rk_calloc(MAX_IOV, sizeof(struct wire_hdr));
    t->iov = rk_calloc(MAX_IOV, sizeof(struct iovec));
    t->chunks = rk_calloc(MAX_IOV, sizeof(struct chunk));
    t->rr = 0;
    if (!full) {
        memcpy(t->sent, pos, n * sizeof(uint64_t));
        memset(t->started, 1, n);
        memset(t->walkend_sent, 1, n);
    }
    t->last_ack_ms = t->last_send_ms = rk_now_ms();
    pthread_mutex_lock(&T.mu);
    t->next = T.tx_new;
    T.tx_new = t;
    pthread_mutex_unlock(&T.mu);
    kick();
}

void repl_tcp_start_rx(int fd, bool full)
{
    pthread_mutex_lock(&T.mu);
    if (T.rx_new_fd >= 0)
        close(T.rx_new_fd);
    T.rx_new_fd = fd;
    T.rx_new_full = full;
    T.rx_stop = false;
    pthread_mutex_unlock(&T.mu);
    kick();
}

void repl_tcp_stop_rx(void)
{
    pthread_mutex_lock(&T.mu);
    if (T.rx_new_fd >= 0) {
        close(T.rx_new_fd);
        T.rx_new_fd = -1;
    }
    T.rx_stop = true;
    pthread_mutex_unlock(&T.mu);
    kick();
    /* Wait (bounded) until the thread has let go of the upstream socket: after this nothing
     * more is written into our log by it. */
    for (int i = 0; i < 2000; i++) {
        pthread_mutex_lock(&T.mu);
        bool done = !T.rx_stop;
        pthread_mutex_unlock(&T.mu);
        if (done || !T.running)
            return;
        usleep(500);
    }
    rk_log(RK_LOG_WARNING, "replication thread did not let go of the master link in 1 s");
}

/* ---- master end --------------------------------------------------------------------------- */

static void tx_cut(struct tx *t, const char *why)
{
    if (t->dead)
        return;
    t->dead = true;
    t->why = why;
    shutdown(t->fd, SHUT_RDWR); /* ends the operations in flight */
}

static void tx_arm_recv(struct tx *t)
{
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_recv(sqe, t->fd, t->rbuf + t->rlen, t->rcap - t->rlen, 0);
    io_uring_sqe_set_data64(sqe, UDT(t, UDT_TXRECV));
    t->recv_armed = true;
    t->ops++;
}

static void wake_ack_waiters(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (int m = 0; m < srv.nworkers; m++) {
        if (!__atomic_load_n(&repl.ctl.hdr->ack_waiting[m], __ATOMIC_RELAXED))
            continue;
        __atomic_store_n(&repl.ctl.hdr->ack_waiting[m], 0, __ATOMIC_RELAXED);
        uint64_t one = 1;
        ssize_t n = write(srv.workers[m]->event_fd, &one, sizeof(one));
        (void)n;
    }
}

static void tx_on_ack(struct tx *t, const struct wire_hdr *h, const char *p)
{
    uint32_t n = srv.nshards;
    uint64_t *app = ctl_applied(&repl.ctl, t->slot), *rcv = ctl_received(&repl.ctl, t->slot);
    bool moved_rcv = false, moved_app = false;
    for (uint32_t s = 0; s < n; s++) {
        uint64_t r, a;
        memcpy(&r, p + 16 * s, 8);
        memcpy(&a, p + 16 * s + 8, 8);
        /* Never further than what was sent, never backwards. */
        if (r > t->sent[s] || a > r) {
            tx_cut(t, "an acknowledgement past what was sent");
            return;
        }
        if (r > __atomic_load_n(&rcv[s], __ATOMIC_RELAXED)) {
            __atomic_store_n(&rcv[s], r, __ATOMIC_RELEASE);
            moved_rcv = true;
        }
        if (a > __atomic_load_n(&app[s], __ATOMIC_RELAXED)) {
            __atomic_store_n(&app[s], a, __ATOMIC_RELEASE);
            moved_app = true;
        }
    }
    int64_t now = rk_now_ms();
    t->last_ack_ms = now;
    struct ctl_slot *sl = ctl_slot(&repl.ctl, t->slot);
    __atomic_store_n(&sl->heartbeat_ms, (uint64_t)now, __ATOMIC_RELAXED);
    /* Workers wait for applied positions (sync mode, WAIT, throttled walks), for received ones
     * only in semi mode: an ACK that moved only what nobody waits for wakes nobody. */
    if (moved_app || (moved_rcv && cfg_sync_mode() == SYNC_SEMI))
        wake_ack_waiters();
    uint32_t gen = (uint32_t)h->pos;
    if (t->walk_gen == UINT32_MAX)
        t->walk_gen = gen; /* baseline: walks asked for before this connection are done */
    if (gen != t->walk_gen) {
        t->walk_gen = gen;
        t->walk_pending = true;
    }
    if (t->walk_pending && !t->walking) {
        /* The replica has a replica of its own to sync: walk our shards again for it, into
         * the stream it already follows (it keeps its data).  A replica passes the request
         * on to its own master, whose walk reaches us as WALKSTART/WALKEND. */
        t->walk_pending = false;
        t->walking = true;
        ctl_zero(ctl_sync_start(&repl.ctl, t->slot), 3 * (size_t)n);
        memset(t->walkstart_sent, 0, n);
        memset(t->walkend_sent, 0, n);
        __atomic_store_n(&sl->state, CTL_SYNCING, __ATOMIC_RELEASE);
        if (repl_is_replica())
            __atomic_add_fetch(&repl.walk_upstream, 1, __ATOMIC_RELEASE);
        else
            __atomic_add_fetch(&repl.walk_req, 1, __ATOMIC_RELEASE);
        rk_log(RK_LOG_NOTICE, "Replica %s:%d asks for a walk for a replica of its own",
               repl.peers[t->slot].addr, repl.peers[t->slot].port);
        return;
    }
    if (t->walking && __atomic_load_n(&sl->state, __ATOMIC_ACQUIRE) == CTL_SYNCING) {
        for (uint32_t s = 0; s < n; s++) {
            uint64_t end = __atomic_load_n(&ctl_walk_end(&repl.ctl, t->slot)[s], __ATOMIC_ACQUIRE);
            if (!end || !t->walkend_sent[s] || app[s] < end - 1)
                return;
        }
        __atomic_store_n(&sl->state, CTL_ONLINE, __ATOMIC_RELEASE);
        t->walking = false;
        rk_log(RK_LOG_NOTICE, "Synchronization with replica %s:%d succeeded",
               repl.peers[t->slot].addr, repl.peers[t->slot].port);
    }
}

static void tx_on_recv(struct tx *t, int res)
{
    t->recv_armed = false;
    t->ops--;
    if (res <= 0) {
        tx_cut(t, res == 0 ? "the replica closed the connection" : "receive error");
        return;
    }
    t->rlen += (size_t)res;
    size_t need = sizeof(struct wire_hdr) + 16 * (size_t)srv.nshards;
    size_t off = 0;
    while (!t->dead && t->rlen - off >= sizeof(struct wire_hdr)) {
        struct wire_hdr h;
        memcpy(&h, t->rbuf + off, sizeof(h));
        if (h.magic != WIRE_MAGIC || h.type != WIRE_ACK || h.len != need - sizeof(h) ||
            h.shard != srv.nshards) {
            tx_cut(t, "garbage from the replica");
            return;
        }
        if (t->rlen - off < need)
            break;
        tx_on_ack(t, &h, t->rbuf + off + sizeof(h));
        off += need;
    }
    memmove(t->rbuf, t->rbuf + off, t->rlen - off);
    t->rlen -= off;
}

static void add_hdr(struct tx *t, uint8_t type, uint32_t s, uint64_t pos, uint32_t len)
{
    struct wire_hdr *h = &t->hdrs[t->niov];
    *h = (struct wire_hdr){.magic = WIRE_MAGIC, .type = type, .shard = s, .pos = pos, .len = len};
    t->iov[t->niov++] = (struct iovec){.iov_base = h, .iov_len = sizeof(*h)};
}

/* Build and send one batch for t, if there is anything to send.  True if it sent. */
static bool tx_send(struct tx *t, int64_t now)
{
    if (t->dead || t->sending || t->notifs)
        return false;
    uint32_t n = srv.nshards;
    uint64_t size = ring_size();
    size_t total = 0;
    t->niov = t->iov_at = t->nchunks = 0;
    int k = t->slot;
    for (uint32_t s = 0; s < n && t->niov < MAX_IOV - 8; s++) {
        if (t->verify[s]) {
            add_hdr(t, WIRE_COMMIT, s, t->verify[s], 0);
            t->verify[s] = 0;
        }
        if (!t->walking || t->walkstart_sent[s] ||
            !__atomic_load_n(&ctl_start_set(&repl.ctl, k)[s], __ATOMIC_ACQUIRE))
            continue;
        t->walkstart_sent[s] = 1;
        if (!t->started[s]) {
            t->sent[s] = ctl_sync_start(&repl.ctl, k)[s];
            t->started[s] = 1;
            add_hdr(t, WIRE_RESET, s, t->sent[s], 0);
        } else {
            add_hdr(t, WIRE_WALKSTART, s, ctl_sync_start(&repl.ctl, k)[s], 0);
        }
    }
    for (uint32_t i = 0; i < n && t->niov < MAX_IOV - 8 && total < BATCH_BYTES; i++) {
        uint32_t s = (t->rr + i) % n;
        if (!t->started[s])
            continue;
        uint64_t tail = ring_tail(&repl.log, s);
        if (tail < t->sent[s] || tail - t->sent[s] > size - ring_max_payload(&repl.log)) {
            tx_cut(t, "it fell a whole log behind (repl-ring-size)");
            return false;
        }
        while (t->sent[s] < tail) {
            uint64_t from = t->sent[s];
            size_t off = (size_t)(from & (size - 1));
            size_t len = (size_t)(tail - from);
            if (len > size - off)
                len = (size_t)(size - off); /* the run stops at the ring's end (a PAD ends there) */
            add_hdr(t, WIRE_DATA, s, from, (uint32_t)len);
            t->iov[t->niov++] =
                (struct iovec){.iov_base = ring_data(&repl.log, s) + off, .iov_len = len};
            t->chunks[t->nchunks++] = (struct chunk){.s = s, .from = from, .to = from + len};
            t->sent[s] = from + len;
            total += len;
        }
        if (t->walking && t->walkstart_sent[s] && !t->walkend_sent[s]) {
            uint64_t end = __atomic_load_n(&ctl_walk_end(&repl.ctl, k)[s], __ATOMIC_ACQUIRE);
            if (end && t->sent[s] >= end - 1) {
                add_hdr(t, WIRE_WALKEND, s, end - 1, 0);
                t->walkend_sent[s] = 1;
            }
        }
        t->rr = (s + 1) % n;
    }
    if (!t->niov && now - t->last_send_ms >= PING_MS)
        add_hdr(t, WIRE_PING, 0, 0, 0);
    if (!t->niov)
        return false;
    t->last_send_ms = now;
    t->mh = (struct msghdr){.msg_iov = t->iov, .msg_iovlen = (size_t)t->niov};
    struct io_uring_sqe *sqe = sqe_get();
    bool zc = T.zc_ok && t->zc && total >= ZC_MIN;
    if (zc)
        io_uring_prep_sendmsg_zc(sqe, t->fd, &t->mh, MSG_NOSIGNAL);
    else
        io_uring_prep_sendmsg(sqe, t->fd, &t->mh, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, UDT(t, UDT_TXSEND));
    t->sending = true;
    t->ops++;
    return true;
}

/* Every byte of the batch is out (and, for zero-copy, the kernel let go of the pages): check
 * that the writer did not overwrite what was sent, and commit it. */
static void tx_batch_done(struct tx *t)
{
    uint64_t size = ring_size();
    for (int i = 0; i < t->nchunks; i++) {
        struct chunk *c = &t->chunks[i];
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        uint64_t r = __atomic_load_n(&repl.log.shards[c->s].reserve, __ATOMIC_RELAXED);
        if (r - c->from > size) {
            tx_cut(t, "the log was overwritten while it was sent (repl-ring-size)");
            return;
        }
        t->verify[c->s] = c->to;
    }
    t->nchunks = 0;
}

/* Send what is left of the batch, from iovec iov_at on, by copy. */
static void tx_send_rest(struct tx *t)
{
    t->mh =
        (struct msghdr){.msg_iov = t->iov + t->iov_at, .msg_iovlen = (size_t)(t->niov - t->iov_at)};
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_sendmsg(sqe, t->fd, &t->mh, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, UDT(t, UDT_TXSEND));
    t->sending = true;
    t->ops++;
}

static void tx_on_send(struct tx *t, struct io_uring_cqe *cqe)
{
    if (cqe->flags & IORING_CQE_F_NOTIF) {
        t->notifs--;
        t->ops--;
        if (!t->notifs && !t->sending && !t->dead)
            tx_batch_done(t);
        return;
    }
    if (cqe->flags & IORING_CQE_F_MORE) {
        t->notifs++; /* a notification follows; it counts as an operation in flight */
        t->ops++;
        if (cqe->res > 0)
            REPL_INC(repl.zc_sends); /* a zero-copy send went out */
    }
    t->sending = false;
    t->ops--;
    int res = cqe->res;
    if (res == -EOPNOTSUPP || res == -EINVAL) {
        if (T.zc_ok && !(cqe->flags & IORING_CQE_F_MORE)) {
            T.zc_ok = false; /* no zero-copy here: resend the batch by copy */
            rk_log(RK_LOG_NOTICE, "zero-copy send not available: replication sends by copy");
            tx_send_rest(t);
            return;
        }
    }
    if (res <= 0) {
        tx_cut(t, "send error");
        return;
    }
    size_t left = (size_t)res;
    while (t->iov_at < t->niov && left >= t->iov[t->iov_at].iov_len)
        left -= t->iov[t->iov_at++].iov_len;
    if (t->iov_at < t->niov) {
        /* Short send: the rest, from where it stopped. */
        t->iov[t->iov_at].iov_base = (char *)t->iov[t->iov_at].iov_base + left;
        t->iov[t->iov_at].iov_len -= left;
        tx_send_rest(t);
        return;
    }
    if (!t->notifs)
        tx_batch_done(t);
}

static void tx_free(struct tx *t)
{
    close(t->fd);
    struct repl_peer *p = &repl.peers[t->slot];
    rk_log(RK_LOG_WARNING, "Connection with replica %s:%d lost: %s", p->addr, p->port,
           t->why ? t->why : "closed");
    /* The main thread reclaims the slot. */
    __atomic_store_n(&p->tcp_closed, 1, __ATOMIC_RELEASE);
    rk_free(t->sent);
    rk_free(t->verify);
    rk_free(t->started);
    rk_free(t->walkend_sent);
    rk_free(t->walkstart_sent);
    rk_free(t->rbuf);
    rk_free(t->hdrs);
    rk_free(t->iov);
    rk_free(t->chunks);
    rk_free(t);
}

/* Is there log for t to send (or a flag to pass on)? */
static bool tx_pending(struct tx *t)
{
    for (uint32_t s = 0; s < srv.nshards; s++) {
        if (t->verify[s])
            return true;
        if (t->walking && !t->walkstart_sent[s] &&
            __atomic_load_n(&ctl_start_set(&repl.ctl, t->slot)[s], __ATOMIC_ACQUIRE))
            return true;
        if (t->started[s] && ring_tail(&repl.log, s) != t->sent[s])
            return true;
        if (t->walking && t->walkstart_sent[s] && !t->walkend_sent[s]) {
            uint64_t end = __atomic_load_n(&ctl_walk_end(&repl.ctl, t->slot)[s], __ATOMIC_ACQUIRE);
            if (end && t->sent[s] >= end - 1)
                return true;
        }
    }
    return false;
}

/* ---- replica end -------------------------------------------------------------------------- */

static void rx_cut(struct rx *r, const char *why)
{
    if (r->dead)
        return;
    r->dead = true;
    r->why = why;
    shutdown(r->fd, SHUT_RDWR);
}

static struct rx *rx_new(int fd, bool full)
{
    struct rx *r = rk_calloc(1, sizeof(*r));
    uint32_t n = srv.nshards;
    r->fd = fd;
    r->full = full;
    r->buf = rk_malloc(RXBUF);
    r->recv = rk_calloc(n, sizeof(uint64_t));
    r->pub = rk_calloc(n, sizeof(uint64_t));
    r->walkstart = rk_calloc(n, sizeof(uint64_t));
    r->walkend = rk_calloc(n, sizeof(uint64_t));
    r->started = rk_calloc(n, 1);
    r->alen = sizeof(struct wire_hdr) + 16 * (size_t)n;
    r->abuf = rk_calloc(1, r->alen);
    for (uint32_t s = 0; s < n; s++)
        r->recv[s] = r->pub[s] = ring_tail(&repl.log, s);
    if (!full)
        memset(r->started, 1, n);
    r->last_rx_ms = r->last_ack_ms = rk_now_ms();
    r->acked_sum = UINT64_MAX;
    return r;
}

static void rx_free(struct rx *r)
{
    close(r->fd);
    rk_free(r->buf);
    rk_free(r->recv);
    rk_free(r->pub);
    rk_free(r->walkstart);
    rk_free(r->walkend);
    rk_free(r->started);
    rk_free(r->abuf);
    rk_free(r);
}

static uint64_t self_applied(uint32_t s)
{
    uint64_t a = __atomic_load_n(&ctl_applied(&repl.ctl, CTL_SELF)[s], __ATOMIC_ACQUIRE);
    uint64_t st = ctl_sync_start(&repl.ctl, CTL_SELF)[s];
    return a > st ? a : st;
}

/* One of our own replicas in slot k is waiting for, or taking, a full sync. */
static bool local_syncing(int k)
{
    return __atomic_load_n(&repl.peers[k].active, __ATOMIC_ACQUIRE) &&
           __atomic_load_n(&ctl_slot(&repl.ctl, k)->state, __ATOMIC_ACQUIRE) == CTL_SYNCING;
}

/* The position in shard s's log that must not be overwritten yet: what our workers have not
 * applied, and what a replica of ours in a full sync has not (it would be lapped, and sync
 * again, forever). */
static uint64_t slowest(uint32_t s)
{
    uint64_t low = self_applied(s);
    for (int k = 0; k < CTL_MAX_REPLICAS; k++) {
        if (!local_syncing(k) ||
            !__atomic_load_n(&ctl_start_set(&repl.ctl, k)[s], __ATOMIC_ACQUIRE))
            continue;
        uint64_t a = __atomic_load_n(&ctl_applied(&repl.ctl, k)[s], __ATOMIC_ACQUIRE);
        uint64_t st = ctl_sync_start(&repl.ctl, k)[s];
        if (a < st)
            a = st;
        if (a < low)
            low = a;
    }
    return low;
}

static void wake_workers(void)
{
    struct ctl_slot *sl = ctl_slot(&repl.ctl, CTL_SELF);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (int w = 0; w < srv.nworkers; w++) {
        if (!__atomic_load_n(&sl->sleeping[w], __ATOMIC_RELAXED))
            continue;
        __atomic_store_n(&sl->sleeping[w], 0, __ATOMIC_RELAXED);
        uint64_t one = 1;
        ssize_t n = write(srv.workers[w]->event_fd, &one, sizeof(one));
        (void)n;
    }
    /* Same-host replicas of ours read our log too. */
    for (int k = 0; k < CTL_MAX_REPLICAS; k++) {
        struct repl_peer *p = &repl.peers[k];
        if (!__atomic_load_n(&p->active, __ATOMIC_ACQUIRE) || p->tcp)
            continue;
        struct ctl_slot *ps = ctl_slot(&repl.ctl, k);
        for (int rw = 0; rw < p->nworkers; rw++) {
            if (!__atomic_load_n(&ps->sleeping[rw], __ATOMIC_RELAXED))
                continue;
            __atomic_store_n(&ps->sleeping[rw], 0, __ATOMIC_RELAXED);
            uint64_t one = 1;
            ssize_t n = write(p->efds[rw], &one, sizeof(one));
            (void)n;
        }
    }
}

/* A walk's start position reaches our replicas that wait for it once our log has it. */
static void hand_out_walkstart(struct rx *r, uint32_t s)
{
    if (r->walkstart[s]) {
        if (r->pub[s] < r->walkstart[s] - 1)
            return; /* the walk's end, if it came, waits behind its start */
        uint64_t pos = r->walkstart[s] - 1;
        r->walkstart[s] = 0;
        for (int k = 0; k < CTL_MAX_REPLICAS; k++) {
            if (!local_syncing(k) || ctl_start_set(&repl.ctl, k)[s])
                continue;
            ctl_sync_start(&repl.ctl, k)[s] = pos;
            __atomic_store_n(&ctl_start_set(&repl.ctl, k)[s], 1, __ATOMIC_RELEASE);
        }
    }
    if (r->walkend[s]) {
        uint64_t end = r->walkend[s];
        r->walkend[s] = 0;
        for (int k = 0; k < CTL_MAX_REPLICAS; k++) {
            if (!local_syncing(k) || !ctl_start_set(&repl.ctl, k)[s] ||
                ctl_walk_end(&repl.ctl, k)[s])
                continue;
            __atomic_store_n(&ctl_walk_end(&repl.ctl, k)[s], end, __ATOMIC_RELEASE);
        }
    }
}

/* Parse what is in the buffer.  True if something was published. */
static bool rx_parse(struct rx *r)
{
    uint64_t size = ring_size();
    bool published = false;
    r->throttled = false;
    while (!r->dead && r->off < r->len) {
        if (r->cur_left) {
            size_t n = r->len - r->off;
            if (n > r->cur_left)
                n = r->cur_left;
            if (ring_write_raw(&repl.log, r->cur_s, r->cur_pos, r->buf + r->off, n) < 0) {
                rx_cut(r, "a run of log bytes that wraps");
                break;
            }
            r->cur_pos += n;
            r->cur_left -= n;
            r->off += n;
            r->recv[r->cur_s] = r->cur_pos;
            continue;
        }
        if (r->len - r->off < sizeof(struct wire_hdr))
            break;
        struct wire_hdr h;
        memcpy(&h, r->buf + r->off, sizeof(h));
        if (h.magic != WIRE_MAGIC || h.shard >= srv.nshards) {
            rx_cut(r, "garbage on the replication stream");
            break;
        }
        uint32_t s = h.shard;
        switch (h.type) {
        case WIRE_DATA:
            if (!r->started[s] || h.pos != r->recv[s] || h.len == 0 || h.len > size ||
                (h.pos & (size - 1)) + h.len > size || (h.pos & (RING_ALIGN - 1))) {
                rx_cut(r, "a log run that does not follow what was received");
                return published;
            }
            if (h.pos + h.len - slowest(s) > size) {
                r->throttled = true; /* our workers (or a syncing replica) are a ring behind */
                return published;
            }
            r->cur_s = s;
            r->cur_pos = h.pos;
            r->cur_left = h.len;
            break;
        case WIRE_COMMIT:
            if (!r->started[s] || h.pos < r->pub[s] || h.pos > r->recv[s] ||
                !ring_check_frames(&repl.log, s, r->pub[s], h.pos)) {
                rx_cut(r, "a committed log run that is not whole, valid frames");
                return published;
            }
            ring_publish(&repl.log, s, h.pos);
            r->pub[s] = h.pos;
            published = true;
            hand_out_walkstart(r, s);
            break;
        case WIRE_RESET:
            if (!r->full || r->started[s] || (h.pos & (RING_ALIGN - 1))) {
                rx_cut(r, "an unexpected RESET");
                return published;
            }
            /* A new history: our own TCP replicas can't continue across it. */
            for (struct tx *t = T.txs; t; t = t->next)
                tx_cut(t, "this server started a full sync with its master");
            __atomic_store_n(&repl.drop_shm_peers, 1, __ATOMIC_RELEASE); /* and the main
                                                                          * thread drops ours */
            ring_reset(&repl.log, s, h.pos);
            r->recv[s] = r->pub[s] = h.pos;
            ctl_sync_start(&repl.ctl, CTL_SELF)[s] = h.pos;
            __atomic_store_n(&ctl_start_set(&repl.ctl, CTL_SELF)[s], 1, __ATOMIC_RELEASE);
            r->started[s] = 1;
            published = true;
            break;
        case WIRE_WALKSTART:
            if (!r->started[s] || (h.pos & (RING_ALIGN - 1))) {
                rx_cut(r, "an unexpected WALKSTART");
                return published;
            }
            /* Our own replicas waiting for a full sync start there, once it is published. */
            r->walkstart[s] = h.pos + 1;
            hand_out_walkstart(r, s);
            break;
        case WIRE_WALKEND:
            if (!r->started[s] || (h.pos & (RING_ALIGN - 1)) || h.pos > r->recv[s] + size) {
                rx_cut(r, "an unexpected WALKEND");
                return published;
            }
            __atomic_store_n(&ctl_walk_end(&repl.ctl, CTL_SELF)[s], h.pos + 1, __ATOMIC_RELEASE);
            /* Our replicas get it after the walk's start (which may still wait for a COMMIT). */
            r->walkend[s] = h.pos + 1;
            hand_out_walkstart(r, s);
            break;
        case WIRE_PING:
            break;
        default:
            rx_cut(r, "an unknown message on the replication stream");
            return published;
        }
        r->off += sizeof(h);
    }
    return published;
}

static void rx_arm_recv(struct rx *r)
{
    if (r->off == r->len)
        r->off = r->len = 0;
    else if (r->off > RXBUF / 2 || r->len == RXBUF) {
        memmove(r->buf, r->buf + r->off, r->len - r->off);
        r->len -= r->off;
        r->off = 0;
    }
    if (r->len == RXBUF)
        return;
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_recv(sqe, r->fd, r->buf + r->len, RXBUF - r->len, 0);
    io_uring_sqe_set_data64(sqe, UDT(r, UDT_RXRECV));
    r->recv_armed = true;
    r->ops++;
}

/* The ACK's body (into p, when not NULL): per shard received and applied; returns a sum that
 * changes whenever either does, or the walks we ask for. */
static uint64_t ack_state(struct rx *r, char *p)
{
    uint64_t sum = 0;
    for (uint32_t s = 0; s < srv.nshards; s++) {
        uint64_t rc = r->pub[s],
                 a = __atomic_load_n(&ctl_applied(&repl.ctl, CTL_SELF)[s], __ATOMIC_ACQUIRE);
        if (!r->started[s])
            rc = a = 0;
        if (a > rc)
            a = rc;
        if (p) {
            memcpy(p + 16 * s, &rc, 8);
            memcpy(p + 16 * s + 8, &a, 8);
        }
        sum += rc * 3 + a;
    }
    return sum + __atomic_load_n(&repl.walk_upstream, __ATOMIC_ACQUIRE);
}

static void rx_send_ack(struct rx *r, int64_t now)
{
    if (r->dead || r->ack_inflight)
        return;
    uint32_t gen = __atomic_load_n(&repl.walk_upstream, __ATOMIC_ACQUIRE);
    uint64_t sum = ack_state(r, r->abuf + sizeof(struct wire_hdr));
    if (sum == r->acked_sum && now - r->last_ack_ms < ACK_MS)
        return;
    struct wire_hdr h = {.magic = WIRE_MAGIC,
                         .type = WIRE_ACK,
                         .shard = srv.nshards,
                         .pos = gen,
                         .len = (uint32_t)(16 * (size_t)srv.nshards)};
    memcpy(r->abuf, &h, sizeof(h));
    r->acked_sum = sum;
    r->last_ack_ms = now;
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_send(sqe, r->fd, r->abuf, r->alen, MSG_NOSIGNAL | MSG_WAITALL);
    io_uring_sqe_set_data64(sqe, UDT(r, UDT_RXSEND));
    r->ack_inflight = true;
    r->ops++;
}

static bool rx_acks_due(struct rx *r)
{
    return ack_state(r, NULL) != r->acked_sum;
}

/* ---- the loop ----------------------------------------------------------------------------- */

static void arm_event(void)
{
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_read(sqe, T.efd, &T.eval, sizeof(T.eval), 0);
    io_uring_sqe_set_data64(sqe, UDT(NULL, UDT_EVENT));
}

static void handle_cqe(struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    switch (UDT_KIND(ud)) {
    case UDT_EVENT:
        arm_event();
        break;
    case UDT_TXSEND:
        tx_on_send(UDT_PTR(ud), cqe);
        break;
    case UDT_TXRECV:
        tx_on_recv(UDT_PTR(ud), cqe->res);
        break;
    case UDT_RXRECV: {
        struct rx *r = UDT_PTR(ud);
        r->recv_armed = false;
        r->ops--;
        if (cqe->res <= 0)
            rx_cut(r, cqe->res == 0 ? "the master closed the connection" : "receive error");
        else {
            r->len += (size_t)cqe->res;
            r->last_rx_ms = rk_now_ms();
        }
        break;
    }
    case UDT_RXSEND: {
        struct rx *r = UDT_PTR(ud);
        r->ack_inflight = false;
        r->ops--;
        if (cqe->res != (int)r->alen)
            rx_cut(r, "send error");
        break;
    }
    }
}

static void take_handovers(void)
{
    pthread_mutex_lock(&T.mu);
    struct tx *nt = T.tx_new;
    T.tx_new = NULL;
    int fd = T.rx_new_fd;
    bool full = T.rx_new_full;
    T.rx_new_fd = -1;
    bool stop = T.rx_stop;
    pthread_mutex_unlock(&T.mu);
    while (nt) {
        struct tx *t = nt;
        nt = nt->next;
        t->next = T.txs;
        T.txs = t;
        tx_arm_recv(t);
    }
    if ((stop || fd >= 0) && T.rx)
        rx_cut(T.rx, stop ? "stopped" : "a new link");
    if (stop && !T.rx) {
        pthread_mutex_lock(&T.mu);
        T.rx_stop = false; /* nothing to stop: done */
        pthread_mutex_unlock(&T.mu);
    }
    if (fd >= 0) {
        if (T.rx) {
            /* The old one goes once its operations end; this one waits for that. */
            pthread_mutex_lock(&T.mu);
            if (T.rx_new_fd < 0) {
                T.rx_new_fd = fd;
                T.rx_new_full = full;
            } else {
                close(fd);
            }
            pthread_mutex_unlock(&T.mu);
        } else {
            T.rx = rx_new(fd, full);
        }
    }
}

static void *repl_thread(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "ringkv-repl");
    /* Nice 10, below the workers: where they share CPUs with this thread (the process was
     * given fewer CPUs than it has threads), a worker with requests to serve preempts a
     * stream, a full sync's above all, rather than waiting out its time slice. */
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), 10) != 0)
        rk_log(RK_LOG_VERBOSE, "replication thread: can't lower its priority: %s", strerror(errno));
    arm_event();
    while (!__atomic_load_n(&T.stop, __ATOMIC_ACQUIRE)) {
        struct io_uring_cqe *cqe;
        unsigned head, ncqe = 0;
        int64_t now = rk_now_ms();
        ring_set_clock(rk_mono_ns());
        io_uring_for_each_cqe(&T.ring, head, cqe)
        {
            handle_cqe(cqe);
            ncqe++;
        }
        io_uring_cq_advance(&T.ring, ncqe);
        take_handovers();
        bool work = false;

        /* upstream */
        struct rx *r = T.rx;
        if (r) {
            if (r->throttled)
                r->last_rx_ms = now; /* not reading is our choice, not the master's silence */
            if (!r->dead && now - r->last_rx_ms > PEER_TIMEOUT_MS)
                rx_cut(r, "no data from the master for 3 s");
            if (!r->dead) {
                if (rx_parse(r)) {
                    wake_workers();
                    work = true;
                }
                rx_send_ack(r, now);
                if (!r->recv_armed && !r->throttled)
                    rx_arm_recv(r);
            }
            if (r->dead && !r->ops) {
                pthread_mutex_lock(&T.mu);
                bool stopping = T.rx_stop;
                T.rx_stop = false;
                pthread_mutex_unlock(&T.mu);
                if (!stopping) {
                    rk_log(RK_LOG_WARNING, "Connection with master lost: %s", r->why);
                    __atomic_store_n(&repl.rx_lost, 1, __ATOMIC_RELEASE);
                }
                rx_free(r);
                T.rx = r = NULL;
                work = true;
            }
        }

        /* replicas */
        for (struct tx **pp = &T.txs; *pp;) {
            struct tx *t = *pp;
            if (!t->dead && now - t->last_ack_ms > PEER_TIMEOUT_MS)
                tx_cut(t, "no acknowledgement for 3 s");
            if (!t->dead && __atomic_load_n(&repl.peers[t->slot].tcp_kill, __ATOMIC_ACQUIRE))
                tx_cut(t, "dropped");
            if (t->dead && !t->ops) {
                *pp = t->next;
                tx_free(t);
                continue;
            }
            if (!t->dead && !t->recv_armed)
                tx_arm_recv(t);
            work |= tx_send(t, now);
            pp = &t->next;
        }
        if (io_uring_sq_ready(&T.ring))
            io_uring_submit(&T.ring);
        if (work || io_uring_cq_ready(&T.ring))
            continue;

        /* Sleep: flags first, then one more look (see net/repl.h, WAKE-UPS). */
        for (struct tx *t = T.txs; t; t = t->next)
            __atomic_store_n(&ctl_slot(&repl.ctl, t->slot)->sleeping[0], 1, __ATOMIC_RELAXED);
        __atomic_store_n(&repl_rx_waiting, 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        bool busy = false;
        for (struct tx *t = T.txs; t && !busy; t = t->next)
            busy = !t->dead && !t->sending && !t->notifs && tx_pending(t);
        if (r && !r->dead && (rx_acks_due(r) && !r->ack_inflight))
            busy = true;
        if (r && !r->dead && r->throttled) {
            uint64_t size = ring_size();
            struct wire_hdr h;
            if (r->len - r->off >= sizeof(h)) {
                memcpy(&h, r->buf + r->off, sizeof(h));
                busy = h.shard < srv.nshards && h.pos + h.len - slowest(h.shard) <= size;
            }
        }
        if (!busy) {
            struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 100 * 1000000L};
            io_uring_submit_and_wait_timeout(&T.ring, &cqe, 1, &ts, NULL);
        }
        __atomic_store_n(&repl_rx_waiting, 0, __ATOMIC_RELAXED);
        for (struct tx *t = T.txs; t; t = t->next)
            __atomic_store_n(&ctl_slot(&repl.ctl, t->slot)->sleeping[0], 0, __ATOMIC_RELAXED);
    }
    /* Stopping: end every operation in flight (bounded) before the memory they use goes. */
    for (struct tx *t = T.txs; t; t = t->next)
        tx_cut(t, "shutting down");
    if (T.rx)
        rx_cut(T.rx, "shutting down");
    for (int i = 0; i < 200; i++) {
        int left = T.rx ? T.rx->ops : 0;
        for (struct tx *t = T.txs; t; t = t->next)
            left += t->ops;
        if (!left)
            break;
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 5 * 1000000L};
        io_uring_submit_and_wait_timeout(&T.ring, &cqe, 1, &ts, NULL);
        unsigned head, n = 0;
        io_uring_for_each_cqe(&T.ring, head, cqe)
        {
            uint64_t ud = io_uring_cqe_get_data64(cqe);
            if (UDT_KIND(ud) != UDT_EVENT) /* the eventfd read is not re-armed now */
                handle_cqe(cqe);
            n++;
        }
        io_uring_cq_advance(&T.ring, n);
    }
    while (T.txs) {
        struct tx *t = T.txs;
        T.txs = t->next;
        t->why = "shutting down";
        tx_free(t);
    }
    if (T.rx) {
        rx_free(T.rx);
        T.rx = NULL;
    }
    return NULL;
}

int repl_tcp_init(void)
{
    int rc = io_uring_queue_init(256, &T.ring, 0);
    if (rc < 0) {
        rk_log(RK_LOG_WARNING, "replication thread: io_uring: %s", strerror(-rc));
        return -1;
    }
    T.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    repl_tcp_efd = T.efd;
    rc = pthread_create(&T.thread, NULL, repl_thread, NULL);
    if (rc != 0) {
        rk_log(RK_LOG_WARNING, "can't start the replication thread: %s", strerror(rc));
        return -1;
    }
    T.running = true;
    return 0;
}

void repl_tcp_shutdown(void)
{
    if (!T.running)
        return;
    __atomic_store_n(&T.stop, 1, __ATOMIC_RELEASE);
    kick();
    pthread_join(T.thread, NULL);
    T.running = false;
    io_uring_queue_exit(&T.ring);
    /* T.efd stays open: workers may still ring it until they stop; the exit closes it. */
    pthread_mutex_lock(&T.mu);
    while (T.tx_new) {
        struct tx *t = T.tx_new;
        T.tx_new = t->next;
        tx_free(t);
    }
    if (T.rx_new_fd >= 0)
        close(T.rx_new_fd);
    pthread_mutex_unlock(&T.mu);
}
