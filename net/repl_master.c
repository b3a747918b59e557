/*
 * repl_master: the master side of same-host replication (see net/repl.h for the design).
 *
 * Threads.  The main thread answers attach requests on the Unix socket, watches replicas'
 * heartbeats and reclaims dead ones; it never touches a shard.  Workers append records for
 * their own shards (repl_on_change), walk their shards for a full sync, and wake sleeping
 * replica workers.  The two meet only through atomics: repl.walk_req (bumped with release
 * after a slot is filled in), repl.logging, and peer.active.
 *
 * The attach exchange on the Unix socket is one line each way, with descriptors alongside
 * (SCM_RIGHTS):
 *   replica: "ATTACH <pid> <nworkers> <port> <password>\n" + its workers' eventfds
 *   master:  "OK <slot> <master workers> <shards>\n" + log memfd, control memfd, and its
 *            workers' eventfds; or "ERR <reason>\n".
 */
#include "net/repl.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "net/config.h"
#include "net/server.h"

struct repl_state repl = {.unix_fd = -1};

#define HEARTBEAT_TIMEOUT_MS 3000
#define WALK_SLICE 1024 /* entries of one shard in one go */
#define WALK_BUCKETS 64 /* home buckets per walk step, idle */
/* While clients are being served, a slice appends at most this many entries (and steps take
 * WALK_LOAD_BUCKETS buckets): what a full sync adds to the master's and the replica's work
 * per unit of time, not only its CPU share, is what its clients feel (docs/BENCHMARKS.md,
 * "Code changes measured A/B"). */
#define WALK_LOAD_ENTRIES 8
#define WALK_LOAD_BUCKETS 8

/* ---- the log ------------------------------------------------------------------------------ */

void repl_on_change(void *arg, enum ks_change what, const struct kv_entry *e, const char *key,
                    size_t klen)
{
    struct worker *w = arg;
    uint32_t s = w->cur_shard;
    uint64_t end = 0;
    w->sync_wrote = true;
    if (!repl_logging())
        return;
    if (what == KS_CHANGE_SET) {
        size_t kl, vl;
        const char *k = kv_entry_key(e, &kl);
        const char *v = kv_entry_val(e, &vl);
        end = ring_append_set(&repl.log, s, k, kl, v, vl, kv_entry_expire(e));
        if (!end) {
            /* Too large for a record (APPEND or SETRANGE grew it past a quarter ring; larger
             * requests are refused before they run): replicas drop the key rather than keep
             * an older value. */
            end = ring_append_del(&repl.log, s, k, kl);
            static uint64_t warned; /* relaxed counter: a log line now and then is enough */
            if (__atomic_fetch_add(&warned, 1, __ATOMIC_RELAXED) % 1000 == 0)
                rk_log(RK_LOG_WARNING,
                       "a value of %zu bytes is too large for the replication log "
                       "(repl-ring-size): replicas get a DEL for its key",
                       vl);
        }
    } else if (what == KS_CHANGE_DEL) {
        end = ring_append_del(&repl.log, s, key, klen);
    } else {
        end = ring_append_flush(&repl.log, s);
    }
    w->repl_appended = true;
    w->repl_last_end = end;
}

void repl_on_expire(void *arg, const struct kv_entry *e)
{
    size_t kl;
    const char *k = kv_entry_key(e, &kl);
    repl_on_change(arg, KS_CHANGE_DEL, NULL, k, kl);
}

bool repl_logging(void)
{
    return __atomic_load_n(&repl.logging, __ATOMIC_ACQUIRE) != 0;
}

/* ---- start-up ----------------------------------------------------------------------------- */

static void random_hex(char *out, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[64];
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    ssize_t got = fd >= 0 ? read(fd, raw, n / 2) : -1;
    if (fd >= 0)
        close(fd);
    uint64_t x = (uint64_t)rk_now_us() ^ (uint64_t)getpid();
    for (size_t i = 0; i < n / 2; i++) {
        if (got != (ssize_t)(n / 2)) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            raw[i] = (unsigned char)(x >> 56);
        }
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[n] = '\0';
}

