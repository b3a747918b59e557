/*
 * worker: one thread, one io_uring, one event loop.
 *
 * THE LOOP.  Each pass of a worker's loop:
 *
 *   1. reaps every completion: new connections (multishot accept), received bytes (multishot
 *      recv into a ring of provided buffers), finished sends, doorbells, the 100 ms tick;
 *      received bytes are parsed and executed at once (net/dispatch.c): a request for one of
 *      our shards runs here, one for another worker's shard is written into the xring to
 *      that worker;
 *   2. drains the xrings from every other worker: requests are executed and their replies
 *      written back, replies complete their connection's reply slots;
 *   3. publishes what it wrote into each outgoing xring (one release store per ring);
 *   4. starts one send per connection that has output (everything produced for it in this
 *      pass goes out in that one send);
 *   5. rings the doorbell (IORING_OP_MSG_RING, or an eventfd write on kernels without it) of
 *      each worker it wrote to that has said it is going to sleep, at most once per pass;
 *   6. submits everything with one io_uring_submit_and_wait, which waits only when there is
 *      nothing left to do.
 *
 * SLEEPING AND DOORBELLS.  Before waiting, a worker stores sleeping = 1 and then looks at its
 * incoming xrings once more; a producer publishes its records and then loads the target's
 * sleeping flag.  Both sides put a seq_cst fence between their store and their load, so at
 * least one of them sees the other's store: either the worker sees the new record and does
 * not wait, or the producer sees the flag and rings.  No wake-up is lost, and a busy worker
 * gets no doorbells at all.
 *
 * Nothing on this path blocks or takes a lock: sockets are non-blocking and all I/O goes
 * through the ring; the one wait is the submit-and-wait at the end of an idle pass.
 */
#include "net/server.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <numa.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "net/config.h"
#include "net/repl.h"

struct server srv;

enum ud_kind { UD_ACCEPT = 1, UD_RECV, UD_SEND, UD_BELL, UD_IGNORE, UD_TIMER, UD_EVENTFD };
#define UD(p, k) ((uint64_t)(uintptr_t)(p) | (uint64_t)(k))
#define UD_KIND(u) ((int)((u)&7))
#define UD_PTR(u) ((void *)(uintptr_t)((u) & ~(uint64_t)7))

#define RING_ENTRIES 4096
#define BUF_COUNT 256
#define BUF_SIZE (16 * 1024)
#define XRING_BYTES (1u << 20)
#define TICK_MS 100

/* A record that did not fit in its xring: kept in order until there is room. */
struct xmsg {
    struct xmsg *next;
    uint32_t type;
    size_t len;
    char data[];
};

/* A record too large for any xring travels by pointer: the receiver frees it. */
#define XM_INDIRECT 0xfffffff0u
struct xm_indirect {
    void *data;
    size_t len;
    uint32_t type;
};

static bool recv_multishot = true;
static bool accept_multishot = true;
static int workers_ready;

static struct io_uring_sqe *get_sqe(struct worker *w)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
    if (RK_UNLIKELY(!sqe)) {
        /* The submission queue is full: hand what we have to the kernel and retry. */
        io_uring_submit(&w->ring);
        sqe = io_uring_get_sqe(&w->ring);
        rk_assert(sqe != NULL);
    }
    return sqe;
}

/* ---- listeners and connections ---------------------------------------------------------- */