static int open_unix_socket(void)
{
    const char *p = cfg.unixsocket;
    if (!p[0])
        return 0;
    if (strcmp(p, "auto") == 0) {
        if (cfg.port == 0)
            return 0;
        snprintf(repl.unix_path, sizeof(repl.unix_path), "/tmp/ringkv-%d.sock", cfg.port);
    } else {
        if (strlen(p) >= sizeof(repl.unix_path)) {
            rk_log(RK_LOG_WARNING, "unixsocket path too long: %s", p);
            return -1;
        }
        snprintf(repl.unix_path, sizeof(repl.unix_path), "%s", p);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", repl.unix_path);
    unlink(repl.unix_path);
    mode_t old = umask(0177); /* the socket is created 0600 */
    int rc = bind(fd, (struct sockaddr *)&a, sizeof(a));
    umask(old);
    if (rc < 0 || chmod(repl.unix_path, 0600) < 0 || listen(fd, 16) < 0) {
        rk_log(RK_LOG_WARNING, "can't listen on unix socket %s: %s", repl.unix_path,
               strerror(errno));
        close(fd);
        return -1;
    }
    repl.unix_fd = fd;
    return 0;
}

void repl_new_replid(char out[41])
{
    random_hex(out, 40);
}

int repl_prepare(void)
{
    random_hex(repl.replid, 40);
    repl.log_valid = true; /* a master's log is its own history */
    repl.log.fd = repl.ctl.fd = -1;
    if (!cfg.replicaof[0])
        return 0;
    char host[256];
    int port;
    if (sscanf(cfg.replicaof, "%255s %d", host, &port) != 2 || port <= 0 || port > 65535) {
        fprintf(stderr, "ringkv-server: bad value '%s' for 'replicaof': expected <host> <port>\n",
                cfg.replicaof);
        return -1;
    }
    repl_str_set(repl.master_host, sizeof(repl.master_host), host);
    __atomic_store_n(&repl.master_port, port, __ATOMIC_RELAXED);
    repl.is_replica = true;
    repl.log_valid = false; /* nothing of a master's history yet */
    __atomic_store_n(&rk_log_role, 'S', __ATOMIC_RELAXED);
    repl.link_down_since_ms = rk_now_ms();
    return repl_replica_prepare();
}

int repl_init(void)
{
    if (srv.nworkers > CTL_MAX_WORKERS) {
        rk_log(RK_LOG_WARNING, "replication is off: more than %d threads", CTL_MAX_WORKERS);
        return 0;
    }
    int rc = ring_map_create(&repl.log, srv.nshards, (size_t)cfg.repl_ring_size, repl.replid);
    if (rc == 0) {
        repl.lagh = rk_calloc(srv.nshards, sizeof(struct lag_hist));
        rc = ctl_create(&repl.ctl, srv.nshards, (uint32_t)srv.nworkers);
    }
    if (rc < 0) {
        rk_log(RK_LOG_WARNING, "can't create the replication log: %s", strerror(-rc));
        return -1;
    }
    if (repl_tcp_init() < 0)
        return -1;
    return open_unix_socket();
}

void repl_shutdown(void)
{
    repl_tcp_shutdown();
    if (repl.unix_fd >= 0) {
        close(repl.unix_fd);
        unlink(repl.unix_path);
    }
    repl_replica_shutdown();
}

/* ---- attach ------------------------------------------------------------------------------- */

static void send_reply(int fd, const char *line, const int *fds, int nfds)
{
    struct iovec iov = {.iov_base = (void *)line, .iov_len = strlen(line)};
    char cbuf[CMSG_SPACE(sizeof(int) * (CTL_MAX_WORKERS + 2))];
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        memset(cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
    }
    if (sendmsg(fd, &mh, MSG_NOSIGNAL) < 0)
        rk_log(RK_LOG_VERBOSE, "replica attach: send: %s", strerror(errno));
}

static void close_fds(int *fds, int n)
{
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* Can this replica take replicas of its own that need a full sync?  Only when it follows its
 * master over TCP (its log is then a copy of the master's, and the master can walk into it)
 * and is in sync. */
static bool cascade_ready(void)
{
    return repl.tcp_link && __atomic_load_n(&repl.link, __ATOMIC_ACQUIRE) &&
           !__atomic_load_n(&repl.sync_in_progress, __ATOMIC_RELAXED);
}

/* Take a free replica slot and fill it in; with full, ask the workers for a walk (a full sync).
 * Main thread.  Returns the slot, or -1. */
static int slot_take(int pid, int nworkers, const int *efds, int port, const char *addr, bool tcp,
                     bool full)
{
    int k = -1;
    int64_t now = rk_now_ms();
    for (int i = 0; i < CTL_MAX_REPLICAS && k < 0; i++) {
        struct ctl_slot *sl = ctl_slot(&repl.ctl, i);
        if (!__atomic_load_n(&repl.peers[i].active, __ATOMIC_ACQUIRE) &&
            __atomic_load_n(&sl->state, __ATOMIC_ACQUIRE) == CTL_FREE &&
            now - (int64_t)sl->attach_ms > 1000)
            k = i;
    }
    if (k < 0)
        return -1;
    struct repl_peer *p = &repl.peers[k];
    close_fds(p->efds, p->nworkers); /* a previous occupant's: unused for over a second */
    memcpy(p->efds, efds, sizeof(int) * (size_t)nworkers);
    p->nworkers = nworkers;
    p->pid = pid;
    p->port = port;
    p->tcp = tcp;
    p->tcp_closed = 0;
    p->tcp_kill = 0;
    p->behind_since_ms = now;
    snprintf(p->addr, sizeof(p->addr), "%s", addr);
    struct ctl_slot *sl = ctl_slot(&repl.ctl, k);
    ctl_zero(ctl_sync_start(&repl.ctl, k), 5 * (size_t)srv.nshards);
    memset(sl->sleeping, 0, sizeof(sl->sleeping));
    sl->pid = pid;
    sl->nworkers = (uint32_t)nworkers;
    sl->heartbeat_ms = (uint64_t)now;
    sl->attach_ms = (uint64_t)now;
    sl->walk_req = 0;
    __atomic_store_n(&sl->state, full ? CTL_SYNCING : CTL_ONLINE, __ATOMIC_RELEASE);
    __atomic_store_n(&p->active, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&repl.logging, 1, __ATOMIC_RELEASE);
    if (full && repl_is_replica()) {
        /* A replica's workers don't walk: its master walks into the stream it sends us, and
         * the replication thread marks where that walk starts and ends in this slot. */
        __atomic_add_fetch(&repl.walk_upstream, 1, __ATOMIC_RELEASE);
        uint64_t one = 1;
        ssize_t n = write(repl_tcp_efd, &one, sizeof(one));
        (void)n;
    } else if (full) {
        /* Release: the slot above is filled in before a worker sees the new request. */
        __atomic_add_fetch(&repl.walk_req, 1, __ATOMIC_RELEASE);
    }
    return k;
}

static void handle_attach(int fd)
{
    struct timeval tv = {.tv_sec = 1};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    char line[512];
    char cbuf[CMSG_SPACE(sizeof(int) * CTL_MAX_WORKERS)];
    struct iovec iov = {.iov_base = line, .iov_len = sizeof(line) - 1};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
    int efds[CTL_MAX_WORKERS];
    int nefd = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < k; i++) {
                int f;
                memcpy(&f, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                if (nefd < CTL_MAX_WORKERS)
                    efds[nefd++] = f;
                else
                    close(f);
            }
        }
    }
    if (n <= 0 || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
        close_fds(efds, nefd);
        return;
    }
    line[n] = '\0';
    int pid = 0, nworkers = 0, port = 0;
    char pass[256] = "";
    int got = sscanf(line, "ATTACH %d %d %d %255s", &pid, &nworkers, &port, pass);
    if (got < 3 || nworkers < 1 || nworkers != nefd || pid <= 0) {
        send_reply(fd, "ERR bad attach request\n", NULL, 0);
        close_fds(efds, nefd);
        return;
    }
    const char *pw = cfg_requirepass();
    if (pw[0] && strcmp(pw, pass) != 0) {
        rk_log(RK_LOG_WARNING, "replica pid %d: attach refused: wrong password", pid);
        send_reply(fd, "ERR invalid password\n", NULL, 0);
        close_fds(efds, nefd);
        return;
    }
    if (repl_is_replica() && !cascade_ready()) {
        send_reply(fd, "ERR this server is a replica that is not in sync over TCP with a master\n",
                   NULL, 0);
        close_fds(efds, nefd);
        return;
    }
    int k = slot_take(pid, nworkers, efds, port, "127.0.0.1", false, true);
    if (k < 0) {
        send_reply(fd, "ERR no free replica slot\n", NULL, 0);
        close_fds(efds, nefd);
        return;
    }
    int out[CTL_MAX_WORKERS + 2];
    out[0] = repl.log.fd;
    out[1] = repl.ctl.fd;
    for (int i = 0; i < srv.nworkers; i++)
        out[2 + i] = srv.workers[i]->event_fd;
    char ok[96];
    snprintf(ok, sizeof(ok), "OK %d %d %u\n", k, srv.nworkers, srv.nshards);
    send_reply(fd, ok, out, 2 + srv.nworkers);
    REPL_INC(repl.sync_full);
    rk_log(RK_LOG_NOTICE, "Replica pid %d attached through shared memory (slot %d): full sync", pid,
           k);
}

static bool pid_alive(int pid)
{
    return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

static void master_tick(void)
{
    int64_t now = rk_now_ms();
    __atomic_store_n(&repl.ctl.hdr->master_heartbeat_ms, (uint64_t)now, __ATOMIC_RELAXED);
    repl_psync_tick();
    for (int i = 0; i < 8 && repl.unix_fd >= 0; i++) {
        int fd = accept4(repl.unix_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            break;
        handle_attach(fd);
        close(fd);
    }
    uint64_t moff = 0;
    for (uint32_t s = 0; s < srv.nshards; s++)
        moff += ring_tail(&repl.log, s);
    bool drop = __atomic_exchange_n(&repl.drop_shm_peers, 0, __ATOMIC_ACQ_REL);
    for (int k = 0; k < CTL_MAX_REPLICAS; k++) {
        struct repl_peer *p = &repl.peers[k];
        if (!__atomic_load_n(&p->active, __ATOMIC_ACQUIRE))
            continue;
        struct ctl_slot *sl = ctl_slot(&repl.ctl, k);
        uint64_t off = 0;
        for (uint32_t s = 0; s < srv.nshards; s++)
            off += __atomic_load_n(&ctl_applied(&repl.ctl, k)[s], __ATOMIC_ACQUIRE);
        if (off >= moff)
            __atomic_store_n(&p->behind_since_ms, now, __ATOMIC_RELAXED);
        if (p->tcp) {
            /* The replication thread watches its own replicas; once it closed the socket the
             * slot is free again. */
            if (__atomic_load_n(&p->tcp_closed, __ATOMIC_ACQUIRE)) {
                __atomic_store_n(&p->active, 0, __ATOMIC_RELEASE);
                sl->attach_ms = (uint64_t)now;
                __atomic_store_n(&sl->state, CTL_FREE, __ATOMIC_RELEASE);
            }
            continue;
        }
        int64_t hb = (int64_t)__atomic_load_n(&sl->heartbeat_ms, __ATOMIC_RELAXED);
        if (drop || !pid_alive(p->pid) || now - hb > HEARTBEAT_TIMEOUT_MS) {
            rk_log(RK_LOG_WARNING, "Replica pid %d (slot %d) is gone: %s; slot reclaimed", p->pid,
                   k,
                   drop                ? "this server's log starts again (a full sync)"
                   : pid_alive(p->pid) ? "no heartbeat"
                                       : "process exited");
            __atomic_store_n(&p->active, 0, __ATOMIC_RELEASE);
            sl->attach_ms = (uint64_t)now; /* not reused for a second: workers let go first */
            __atomic_store_n(&sl->state, CTL_FREE, __ATOMIC_RELEASE);
        }
    }
}

void repl_main_tick(void)
{
    if (repl.ctl.hdr)
        master_tick();
    repl_failover_tick();
    repl_replica_tick();
}

/* ---- workers: walks and wake-ups ---------------------------------------------------------- */

struct walk_arg {
    struct worker *w;
    uint32_t s;
    int64_t now;
    uint64_t bytes;   /* log bytes this slice appended */
    uint64_t entries; /* entries this slice appended */
};

static void walk_emit(void *arg, const struct kv_entry *e)
{
    struct walk_arg *a = arg;
    int64_t exp = kv_entry_expire(e);
    if (exp != KV_NO_EXPIRE && exp <= a->now)
        return; /* expired: its DEL comes from expiry */
    size_t kl, vl;
    const char *k = kv_entry_key(e, &kl);
    const char *v = kv_entry_val(e, &vl);
    uint64_t before = ring_tail(&repl.log, a->s);
    if (!ring_append_set(&repl.log, a->s, k, kl, v, vl, exp))
        return; /* too large to replicate: the replica starts without it */
    uint64_t rec = ring_tail(&repl.log, a->s) - before;
    a->bytes += rec;
    a->entries++;
    if (rec > a->w->walk_rec_max)
        a->w->walk_rec_max = rec;
    a->w->repl_appended = true;
}

/* How far shard s's log may still grow before it is half a ring ahead of the slowest replica
 * that is still syncing (UINT64_MAX when none is). */
static uint64_t walk_headroom(uint32_t s)
{
    uint64_t tail = ring_tail(&repl.log, s), half = repl.log.size / 2, room = UINT64_MAX;
    for (int k = 0; k < CTL_MAX_REPLICAS; k++) {
        if (!__atomic_load_n(&repl.peers[k].active, __ATOMIC_ACQUIRE))
            continue;
        struct ctl_slot *sl = ctl_slot(&repl.ctl, k);
        if (__atomic_load_n(&sl->state, __ATOMIC_ACQUIRE) != CTL_SYNCING)
            continue;
        if (!__atomic_load_n(&ctl_start_set(&repl.ctl, k)[s], __ATOMIC_ACQUIRE))
            continue;
        uint64_t applied = __atomic_load_n(&ctl_applied(&repl.ctl, k)[s], __ATOMIC_ACQUIRE);
        uint64_t start = ctl_sync_start(&repl.ctl, k)[s];
        if (applied < start)
            applied = start;
        uint64_t ahead = tail - applied;
        uint64_t r = ahead >= half ? 0 : half - ahead;
        if (r < room)
            room = r;
    }
    return room;
}

/* A walk slice needs room for a few of the largest records the log takes. */
static bool walk_throttled(uint32_t s)
{
    return walk_headroom(s) < ring_max_payload(&repl.log) + sizeof(struct ring_frame);
}

static void start_walks(struct worker *w, uint32_t req)
{
    w->walk_rec_max = 0;
    for (uint32_t s = (uint32_t)w->id; s < srv.nshards; s += (uint32_t)srv.nworkers) {
        uint64_t tail = ring_tail(&repl.log, s);
        for (int k = 0; k < CTL_MAX_REPLICAS; k++) {
            if (!__atomic_load_n(&repl.peers[k].active, __ATOMIC_ACQUIRE))
                continue;
            struct ctl_slot *sl = ctl_slot(&repl.ctl, k);
            if (__atomic_load_n(&sl->state, __ATOMIC_ACQUIRE) != CTL_SYNCING ||
                sl->walk_req > req || ctl_start_set(&repl.ctl, k)[s])
                continue;
            ctl_sync_start(&repl.ctl, k)[s] = tail;
            /* Release: the start position is written before the flag that publishes it. */
            __atomic_store_n(&ctl_start_set(&repl.ctl, k)[s], 1, __ATOMIC_RELEASE);
        }
        struct repl_walk *wk = &w->walks[s / (uint32_t)srv.nworkers];
        wk->active = true;
        shard_walk_begin(srv.shards[s], &wk->sw);
        wk->req = req;
    }
}

static void finish_walk(uint32_t s, uint32_t req)
{
    uint64_t end = ring_tail(&repl.log, s);
    for (int k = 0; k < CTL_MAX_REPLICAS; k++) {
        if (!__atomic_load_n(&repl.peers[k].active, __ATOMIC_ACQUIRE))
            continue;
        struct ctl_slot *sl = ctl_slot(&repl.ctl, k);
        if (sl->walk_req > req || !ctl_start_set(&repl.ctl, k)[s] || ctl_walk_end(&repl.ctl, k)[s])
            continue;
        /* Stored as end + 1 so that 0 keeps meaning "not yet". */
        __atomic_store_n(&ctl_walk_end(&repl.ctl, k)[s], end + 1, __ATOMIC_RELEASE);
    }
}

static void wake_replicas(struct worker *w)
{
    /* Our tails were stored before the loads of the replicas' sleeping flags. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (int k = 0; k < CTL_MAX_REPLICAS; k++) {
        struct repl_peer *p = &repl.peers[k];
        if (!__atomic_load_n(&p->active, __ATOMIC_ACQUIRE))
            continue;
        struct ctl_slot *sl = ctl_slot(&repl.ctl, k);
        for (int rw = 0; rw < p->nworkers; rw++) {
            if (__atomic_load_n(&sl->sleeping[rw], __ATOMIC_RELAXED)) {
                __atomic_store_n(&sl->sleeping[rw], 0, __ATOMIC_RELAXED);
                uint64_t one = 1;
                ssize_t n = write(p->efds[rw], &one, sizeof(one)); /* non-blocking eventfd */
                (void)n;
            }
        }
    }
}