static int listen_on(const char *addr, int port, bool reuseport)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_PASSIVE};
    struct addrinfo *res;
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", port);
    int rc = getaddrinfo(addr, portstr, &hints, &res);
    if (rc != 0) {
        rk_log(RK_LOG_WARNING, "can't resolve bind address %s: %s", addr, gai_strerror(rc));
        return -EINVAL;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        freeaddrinfo(res);
        return rc;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    /* Accepted sockets inherit TCP_NODELAY from the listener on Linux. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (res->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 511) < 0) {
        rc = -errno;
        close(fd);
        freeaddrinfo(res);
        return rc;
    }
    freeaddrinfo(res);
    return fd;
}

int server_probe_bind(const char *addr, int port)
{
    return listen_on(addr, port, false);
}

static void arm_accept(struct worker *w, int idx)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    if (accept_multishot)
        io_uring_prep_multishot_accept(sqe, w->listen_fds[idx], NULL, NULL, SOCK_CLOEXEC);
    else
        io_uring_prep_accept(sqe, w->listen_fds[idx], NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, ((uint64_t)idx << 3) | UD_ACCEPT);
}

static void arm_recv(struct conn *c)
{
    struct io_uring_sqe *sqe = get_sqe(c->w);
    if (recv_multishot)
        io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    else
        io_uring_prep_recv(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
    io_uring_sqe_set_data64(sqe, UD(c, UD_RECV));
    c->recv_armed = true;
    c->refs++;
}

static void addr_str(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        port = ntohs(a->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        port = ntohs(a->sin6_port);
    }
    snprintf(out, cap, "%s:%d", ip, port);
}

static void on_accept(struct worker *w, int fd)
{
    STAT_ADD(w, total_connections_received, 1);
    /* maxclients counts every worker's clients: a relaxed sum is enough for a limit. */
    uint64_t total = 0;
    for (int i = 0; i < srv.nworkers; i++)
        total += STAT_GET(srv.workers[i], connected_clients);
    if ((long long)total >= cfg_maxclients()) {
        static const char msg[] = "-ERR max number of clients reached\r\n";
        /* A fresh socket's send buffer is empty: this non-blocking write does not wait. */
        ssize_t n = send(fd, msg, sizeof(msg) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)n;
        close(fd);
        STAT_ADD(w, rejected_connections, 1);
        return;
    }
    struct conn *c = rk_calloc(1, sizeof(*c));
    c->w = w;
    c->fd = fd;
    c->id = __atomic_add_fetch(&srv.next_client_id, 1, __ATOMIC_RELAXED);
    c->ctime_ms = c->last_ms = w->now_ms;
    c->authed = cfg_requirepass()[0] == '\0';
    proto_state_init(&c->ps);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0)
        addr_str(&ss, c->addr, sizeof(c->addr));
    sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        addr_str(&ss, c->laddr, sizeof(c->laddr));
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    STAT_ADD(w, connected_clients, 1);
    rk_log(RK_LOG_VERBOSE, "accepted %s (id %llu) on worker %d", c->addr, (unsigned long long)c->id,
           w->id);
    arm_recv(c);
}

/* Give provided buffer bid back to the kernel. */
static void recycle_buf(struct worker *w, unsigned bid)
{
    io_uring_buf_ring_add(w->br, w->bufs + (size_t)bid * w->bufsz, w->bufsz, (unsigned short)bid,
                          io_uring_buf_ring_mask(w->nbufs), 0);
    io_uring_buf_ring_advance(w->br, 1);
}

static void on_recv(struct worker *w, struct conn *c, struct io_uring_cqe *cqe)
{
    bool more = cqe->flags & IORING_CQE_F_MORE;
    if (!more) {
        c->recv_armed = false;
        c->refs--;
    }
    int res = cqe->res;
    if (res > 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        if (!c->closing) {
            STAT_ADD(w, total_net_input_bytes, (uint64_t)res);
            c->last_ms = w->now_ms;
            dispatch_input(c, w->bufs + (size_t)bid * w->bufsz, (size_t)res);
        }
        recycle_buf(w, bid);
    } else if (res == -EINVAL && recv_multishot && !c->closing) {
        rk_log(RK_LOG_NOTICE, "multishot recv not supported: using single-shot recv");
        recv_multishot = false;
    } else if (res == 0 || (res < 0 && res != -ENOBUFS)) {
        if (res < 0 && res != -ECONNRESET && res != -ECANCELED)
            rk_log(RK_LOG_VERBOSE, "recv from %s: %s", c->addr, strerror(-res));
        conn_close(c);
    }
    if (!c->recv_armed && !c->closing)
        arm_recv(c);
    conn_release(c);
}

int conn_detach(struct conn *c)
{
    int fd = fcntl(c->fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    c->closing = true;
    STAT_ADD(c->w, connected_clients, (uint64_t)-1);
    /* Not conn_close: a shutdown would end the socket for the new owner too.  Cancelling the
     * recv lets the connection go (and close its own descriptor) as usual. */
    struct io_uring_sqe *sqe = get_sqe(c->w);
    io_uring_prep_cancel64(sqe, UD(c, UD_RECV), 0);
    io_uring_sqe_set_data64(sqe, UD(NULL, UD_IGNORE));
    return fd;
}

static void start_send(struct worker *w, struct conn *c)
{
    struct buf t = c->out;
    c->out = c->pend;
    c->pend = t;
    c->pend.len = 0;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_send(sqe, c->fd, c->out.p, c->out.len, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, UD(c, UD_SEND));
    c->sending = true;
    c->refs++;
}

static void on_send(struct worker *w, struct conn *c, int res)
{
    c->refs--;
    c->sending = false;
    if (res < 0) {
        if (res != -EPIPE && res != -ECONNRESET)
            rk_log(RK_LOG_VERBOSE, "send to %s: %s", c->addr, strerror(-res));
        c->out.len = 0;
        conn_close(c);
    } else {
        STAT_ADD(w, total_net_output_bytes, (uint64_t)res);
        if ((size_t)res < c->out.len) {
            /* Short send: the rest goes first, before anything produced since. */
            buf_consume(&c->out, (size_t)res);
            struct io_uring_sqe *sqe = get_sqe(w);
            io_uring_prep_send(sqe, c->fd, c->out.p, c->out.len, MSG_NOSIGNAL);
            io_uring_sqe_set_data64(sqe, UD(c, UD_SEND));
            c->sending = true;
            c->refs++;
        } else {
            c->out.len = 0;
            /* Don't let one huge reply pin memory for the life of the connection. */
            if (c->out.cap > (1u << 20))
                buf_free(&c->out);
            if (c->pend.len)
                conn_mark_dirty(c);
            else if (c->close_after_reply && !c->slot_head)
                conn_close(c);
        }
    }
    conn_release(c);
}

/* ---- xrings and doorbells ------------------------------------------------------------------ */

void *worker_post(struct worker *w, int to, size_t len, uint32_t type)
{
    struct xring *xr = w->out[to];
    w->ring_bell[to] = 1;
    if (len > xring_max_payload(xr)) {
        struct xm_indirect *ind = worker_post(w, to, sizeof(*ind), XM_INDIRECT);
        ind->data = rk_malloc(len);
        ind->len = len;
        ind->type = type;
        return ind->data;
    }
    if (!w->ovf_head[to]) {
        void *p = xring_reserve(xr, len, type);
        if (p)
            return p;
    }
    struct xmsg *m = rk_malloc(sizeof(*m) + len);
    m->next = NULL;
    m->type = type;
    m->len = len;
    if (w->ovf_tail[to])
        w->ovf_tail[to]->next = m;
    else
        w->ovf_head[to] = m;
    w->ovf_tail[to] = m;
    return m->data;
}

static void flush_overflow(struct worker *w, int to)
{
    struct xmsg *m;
    while ((m = w->ovf_head[to])) {
        void *p = xring_reserve(w->out[to], m->len, m->type);
        if (!p)
            return;
        memcpy(p, m->data, m->len);
        w->ovf_head[to] = m->next;
        if (!m->next)
            w->ovf_tail[to] = NULL;
        rk_free(m);
    }
}

static void handle_record(struct worker *w, int from, uint32_t type, const void *p, size_t len)
{
    if (type == XM_INDIRECT) {
        const struct xm_indirect *ind = p;
        handle_record(w, from, ind->type, ind->data, ind->len);
        rk_free(ind->data);
    } else if (type == XM_REPLY) {
        dispatch_remote_reply(w, p, len);
    } else if (type == XM_REPLY_SYNC) {
        dispatch_remote_reply_sync(w, p, len);
    } else {
        dispatch_remote_other(w, from, type, p, len);
    }
}

#define XR_PREFETCH_FAR 8
#define XR_PREFETCH_NEAR 4

/* Run what other workers sent us.  Bounded: at most what each ring held when we looked. */
static bool drain_xrings(struct worker *w)
{
    bool any = false;
    for (int j = 0; j < srv.nworkers; j++) {
        if (j == w->id)
            continue;
        struct xring *xr = w->in[j];
        size_t len;
        uint32_t type;
        void *p;
        int budget = 65536;
        /* Two cursors run ahead of the record being handled: the far one starts loading the
         * table slots of the requests it passes, the near one their entries, so the lookups
         * of a batch of requests overlap their cache misses (shard_prefetch). */
        uint64_t far = xring_head(xr), near = far;
        int nfar = 0, nnear = 0; /* records from the one being handled up to each cursor */
        while (budget-- > 0 && (p = xring_peek(xr, &len, &type))) {
            size_t l;
            uint32_t t;
            void *q;
            for (; nfar < XR_PREFETCH_FAR && (q = xring_peek_next(xr, &far, &l, &t)); nfar++)
                if (t == XM_REQUEST)
                    dispatch_prefetch_request(q, 0);
            for (; nnear < XR_PREFETCH_NEAR && (q = xring_peek_next(xr, &near, &l, &t)); nnear++)
                if (t == XM_REQUEST)
                    dispatch_prefetch_request(q, 1);
            handle_record(w, j, type, p, len);
            xring_consume(xr, len);
            nfar -= nfar > 0;
            nnear -= nnear > 0;
            any = true;
        }
    }
    return any;
}

static bool xrings_readable(struct worker *w)
{
    for (int j = 0; j < srv.nworkers; j++)
        if (j != w->id && xring_readable(w->in[j]))
            return true;
    return false;
}

static void ring_bells(struct worker *w)
{
    bool fenced = false;
    for (int j = 0; j < srv.nworkers; j++) {
        if (!w->ring_bell[j])
            continue;
        flush_overflow(w, j);
        xring_publish(w->out[j]);
        if (w->ovf_head[j])
            continue; /* stays set: retry next pass */
        w->ring_bell[j] = 0;
        if (!fenced) {
            /* Our tail stores before the loads of the targets' sleeping flags (see top). */
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            fenced = true;
        }
        struct worker *t = srv.workers[j];
        if (!__atomic_load_n(&t->sleeping, __ATOMIC_RELAXED))
            continue;
        if (srv.use_msg_ring) {
            struct io_uring_sqe *sqe = get_sqe(w);
            io_uring_prep_msg_ring(sqe, t->ring_fd, 0, UD(NULL, UD_BELL), 0);
            io_uring_sqe_set_data64(sqe, UD(NULL, UD_IGNORE));
        } else {
            uint64_t one = 1;
            ssize_t n = write(t->event_fd, &one, sizeof(one)); /* eventfd: never blocks here */
            (void)n;
        }
    }
}

static void arm_eventfd(struct worker *w)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_read(sqe, w->event_fd, &w->event_val, sizeof(w->event_val), 0);
    io_uring_sqe_set_data64(sqe, UD(NULL, UD_EVENTFD));
}