static int64_t mono_us(void)
{
    return (int64_t)(rk_mono_ns() / 1000);
}

void repl_lag_sample(uint32_t s, uint64_t tail, uint64_t now_ns)
{
    struct lag_hist *h = &repl.lagh[s];
    uint32_t n = h->n; /* only this thread writes it */
    if (n) {
        uint32_t last = (n - 1) % LAG_HIST;
        uint64_t p = __atomic_load_n(&h->pos[last], __ATOMIC_RELAXED);
        if (p == tail)
            return;
        if (tail < p) {
            /* The log starts again lower (a full sync reset it): so does its history. */
            n = 0;
        } else if (now_ns - __atomic_load_n(&h->ns[last], __ATOMIC_RELAXED) < LAG_SAMPLE_NS) {
            /* Too soon for a sample of its own: the last one covers these bytes too (their
             * age is overstated by less than LAG_SAMPLE_NS, never understated). */
            __atomic_store_n(&h->pos[last], tail, __ATOMIC_RELAXED);
            return;
        }
    }
    uint32_t i = n % LAG_HIST;
    __atomic_store_n(&h->pos[i], tail, __ATOMIC_RELAXED);
    __atomic_store_n(&h->ns[i], now_ns, __ATOMIC_RELAXED);
    __atomic_store_n(&h->n, n + 1, __ATOMIC_RELEASE);
}