static void arm_timer(struct worker *w)
{
    /* A faster tick while replies wait for replicas, so sync-timeout is kept to ~10 ms. */
    w->tick.tv_sec = 0;
    w->tick.tv_nsec =
        w->walk_paced ? REPL_WALK_PERIOD_US * 1000L : (w->sync_held ? 10 : TICK_MS) * 1000000L;
    w->tick_fast = w->tick.tv_nsec <= 10 * 1000000L;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_timeout(sqe, &w->tick, 0, 0);
    io_uring_sqe_set_data64(sqe, UD(NULL, UD_TIMER));
}

/* Replies began to wait for replicas while the armed tick is the slow one: bring it to 10 ms
 * from now (IORING_OP_TIMEOUT_REMOVE with IORING_TIMEOUT_UPDATE), so that a sync-timeout or a
 * WAIT's timeout is not kept waiting up to TICK_MS.  Had the tick just fired, the update
 * finds nothing, and arm_timer picks the fast period anyway. */
static void hurry_timer(struct worker *w)
{
    w->hurry_ts.tv_sec = 0;
    w->hurry_ts.tv_nsec = 10 * 1000000L;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_timeout_update(sqe, &w->hurry_ts, UD(NULL, UD_TIMER), 0);
    io_uring_sqe_set_data64(sqe, UD(NULL, UD_IGNORE));
    w->tick_fast = true;
}

/* Every 100 ms: active expiry and resize work on our shards, idle clients, stop requests. */
static void on_tick(struct worker *w)
{
    if (w->now_ms - w->last_tick_ms < TICK_MS)
        return; /* a fast tick for sync-timeout only: the loop already ran sync_progress */
    w->last_tick_ms = w->now_ms;
    bool replica = repl_is_replica();
    bool logging = repl_logging();
    for (uint32_t s = (uint32_t)w->id; s < srv.nshards; s += (uint32_t)srv.nworkers) {
        if (replica) {
            /* Replicas never expire keys themselves: the master's DEL records do. */
            shard_rehash_step(srv.shards[s], 4096);
            continue;
        }
        w->cur_shard = s;
        /* Expire in bounded slices; go on (up to 16 slices) only while a quarter or more of
         * what we looked at had expired, as Redis's active expire cycle does. */
        for (int round = 0; round < 16; round++) {
            size_t n = shard_expire_step(srv.shards[s], w->now_ms, 256,
                                         logging ? repl_on_expire : NULL, w);
            __atomic_store_n(&w->ks.expired_keys,
                             __atomic_load_n(&w->ks.expired_keys, __ATOMIC_RELAXED) + n,
                             __ATOMIC_RELAXED);
            if (n < 64)
                break;
        }
        shard_rehash_step(srv.shards[s], 4096);
    }
    long long idle = cfg_timeout();
    if (idle > 0) {
        for (struct conn *c = w->conns; c; c = c->next) {
            if (!c->closing && w->now_ms - c->last_ms > idle * 1000) {
                rk_log(RK_LOG_VERBOSE, "closing idle client %s", c->addr);
                conn_close(c);
            }
        }
    }
    if (__atomic_load_n(&srv.stop, __ATOMIC_RELAXED))
        w->stop = true;
}

static void handle_cqe(struct worker *w, struct io_uring_cqe *cqe)
{
    uint64_t ud = cqe->user_data;
    switch (UD_KIND(ud)) {
    case UD_ACCEPT: {
        int idx = (int)(ud >> 3);
        if (cqe->res >= 0)
            on_accept(w, cqe->res);
        else if (cqe->res == -EINVAL && accept_multishot) {
            rk_log(RK_LOG_NOTICE, "multishot accept not supported: using single-shot accept");
            accept_multishot = false;
        } else if (cqe->res != -ECANCELED)
            rk_log(RK_LOG_WARNING, "accept: %s", strerror(-cqe->res));
        if (!(cqe->flags & IORING_CQE_F_MORE) && !w->stop)
            arm_accept(w, idx);
        break;
    }
    case UD_RECV:
        on_recv(w, UD_PTR(ud), cqe);
        break;
    case UD_SEND:
        on_send(w, UD_PTR(ud), cqe->res);
        break;
    case UD_TIMER:
        on_tick(w);
        if (!w->stop)
            arm_timer(w);
        break;
    case UD_EVENTFD:
        if (!w->stop)
            arm_eventfd(w);
        break;
    default: /* UD_BELL: the records are drained below; UD_IGNORE */
        break;
    }
}

static void flush_dirty(struct worker *w)
{
    struct conn *c;
    while ((c = w->dirty)) {
        w->dirty = c->next_dirty;
        c->dirty = false;
        if (!c->sending && c->pend.len && c->fd >= 0)
            start_send(w, c);
        else if (!c->sending && !c->pend.len && c->close_after_reply && !c->slot_head)
            conn_close(c);
        c->refs--; /* the flush list's reference */
        conn_release(c);
    }
}