int64_t repl_lag_us(uint32_t s, uint64_t applied, uint64_t tail, uint64_t now_ns)
{
    if (applied >= tail)
        return 0;
    const struct lag_hist *h = &repl.lagh[s];
    uint32_t n = __atomic_load_n(&h->n, __ATOMIC_ACQUIRE);
    if (!n)
        return -1;
    /* The oldest sample past applied: the first unapplied byte was written before it (and
     * after the sample before it).  The writer may be overwriting the oldest slots meanwhile:
     * only the newest LAG_HIST - 8 are looked at, and a torn pair only moves the estimate. */
    uint32_t keep = n < LAG_HIST - 8 ? n : LAG_HIST - 8;
    uint64_t ns = 0;
    bool found = false;
    for (uint32_t k = 0; k < keep; k++) {
        uint32_t i = (n - keep + k) % LAG_HIST;
        uint64_t p = __atomic_load_n(&h->pos[i], __ATOMIC_RELAXED);
        if (p > tail)
            continue; /* from before the log started again */
        if (p > applied) {
            ns = __atomic_load_n(&h->ns[i], __ATOMIC_RELAXED);
            found = k > 0 || n <= keep; /* k == 0 of a full window: it may be older still */
            break;
        }
    }
    if (!found) {
        if (ns) /* older than the window */
            return -1;
        /* Written after the newest sample. */
        ns = __atomic_load_n(&h->ns[(n - 1) % LAG_HIST], __ATOMIC_RELAXED);
    }
    return now_ns > ns ? (int64_t)((now_ns - ns) / 1000) : 0;
}