/* ---- set-up -------------------------------------------------------------------------------- */

static int setup_ring(struct worker *w)
{
    struct io_uring_params p;
    unsigned tries[] = {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                        IORING_SETUP_COOP_TASKRUN, 0};
    int rc = -EINVAL;
    for (size_t i = 0; i < RK_ARRAY_LEN(tries); i++) {
        memset(&p, 0, sizeof(p));
        p.flags = tries[i] | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE;
        p.cq_entries = RING_ENTRIES * 4;
        rc = io_uring_queue_init_params(RING_ENTRIES, &w->ring, &p);
        if (rc == -EINVAL) {
            p.flags &= ~IORING_SETUP_SUBMIT_ALL; /* older kernels */
            memset(&p, 0, sizeof(p));
            p.flags = tries[i] | IORING_SETUP_CQSIZE;
            p.cq_entries = RING_ENTRIES * 4;
            rc = io_uring_queue_init_params(RING_ENTRIES, &w->ring, &p);
        }
        if (rc == 0) {
            if (w->id == 0)
                srv.ring_flags = p.flags;
            break;
        }
    }
    if (rc < 0)
        return rc;
    w->ring_fd = w->ring.ring_fd;
    if (w->id == 0) {
        struct io_uring_probe *probe = io_uring_get_probe_ring(&w->ring);
        srv.use_msg_ring = probe && io_uring_opcode_supported(probe, IORING_OP_MSG_RING);
        if (probe)
            io_uring_free_probe(probe);
    }
    return 0;
}

static int setup_bufs(struct worker *w)
{
    w->nbufs = BUF_COUNT;
    w->bufsz = BUF_SIZE;
    size_t rsz = w->nbufs * sizeof(struct io_uring_buf);
    void *mem = mmap(NULL, rsz, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED)
        return -errno;
    w->br = mem;
    struct io_uring_buf_reg reg = {
        .ring_addr = (uint64_t)(uintptr_t)mem, .ring_entries = w->nbufs, .bgid = 0};
    int rc = io_uring_register_buf_ring(&w->ring, &reg, 0);
    if (rc < 0)
        return rc;
    io_uring_buf_ring_init(w->br);
    w->bufs = rk_malloc((size_t)w->nbufs * w->bufsz);
    for (unsigned i = 0; i < w->nbufs; i++)
        io_uring_buf_ring_add(w->br, w->bufs + (size_t)i * w->bufsz, w->bufsz, (unsigned short)i,
                              io_uring_buf_ring_mask(w->nbufs), (int)i);
    io_uring_buf_ring_advance(w->br, (int)w->nbufs);
    return 0;
}

static int setup_listeners(struct worker *w)
{
    if (cfg.port == 0)
        return 0;
    char *copy = rk_strndup(cfg.bind, strlen(cfg.bind));
    char *save = NULL;
    for (char *a = strtok_r(copy, " ", &save); a; a = strtok_r(NULL, " ", &save)) {
        int fd = listen_on(a, cfg.port, true);
        if (fd < 0) {
            rk_log(RK_LOG_WARNING, "can't listen on %s:%d: %s", a, cfg.port, strerror(-fd));
            rk_free(copy);
            return fd;
        }
        w->listen_fds = rk_realloc(w->listen_fds, sizeof(int) * (size_t)(w->nlisten + 1));
        w->listen_fds[w->nlisten++] = fd;
    }
    rk_free(copy);
    return 0;
}