void repl_master_pass(struct worker *w)
{
    if (!repl.ctl.hdr || repl_is_replica())
        return;
    uint32_t req = __atomic_load_n(&repl.walk_req, __ATOMIC_ACQUIRE);
    if (req != w->walk_seen) {
        w->walk_seen = req;
        start_walks(w, req);
    }
    w->walk_throttled = false;
    /* A pass walks for at most REPL_WALK_SLICE_US, taking the shards in turn, so that a full
     * sync never holds the requests of a pass back for long; and at most one pass in
     * REPL_WALK_PERIOD_US walks: between slices the worker serves requests or sleeps (its
     * timer ticks that often while it walks).  So while clients are being served the walk
     * takes at most 13% of the worker's CPU (10 us in 75) whatever the machine's speed, and
     * leaves the rest to requests and to the replica that applies what it sends.  When no
     * worker has run a client command for REPL_WALK_QUIET_US, the master is idle: a pass that
     * had no completions walks a slice at once and the worker does not sleep between slices,
     * so the walk goes as fast as the replica takes it (walk_throttled still holds it to half
     * a ring ahead); the first command brings the pacing back within a slice.  Monotonic
     * time: a wall clock set back must not stall a sync. */
    uint32_t own =
        (srv.nshards - (uint32_t)w->id + (uint32_t)srv.nworkers - 1) / (uint32_t)srv.nworkers;
    bool walking = false;
    for (uint32_t i = 0; i < own; i++)
        walking |= w->walks[i].active;
    w->walk_paced = walking;
    int64_t now_us = walking ? mono_us() : 0, end_us = 0;
    w->walk_quiet = false;
    if (walking) {
        uint64_t cmds = 0;
        for (int j = 0; j < srv.nworkers; j++)
            cmds += STAT_GET(srv.workers[j], total_commands_processed);
        if (cmds != w->walk_cmds) {
            w->walk_cmds = cmds;
            w->walk_cmd_us = now_us;
        }
        w->walk_quiet = now_us - w->walk_cmd_us >= REPL_WALK_QUIET_US;
    }
    if (walking && (now_us >= w->walk_next_us || (w->walk_quiet && w->pass_cqes == 0))) {
        w->walk_next_us = now_us + REPL_WALK_PERIOD_US;
        end_us = now_us + REPL_WALK_SLICE_US;
    }
    size_t load_entries = 0; /* entries this slice appended, under load */
    for (uint32_t j = 0;
         j < own && now_us < end_us && (w->walk_quiet || load_entries < WALK_LOAD_ENTRIES); j++) {
        uint32_t i = (w->walk_rr + j) % own;
        uint32_t s = (uint32_t)w->id + i * (uint32_t)srv.nworkers;
        struct repl_walk *wk = &w->walks[i];
        if (!wk->active)
            continue;
        w->walk_rr = (i + 1) % own;
        if (walk_throttled(s)) {
            w->walk_throttled = true;
            continue;
        }
        /* Walk a few home buckets at a time until the slice has appended half the headroom
         * (or its entries, or the time is up).  A step takes as many buckets as the
         * headroom left holds at twice the largest record a walk of ours has appended (one
         * bucket near the limit, whose entries are each at most a quarter ring, and
         * walk_throttled keeps at least that much room). */
        uint64_t room = walk_headroom(s);
        struct walk_arg a = {.w = w, .s = s, .now = w->now_ms};
        size_t most = w->walk_quiet ? WALK_SLICE : WALK_LOAD_ENTRIES - load_entries;
        size_t step = w->walk_quiet ? WALK_BUCKETS : WALK_LOAD_BUCKETS;
        bool done;
        do {
            size_t nb = step;
            if (room != UINT64_MAX) {
                uint64_t left = room / 2 - a.bytes, rec = 2 * (w->walk_rec_max + 1);
                nb = left / rec < step ? (size_t)(left / rec) : step;
            }
            done = shard_walk_step(srv.shards[s], &wk->sw, nb ? nb : 1, walk_emit, &a);
            now_us = mono_us();
        } while (!done && a.entries < most && now_us < end_us &&
                 (room == UINT64_MAX || a.bytes < room / 2));
        load_entries += a.entries;
        if (done) {
            wk->active = false;
            finish_walk(s, wk->req);
            w->repl_appended = true; /* wake the readers: a TCP sender passes the end on */
        }
    }
    if (w->repl_appended) {
        w->repl_appended = false;
        wake_replicas(w);
        uint64_t now_ns = rk_mono_ns();
        for (uint32_t s = (uint32_t)w->id; s < srv.nshards; s += (uint32_t)srv.nworkers)
            repl_lag_sample(s, ring_tail(&repl.log, s), now_ns);
    }
}