/* Pin to w->cpu, chosen by workers_start among the CPUs the process may use. */
static void pin(struct worker *w)
{
    cpu_set_t set;
    if (w->cpu < 0)
        return;
    CPU_ZERO(&set);
    CPU_SET(w->cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0)
        w->cpu = -1;
    /* Allocate from the CPU's own node where there is more than one. */
    if (w->cpu >= 0 && numa_available() >= 0 && numa_max_node() > 0)
        numa_set_preferred(numa_node_of_cpu(w->cpu));
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    pin(w);
    int rc = setup_ring(w);
    if (rc < 0) {
        rk_log(RK_LOG_WARNING, "worker %d: io_uring set-up failed: %s", w->id, strerror(-rc));
        goto fail;
    }
    rc = setup_bufs(w);
    if (rc < 0) {
        rk_log(RK_LOG_WARNING,
               "worker %d: provided buffer ring failed (%s): ringkv needs Linux 5.19 or later",
               w->id, strerror(-rc));
        goto fail;
    }
    if (setup_listeners(w) < 0)
        goto fail;
    __atomic_add_fetch(&workers_ready, 1, __ATOMIC_SEQ_CST);
    /* Wait for every worker's ring to exist before anyone may ring a doorbell. */
    while (__atomic_load_n(&workers_ready, __ATOMIC_SEQ_CST) < srv.nworkers) {
        if (__atomic_load_n(&workers_ready, __ATOMIC_SEQ_CST) < 0)
            return NULL;
        sched_yield();
    }
    for (int i = 0; i < w->nlisten; i++)
        arm_accept(w, i);
    arm_eventfd(w); /* doorbells without MSG_RING, and wake-ups from replication peers */
    arm_timer(w);
    w->now_ms = rk_now_ms();

    while (!w->stop) {
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        w->now_ms = rk_now_ms();
        ring_set_clock(rk_mono_ns());
        /* A replica applies its master's log before the requests of the pass; a link that
         * changed is dealt with first too, so that a promoted replica applies what its log
         * still holds before it takes a write. */
        if (repl_is_replica() || w->link ||
            __atomic_load_n(&repl.link_epoch, __ATOMIC_ACQUIRE) != w->link_epoch_seen)
            repl_replica_pass(w);
        /* While replicas follow, each completion's records carry the time it was handled,
         * not the pass's start: a replica's apply lag counts from when a record was written. */
        bool stamp = repl_logging();
        io_uring_for_each_cqe(&w->ring, head, cqe)
        {
            if (stamp)
                ring_set_clock(rk_mono_ns());
            handle_cqe(w, cqe);
            n++;
        }
        io_uring_cq_advance(&w->ring, n);
        w->pass_cqes = n;
        __atomic_store_n(&w->passes, w->passes + 1, __ATOMIC_RELAXED);
        if (stamp)
            ring_set_clock(rk_mono_ns());
        drain_xrings(w);
        if (!repl_is_replica())
            repl_master_pass(w);
        /* On a replica too: what waited when this server was demoted is answered. */
        sync_progress(w);
        if (w->sync_held > 0 && !w->tick_fast)
            hurry_timer(w);
        flush_dirty(w);
        ring_bells(w);
        if (w->stop || __atomic_load_n(&srv.stop, __ATOMIC_RELAXED))
            break;
        {
            /* Sleep only if nothing arrived meanwhile (see SLEEPING AND DOORBELLS). */
            __atomic_store_n(&w->sleeping, 1, __ATOMIC_RELAXED);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            bool busy =
                xrings_readable(w) || w->dirty ||
                (repl_is_replica() ? repl_replica_busy(w) : repl_master_busy(w) || sync_busy(w));
            for (int j = 0; j < srv.nworkers && !busy; j++)
                busy = w->ring_bell[j];
            /* Busy: no wait, but with DEFER_TASKRUN completions (new requests) are only
             * posted when we enter the kernel asking for events: a plain submit with nothing
             * to submit would not, and a long busy stretch (a full sync's walk) would starve
             * every connection. */
            if (busy || io_uring_cq_ready(&w->ring))
                io_uring_submit_and_get_events(&w->ring);
            else
                io_uring_submit_and_wait(&w->ring, 1);
            __atomic_store_n(&w->sleeping, 0, __ATOMIC_RELAXED);
        }
    }
    return NULL;
fail:
    __atomic_store_n(&workers_ready, -1000000, __ATOMIC_SEQ_CST);
    server_request_stop();
    return NULL;
}

void server_request_stop(void)
{
    __atomic_store_n(&srv.stop, 1, __ATOMIC_SEQ_CST);
}

int workers_start(void)
{
    srv.nworkers = cfg.threads;
    srv.nshards = (uint32_t)cfg.shards;
    srv.shard_bits = 0;
    while ((1u << srv.shard_bits) < srv.nshards)
        srv.shard_bits++;
    srv.shards = rk_calloc(srv.nshards, sizeof(*srv.shards));
    for (uint32_t s = 0; s < srv.nshards; s++)
        srv.shards[s] = shard_new();
    srv.workers = rk_calloc((size_t)srv.nworkers, sizeof(*srv.workers));
    int W = srv.nworkers;
    for (int i = 0; i < W; i++) {
        struct worker *w = rk_calloc(1, sizeof(*w));
        w->id = i;
        w->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        w->in = rk_calloc((size_t)W, sizeof(*w->in));
        w->out = rk_calloc((size_t)W, sizeof(*w->out));
        w->ovf_head = rk_calloc((size_t)W, sizeof(*w->ovf_head));
        w->ovf_tail = rk_calloc((size_t)W, sizeof(*w->ovf_tail));
        w->ring_bell = rk_calloc((size_t)W, 1);
        w->rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1) ^ (uint64_t)rk_now_us();
        w->walks = rk_calloc(srv.nshards / (uint32_t)W + 1, sizeof(*w->walks));
        srv.workers[i] = w;
    }
    for (int i = 0; i < W; i++)
        for (int j = 0; j < W; j++)
            if (i != j) {
                struct xring *xr = xring_new(XRING_BYTES);
                srv.workers[i]->out[j] = xr;
                srv.workers[j]->in[i] = xr;
            }
    dispatch_init();
    if (repl_init() < 0) {
        __atomic_store_n(&workers_ready, -1000000, __ATOMIC_SEQ_CST);
        return -EIO;
    }
    /* Worker i runs on the i-th CPU this process may use (round robin when there are more
     * workers than CPUs): under `taskset -c 4-7` the workers stay on 4-7, so a master and a
     * same-host replica given disjoint CPU sets never share one. */
    static int cpus[1024];
    int ncpus = rk_cpus_allowed(cpus, 1024);
    char list[128];
    size_t at = 0;
    list[0] = 0;
    for (int i = 0; i < W; i++) {
        srv.workers[i]->cpu = cpus[i % ncpus];
        if (at < sizeof(list) - 16)
            at += (size_t)snprintf(list + at, sizeof(list) - at, "%s%d", i ? "," : "",
                                   srv.workers[i]->cpu);
        else if (at < sizeof(list) - 4)
            at += (size_t)snprintf(list + at, sizeof(list) - at, "...");
    }
    rk_log(RK_LOG_NOTICE, "workers pinned to CPUs %s (of %d this process may use)", list, ncpus);
    for (int i = 0; i < W; i++) {
        int rc = pthread_create(&srv.workers[i]->thread, NULL, worker_main, srv.workers[i]);
        if (rc != 0) {
            rk_log(RK_LOG_WARNING, "can't start worker %d: %s", i, strerror(rc));
            return -rc;
        }
    }
    while (__atomic_load_n(&workers_ready, __ATOMIC_SEQ_CST) >= 0 &&
           __atomic_load_n(&workers_ready, __ATOMIC_SEQ_CST) < W)
        usleep(1000);
    return __atomic_load_n(&workers_ready, __ATOMIC_SEQ_CST) == W ? 0 : -EIO;
}

void workers_stop_and_join(void)
{
    server_request_stop();
    for (int i = 0; i < srv.nworkers; i++)
        pthread_join(srv.workers[i]->thread, NULL);
    for (int i = 0; i < srv.nworkers; i++) {
        struct worker *w = srv.workers[i];
        while (w->conns) {
            struct conn *c = w->conns;
            w->conns = c->next;
            conn_free_final(c);
        }
        conn_slot_pool_free(w);
        for (int j = 0; j < w->nlisten; j++)
            close(w->listen_fds[j]);
        if (w->ring_fd > 0)
            io_uring_queue_exit(&w->ring);
    }
}