bool repl_master_busy(struct worker *w)
{
    if (!repl.ctl.hdr || repl_is_replica())
        return false;
    bool walking = false;
    for (uint32_t i = 0; (uint32_t)w->id + i * (uint32_t)srv.nworkers < srv.nshards; i++)
        walking |= w->walks[i].active;
    if (!walking)
        return false;
    if (!w->walk_throttled) /* quiet: walk on at once; else the timer brings the next slice */
        return w->walk_quiet;
    /* Throttled: sleep, but have replicas ring us as they apply. */
    __atomic_store_n(&repl.ctl.hdr->ack_waiting[w->id], 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (uint32_t s = (uint32_t)w->id; s < srv.nshards; s += (uint32_t)srv.nworkers)
        if (w->walks[s / (uint32_t)srv.nworkers].active && !walk_throttled(s))
            return true; /* a walk that is not held back (finished ones are not walks) */
    return false;
}

/* ---- TCP replicas: the PSYNC answer ------------------------------------------------------- */

/* Can the replica continue from pos[] under replid?  Our own id: if the log still holds every
 * position.  Our previous id (we were promoted): also only up to where that history ended. */
static bool can_continue(const char *replid, const uint64_t *pos)
{
    bool mine = strcmp(replid, repl.replid) == 0;
    bool prev = !mine && repl.has_replid2 && strcmp(replid, repl.replid2) == 0;
    if (!mine && !prev)
        return false;
    for (uint32_t s = 0; s < srv.nshards; s++) {
        if (prev && pos[s] > repl.second_off[s])
            return false;
        if (!ring_has(&repl.log, s, pos[s]))
            return false;
    }
    return true;
}

static void psync_answer(struct repl_psync *ps)
{
    struct timeval tv = {.tv_sec = 1};
    setsockopt(ps->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    bool cont = can_continue(ps->replid, ps->pos);
    const char *err = NULL;
    if (!cont && repl_is_replica() && !cascade_ready())
        err = "-ERR this replica is not in sync over TCP with a master: try again later\r\n";
    int efd = err ? -1 : fcntl(repl_tcp_efd, F_DUPFD_CLOEXEC, 0);
    int k = err ? -1 : slot_take(0, 1, &efd, ps->port, ps->addr, true, !cont);
    if (!err && k < 0) {
        close(efd);
        err = "-ERR no free replica slot\r\n";
    }
    if (err) {
        ssize_t n = send(ps->fd, err, strlen(err), MSG_NOSIGNAL);
        (void)n;
        close(ps->fd);
        rk_log(RK_LOG_WARNING, "Replica %s:%d refused: %.*s", ps->addr, ps->port,
               (int)strlen(err) - 2, err + 1);
        return;
    }
    if (cont) {
        for (uint32_t s = 0; s < srv.nshards; s++) {
            __atomic_store_n(&ctl_received(&repl.ctl, k)[s], ps->pos[s], __ATOMIC_RELEASE);
            __atomic_store_n(&ctl_applied(&repl.ctl, k)[s], ps->pos[s], __ATOMIC_RELEASE);
        }
        REPL_INC(repl.sync_partial_ok);
    } else {
        REPL_INC(repl.sync_full);
        if (strcmp(ps->replid, "?") != 0)
            REPL_INC(repl.sync_partial_err);
    }
    char line[96];
    snprintf(line, sizeof(line), "+%s %s\r\n", cont ? "CONTINUE" : "FULLRESYNC", repl.replid);
    if (send(ps->fd, line, strlen(line), MSG_NOSIGNAL) != (ssize_t)strlen(line)) {
        close(ps->fd);
        __atomic_store_n(&repl.peers[k].tcp_closed, 1, __ATOMIC_RELEASE);
        return;
    }
    tv.tv_sec = 0;
    setsockopt(ps->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(ps->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    rk_log(RK_LOG_NOTICE, "Replica %s:%d asks for synchronization over TCP (slot %d): %s", ps->addr,
           ps->port, k, cont ? "partial resync accepted" : "full resync (walking the shards)");
    repl_tcp_add_replica(ps->fd, k, !cont, ps->pos);
}

void repl_psync_tick(void)
{
    struct repl_psync *ps = __atomic_exchange_n(&repl.psyncs, NULL, __ATOMIC_ACQUIRE);
    /* The stack is newest first: answer in arrival order. */
    struct repl_psync *rev = NULL;
    while (ps) {
        struct repl_psync *n = ps->next;
        ps->next = rev;
        rev = ps;
        ps = n;
    }
    while (rev) {
        struct repl_psync *n = rev->next;
        psync_answer(rev);
        rk_free(rev->pos);
        rk_free(rev);
        rev = n;
    }
}
