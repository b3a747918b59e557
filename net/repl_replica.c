/*
 * repl_replica: the replica side of same-host replication (see net/repl.h).
 *
 * The main thread keeps the link.  It talks to the master with short blocking exchanges (a
 * one-second timeout each): never on a worker, so no request waits for them.  Attaching:
 *   1. TCP to the master's port: AUTH (masterauth) if set, then RINGKV.SHMINFO, which names
 *      the master's Unix socket, its host's boot id, its shard count and its pid;
 *   2. if the boot id is ours (same host) and the shard counts match, connect to the Unix
 *      socket and send ATTACH with our workers' eventfds; the answer brings the log memfd,
 *      the control memfd and the master workers' eventfds;
 *   3. map both, and publish a new struct repl_link (release).  Each worker, seeing a new
 *      link, empties its shards (a full sync starts from nothing) and applies the log of its
 *      shards from the start positions the master's workers write into our slot.
 * A link is dropped when the master's process is gone or its heartbeat stops, or when a worker
 * reports a lapped or corrupt log; reads go on being served from what was applied.  Old links
 * stay mapped until every worker has moved past them (link epochs), then are unmapped.
 */
#include "net/repl.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "net/config.h"
#include "net/server.h"

#define APPLY_BUDGET 4096
#define MASTER_TIMEOUT_MS 3000

/* ---- a tiny blocking RESP client for the handshake ---------------------------------------- */

static int tcp_connect(const char *host, int port)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res;
    char ps[16];
    snprintf(ps, sizeof(ps), "%d", port);
    if (getaddrinfo(host, ps, &hints, &res) != 0)
        return -1;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        struct timeval tv = {.tv_sec = 1};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        if (connect(fd, res->ai_addr, res->ai_addrlen) < 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    return fd;
}

static int send_cmd(int fd, int argc, const char **argv)
{
    char buf[1024];
    size_t n = (size_t)snprintf(buf, sizeof(buf), "*%d\r\n", argc);
    for (int i = 0; i < argc && n < sizeof(buf); i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "$%zu\r\n%s\r\n", strlen(argv[i]), argv[i]);
    if (n >= sizeof(buf))
        return -1;
    return send(fd, buf, n, MSG_NOSIGNAL) == (ssize_t)n ? 0 : -1;
}

/* Read one reply line (up to \r\n) into line.  0 or -1. */
static int read_line(int fd, char *line, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap) {
        char c;
        if (recv(fd, &c, 1, 0) != 1)
            return -1;
        if (c == '\n') {
            if (n && line[n - 1] == '\r')
                n--;
            line[n] = '\0';
            return 0;
        }
        line[n++] = c;
    }
    return -1;
}

/* Read a bulk string's payload after its "$len" line into out.  0 or -1. */
static int read_bulk(int fd, const char *hdr, char *out, size_t cap)
{
    long len = strtol(hdr + 1, NULL, 10);
    if (hdr[0] != '$' || len < 0 || (size_t)len + 1 > cap)
        return -1;
    size_t got = 0;
    while (got < (size_t)len + 2) {
        char tmp[2];
        ssize_t r = got < (size_t)len ? recv(fd, out + got, (size_t)len - got, 0)
                                      : recv(fd, tmp, (size_t)len + 2 - got, 0);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    out[len] = '\0';
    return 0;
}

struct shminfo {
    char path[108];
    char boot_id[64];
    long nshards;
    long pid;
    long long ring_size;
};

/* A connection to the master's port, authenticated with masterauth if set.  fd or -1. */
static int connect_master(char *why, size_t wcap)
{
    int fd = tcp_connect(repl.master_host, repl.master_port);
    if (fd < 0) {
        snprintf(why, wcap, "can't connect to %.200s:%d", repl.master_host, repl.master_port);
        return -1;
    }
    if (cfg.masterauth[0]) {
        char line[512];
        const char *a[] = {"AUTH", cfg.masterauth};
        if (send_cmd(fd, 2, a) < 0 || read_line(fd, line, sizeof(line)) < 0 || line[0] != '+') {
            snprintf(why, wcap, "AUTH to the master failed");
            close(fd);
            return -1;
        }
    }
    return fd;
}

static int fetch_shminfo(struct shminfo *si, char *why, size_t wcap)
{
    int fd = connect_master(why, wcap);
    if (fd < 0)
        return -1;
    char line[512];
    const char *c[] = {"RINGKV.SHMINFO"};
    char v[5][256];
    int ok = send_cmd(fd, 1, c) == 0 && read_line(fd, line, sizeof(line)) == 0;
    if (ok && line[0] != '*') {
        snprintf(why, wcap, "the master answered RINGKV.SHMINFO with: %.150s", line);
        close(fd);
        return -1;
    }
    for (int i = 0; ok && i < 5; i++)
        ok = read_line(fd, line, sizeof(line)) == 0 && read_bulk(fd, line, v[i], sizeof(v[i])) == 0;
    close(fd);
    if (!ok) {
        snprintf(why, wcap, "no valid answer to RINGKV.SHMINFO");
        return -1;
    }
    snprintf(si->path, sizeof(si->path), "%.107s", v[0]);
    snprintf(si->boot_id, sizeof(si->boot_id), "%.63s", v[1]);
    si->nshards = strtol(v[2], NULL, 10);
    si->pid = strtol(v[3], NULL, 10);
    si->ring_size = strtoll(v[4], NULL, 10);
    return 0;
}

void repl_boot_id(char *out, size_t cap)
{
    out[0] = '\0';
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        if (!fgets(out, (int)cap, f))
            out[0] = '\0';
        fclose(f);
    }
    out[strcspn(out, "\n")] = '\0';
}

int repl_replica_prepare(void)
{
    /* Adopt the master's shard count and ring size when it can be reached now; otherwise
     * keep ours and check again at attach time. */
    struct shminfo si = {0};
    char why[256];
    if (fetch_shminfo(&si, why, sizeof(why)) < 0)
        return 0;
    if (si.nshards >= 1 && si.nshards <= 65536 && (si.nshards & (si.nshards - 1)) == 0 &&
        si.nshards != cfg.shards) {
        rk_log(RK_LOG_NOTICE, "adopting the master's shard count: %ld", si.nshards);
        cfg.shards = (int)si.nshards;
    }
    /* A TCP replica's log is a byte-for-byte copy of the master's: same ring size. */
    if (si.ring_size >= 64 * 1024 && si.ring_size <= (1ll << 32) &&
        (si.ring_size & (si.ring_size - 1)) == 0 && si.ring_size != cfg.repl_ring_size) {
        rk_log(RK_LOG_NOTICE, "adopting the master's repl-ring-size: %lld", si.ring_size);
        cfg.repl_ring_size = si.ring_size;
    }
    return 0;
}

/* ---- attach ------------------------------------------------------------------------------- */

static struct repl_link *attach_tcp(const struct shminfo *si, char *why, size_t wcap);

static struct repl_link *attach(char *why, size_t wcap)
{
    struct shminfo si = {0};
    if (fetch_shminfo(&si, why, wcap) < 0)
        return NULL;
    char mine[64];
    repl_boot_id(mine, sizeof(mine));
    bool here = strcmp(mine, si.boot_id) == 0 && si.path[0];
    int transport = __atomic_load_n(&cfg.repl_transport, __ATOMIC_RELAXED); /* live */
    if (transport == REPL_TCP || repl.follow_tcp || (!here && transport == REPL_AUTO))
        return attach_tcp(&si, why, wcap);
    if (!here) {
        snprintf(why, wcap,
                 "repl-transport shm, but the master is not on this host (or offers no "
                 "unixsocket)");
        return NULL;
    }
    if (si.nshards != (long)srv.nshards) {
        snprintf(why, wcap,
                 "the master has %ld shards and this server %u: restart this replica "
                 "with --replicaof to adopt the master's shard count",
                 si.nshards, srv.nshards);
        return NULL;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", si.path);
    struct timeval tv = {.tv_sec = 1};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        snprintf(why, wcap, "can't connect to the master's unix socket %s: %s", si.path,
                 strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    char req[512];
    snprintf(req, sizeof(req), "ATTACH %d %d %d %s\n", (int)getpid(), srv.nworkers, cfg.port,
             cfg.masterauth[0] ? cfg.masterauth : "-");
    int efds[CTL_MAX_WORKERS];
    for (int i = 0; i < srv.nworkers; i++)
        efds[i] = srv.workers[i]->event_fd;
    char cbuf[CMSG_SPACE(sizeof(int) * (CTL_MAX_WORKERS + 2))];
    memset(cbuf, 0, sizeof(cbuf));
    struct iovec iov = {.iov_base = req, .iov_len = strlen(req)};
    struct msghdr mh = {.msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = cbuf,
                        .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)srv.nworkers)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)srv.nworkers);
    memcpy(CMSG_DATA(cm), efds, sizeof(int) * (size_t)srv.nworkers);
    if (sendmsg(fd, &mh, MSG_NOSIGNAL) < 0) {
        snprintf(why, wcap, "attach request: %s", strerror(errno));
        close(fd);
        return NULL;
    }
    char line[256];
    struct iovec riov = {.iov_base = line, .iov_len = sizeof(line) - 1};
    struct msghdr rh = {
        .msg_iov = &riov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    ssize_t n = recvmsg(fd, &rh, MSG_CMSG_CLOEXEC);
    close(fd);
    int fds[CTL_MAX_WORKERS + 2];
    int nfds = 0;
    for (cm = CMSG_FIRSTHDR(&rh); n > 0 && cm; cm = CMSG_NXTHDR(&rh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < k && nfds < CTL_MAX_WORKERS + 2; i++)
            memcpy(&fds[nfds++], CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
    }
    if (n <= 0) {
        snprintf(why, wcap, "no answer to the attach request");
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        return NULL;
    }
    line[n] = '\0';
    line[strcspn(line, "\n")] = '\0';
    int slot = -1, mworkers = 0;
    unsigned nsh = 0;
    if (sscanf(line, "OK %d %d %u", &slot, &mworkers, &nsh) != 3 || slot < 0 ||
        slot >= CTL_MAX_REPLICAS || mworkers < 1 || mworkers > CTL_MAX_WORKERS ||
        nfds != mworkers + 2 || nsh != srv.nshards) {
        snprintf(why, wcap, "attach refused: %.150s", line);
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        return NULL;
    }
    struct repl_link *L = rk_calloc(1, sizeof(*L));
    int rc = ring_map_attach(&L->log, fds[0]);
    if (rc == 0)
        rc = ctl_attach(&L->ctl, fds[1]);
    else
        close(fds[1]);
    if (rc < 0 || L->log.nshards != srv.nshards || L->ctl.nshards != srv.nshards) {
        snprintf(why, wcap, "the master's log or control region is not valid");
        if (L->log.hdr)
            ring_map_close(&L->log);
        if (L->ctl.hdr)
            ctl_close(&L->ctl);
        for (int i = 2; i < nfds; i++)
            close(fds[i]);
        rk_free(L);
        return NULL;
    }
    L->slot = slot;
    L->master_workers = mworkers;
    memcpy(L->master_efds, fds + 2, sizeof(int) * (size_t)mworkers);
    L->master_pid = (int32_t)si.pid;
    return L;
}

/* Our own replicas can't follow a log that stops (or restarts): cut them, they come back. */
static void drop_own_replicas(void)
{
    for (int k = 0; k < CTL_MAX_REPLICAS; k++)
        if (__atomic_load_n(&repl.peers[k].active, __ATOMIC_ACQUIRE) && repl.peers[k].tcp)
            __atomic_store_n(&repl.peers[k].tcp_kill, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&repl.drop_shm_peers, 1, __ATOMIC_RELEASE);
}

/* What this server's log holds, for a PSYNC: the id whose history it is, or "?" for none. */
static const char *held_replid(void)
{
    return repl.log_valid ? repl.replid : "?";
}

static struct repl_link *attach_tcp(const struct shminfo *si, char *why, size_t wcap)
{
    if (!repl.log.hdr) {
        snprintf(why, wcap, "replication is off on this server (too many threads)");
        return NULL;
    }
    if (si->nshards != (long)srv.nshards || si->ring_size != (long long)repl.log.size) {
        snprintf(why, wcap,
                 "the master has %ld shards and a %lld-byte repl-ring-size, this server %u and "
                 "%llu: restart this replica with --replicaof to adopt them",
                 si->nshards, si->ring_size, srv.nshards, (unsigned long long)repl.log.size);
        return NULL;
    }
    int fd = connect_master(why, wcap);
    if (fd < 0)
        return NULL;
    char line[512];
    /* RINGKV.PSYNC replid shards ring-size port pos... */
    uint32_t n = srv.nshards;
    size_t cap = 128 + (size_t)n * 32;
    char *cmd = rk_malloc(cap);
    char num[32];
    size_t len = (size_t)snprintf(cmd, cap, "*%u\r\n$12\r\nRINGKV.PSYNC\r\n", 5 + n);
#define ARG(str) len += (size_t)snprintf(cmd + len, cap - len, "$%zu\r\n%s\r\n", strlen(str), str)
    ARG(held_replid());
    snprintf(num, sizeof(num), "%u", n);
    ARG(num);
    snprintf(num, sizeof(num), "%llu", (unsigned long long)repl.log.size);
    ARG(num);
    snprintf(num, sizeof(num), "%d", cfg.port);
    ARG(num);
    for (uint32_t s = 0; s < n; s++) {
        snprintf(num, sizeof(num), "%llu", (unsigned long long)ring_tail(&repl.log, s));
        ARG(num);
    }
#undef ARG
    bool sent = send(fd, cmd, len, MSG_NOSIGNAL) == (ssize_t)len;
    rk_free(cmd);
    char id[64] = "";
    bool full = false;
    if (!sent || read_line(fd, line, sizeof(line)) < 0) {
        snprintf(why, wcap, "no answer to RINGKV.PSYNC");
        close(fd);
        return NULL;
    }
    if (sscanf(line, "+FULLRESYNC %40s", id) == 1)
        full = true;
    else if (sscanf(line, "+CONTINUE %40s", id) != 1) {
        snprintf(why, wcap, "the master answered RINGKV.PSYNC with: %.150s", line);
        close(fd);
        return NULL;
    }
    /* The stream goes to the replication thread, whose io_uring wants no socket timeouts. */
    struct timeval tv = {0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    /* Our workers report in the self slot what they applied of our own log. */
    struct ctl_slot *sl = ctl_slot(&repl.ctl, CTL_SELF);
    ctl_zero(ctl_sync_start(&repl.ctl, CTL_SELF), 5 * (size_t)n);
    for (int i = 0; i < CTL_MAX_WORKERS; i++)
        __atomic_store_n(&sl->sleeping[i], 0, __ATOMIC_RELAXED);
    if (!full) {
        for (uint32_t s = 0; s < n; s++) {
            uint64_t t = ring_tail(&repl.log, s);
            __atomic_store_n(&ctl_sync_start(&repl.ctl, CTL_SELF)[s], t, __ATOMIC_RELAXED);
            __atomic_store_n(&ctl_applied(&repl.ctl, CTL_SELF)[s], t, __ATOMIC_RELEASE);
            __atomic_store_n(&ctl_walk_end(&repl.ctl, CTL_SELF)[s], t + 1, __ATOMIC_RELEASE);
            __atomic_store_n(&ctl_start_set(&repl.ctl, CTL_SELF)[s], 1, __ATOMIC_RELEASE);
        }
        REPL_INC(repl.partial_syncs);
    } else {
        REPL_INC(repl.full_syncs);
    }
    repl_str_set(repl.replid, sizeof(repl.replid), id);
    __atomic_store_n(&repl.log_is_copy, true, __ATOMIC_RELAXED);
    /* Until a full sync is over, the data is not what the log's history says it is. */
    repl.log_valid = !full;
    struct repl_link *L = rk_calloc(1, sizeof(*L));
    L->log = repl.log;
    L->ctl = repl.ctl;
    L->slot = CTL_SELF;
    L->self = true;
    L->partial = !full;
    L->master_pid = (int32_t)si->pid;
    L->tcp_fd = fd;
    return L;
}

/* Bounded wait until every worker has moved to link epoch e (a worker never blocks, so this
 * takes one loop pass of each, unless one runs a very long command). */
static void wait_workers(uint64_t e)
{
    for (int i = 0; i < 40000; i++) {
        bool all = true;
        for (int k = 0; k < srv.nworkers && all; k++)
            all = __atomic_load_n(&srv.workers[k]->link_epoch_seen, __ATOMIC_ACQUIRE) >= e;
        if (all)
            return;
        uint64_t one = 1;
        for (int k = 0; k < srv.nworkers; k++) {
            ssize_t r = write(srv.workers[k]->event_fd, &one, sizeof(one));
            (void)r;
        }
        usleep(250);
    }
    rk_log(RK_LOG_WARNING, "workers did not move to the new replication link within 10 s");
}

static void publish_link(struct repl_link *L)
{
    struct repl_link *old = repl.link;
    uint64_t epoch = repl.link_epoch + 1; /* stored below, after the link (we are its writer) */
    if (L)
        L->epoch = epoch;
    if (old) {
        old->epoch = epoch; /* freed once every worker has seen this epoch */
        old->next_retired = repl.retired;
        repl.retired = old;
    }
    /* Release: the mapping is set up before a worker can see the pointer. */
    __atomic_store_n(&repl.link, L, __ATOMIC_RELEASE);
    __atomic_store_n(&repl.link_epoch, epoch, __ATOMIC_RELEASE);
}

static void free_retired(void)
{
    uint64_t min_seen = UINT64_MAX;
    for (int i = 0; i < srv.nworkers; i++) {
        uint64_t s = __atomic_load_n(&srv.workers[i]->link_epoch_seen, __ATOMIC_ACQUIRE);
        if (s < min_seen)
            min_seen = s;
    }
    struct repl_link **pp = &repl.retired;
    while (*pp) {
        struct repl_link *L = *pp;
        if (L->epoch <= min_seen) {
            *pp = L->next_retired;
            if (!L->self) {
                ring_map_close(&L->log);
                ctl_close(&L->ctl);
            }
            for (int i = 0; i < L->master_workers; i++)
                close(L->master_efds[i]);
            rk_free(L);
        } else {
            pp = &L->next_retired;
        }
    }
}

static void link_down(const char *why)
{
    if (repl.link) {
        rk_log(RK_LOG_WARNING, "Connection with master lost: %s", why);
        bool self = repl.link->self;
        if (self) {
            repl_tcp_stop_rx(); /* nothing more is written into our log */
        } else {
            uint64_t off = 0;
            for (uint32_t s = 0; s < srv.nshards; s++)
                off += __atomic_load_n(&ctl_applied(&repl.link->ctl, repl.link->slot)[s],
                                       __ATOMIC_ACQUIRE);
            __atomic_store_n(&repl.last_offset, off, __ATOMIC_RELAXED);
            /* A zero heartbeat lets the master reclaim our slot on its next tick instead of
             * holding back its walks for a replica that no longer reads. */
            __atomic_store_n(&ctl_slot(&repl.link->ctl, repl.link->slot)->heartbeat_ms, 0,
                             __ATOMIC_RELAXED);
        }
        publish_link(NULL);
        /* Workers apply what is left of our log before they let go of it. */
        if (self)
            wait_workers(repl.link_epoch);
        __atomic_store_n(&repl.link_down_since_ms, rk_now_ms(), __ATOMIC_RELAXED);
        /* Reconnect soon after a link that lived; back off after one that did not. */
        if (rk_now_ms() - repl.link_up_ms > 5000)
            repl.backoff_ms = 0;
        repl.backoff_ms = repl.backoff_ms ? repl.backoff_ms * 2 : 100;
        if (repl.backoff_ms > 2000)
            repl.backoff_ms = 2000;
        repl.next_try_ms = rk_now_ms() + repl.backoff_ms;
    }
    __atomic_store_n(&repl.tcp_link, false, __ATOMIC_RELAXED);
    __atomic_store_n(&repl.rx_lost, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&repl.sync_in_progress, 0, __ATOMIC_RELAXED);
}

static bool pid_alive(int pid)
{
    return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

static void check_sync_done(struct repl_link *L)
{
    for (uint32_t s = 0; s < srv.nshards; s++) {
        uint64_t end = __atomic_load_n(&ctl_walk_end(&L->ctl, L->slot)[s], __ATOMIC_ACQUIRE);
        uint64_t app = __atomic_load_n(&ctl_applied(&L->ctl, L->slot)[s], __ATOMIC_ACQUIRE);
        if (!end || app < end - 1)
            return;
    }
    __atomic_store_n(&repl.sync_in_progress, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&ctl_slot(&L->ctl, L->slot)->state, CTL_ONLINE, __ATOMIC_RELEASE);
    if (L->self)
        repl.log_valid = true;
    rk_log(RK_LOG_NOTICE, "MASTER <-> REPLICA sync: Finished with success");
}

void repl_promote(const char *why)
{
    link_down("REPLICAOF NO ONE");
    if (repl.log_is_copy && repl.log_valid && repl.log.hdr) {
        /* Our log is the old master's, byte for byte, up to its tails: its replicas may
         * continue from us (PSYNC with the old id, up to these positions). */
        if (!repl.second_off)
            __atomic_store_n(&repl.second_off, rk_calloc(srv.nshards, sizeof(uint64_t)),
                             __ATOMIC_RELEASE);
        for (uint32_t s = 0; s < srv.nshards; s++)
            __atomic_store_n(&repl.second_off[s], ring_tail(&repl.log, s), __ATOMIC_RELAXED);
        repl_str_set(repl.replid2, sizeof(repl.replid2), repl.replid);
        __atomic_store_n(&repl.has_replid2, true, __ATOMIC_RELEASE);
    } else {
        /* No history to offer (a shm follow, or a full sync cut short). */
        __atomic_store_n(&repl.has_replid2, false, __ATOMIC_RELEASE);
    }
    char id[41];
    repl_new_replid(id);
    repl_str_set(repl.replid, sizeof(repl.replid), id);
    repl.log_valid = true; /* from here on the log is this master's history */
    if (repl.log.hdr) {
        __atomic_store_n(&repl.logging, 1, __ATOMIC_RELEASE);
        /* Replicas of ours waiting for a walk from our old master get one from us. */
        bool waiting = false;
        for (int k = 0; k < CTL_MAX_REPLICAS; k++) {
            if (!__atomic_load_n(&repl.peers[k].active, __ATOMIC_ACQUIRE) ||
                __atomic_load_n(&ctl_slot(&repl.ctl, k)->state, __ATOMIC_ACQUIRE) != CTL_SYNCING)
                continue;
            ctl_zero(ctl_sync_start(&repl.ctl, k), 3 * (size_t)srv.nshards);
            waiting = true;
        }
        if (waiting)
            __atomic_add_fetch(&repl.walk_req, 1, __ATOMIC_RELEASE);
    }
    __atomic_store_n(&repl.is_replica, false, __ATOMIC_RELEASE);
    __atomic_store_n(&rk_log_role, 'M', __ATOMIC_RELAXED);
    rk_log(RK_LOG_NOTICE, "MASTER MODE enabled (%s); new replication id %s, previous %s", why,
           repl.replid, repl.has_replid2 ? repl.replid2 : "none");
}

void repl_follow(const char *host, int port, bool tcp)
{
    repl.follow_tcp = tcp;
    link_down("REPLICAOF to a new master");
    if (!repl_is_replica()) {
        /* Workers stop writing the log before anyone else may write it. */
        __atomic_store_n(&repl.is_replica, true, __ATOMIC_RELEASE);
        publish_link(NULL);
        wait_workers(repl.link_epoch);
    }
    repl_str_set(repl.master_host, sizeof(repl.master_host), host);
    __atomic_store_n(&repl.master_port, port, __ATOMIC_RELAXED);
    repl.next_try_ms = 0;
    repl.backoff_ms = 0;
    __atomic_store_n(&rk_log_role, 'S', __ATOMIC_RELAXED);
    rk_log(RK_LOG_NOTICE, "REPLICAOF %s:%d enabled", host, port);
}

static void handle_request(void)
{
    struct repl_req *r = __atomic_exchange_n(&repl.pending, NULL, __ATOMIC_ACQUIRE);
    if (!r)
        return;
    if (r->no_one) {
        if (repl_is_replica())
            repl_promote("user request");
    } else {
        repl_follow(r->host, r->port, false);
    }
    rk_free(r);
}

void repl_replica_tick(void)
{
    handle_request();
    free_retired();
    if (!repl_is_replica())
        return;
    int64_t now = rk_now_ms();
    struct repl_link *L = repl.link;
    if (L && L->self) {
        if (__atomic_load_n(&repl.rx_lost, __ATOMIC_ACQUIRE))
            link_down("the TCP link to the master broke");
        else if (__atomic_exchange_n(&repl.relink, 0, __ATOMIC_ACQ_REL))
            link_down("our copy of the log did not read back: full resync");
        else if (__atomic_load_n(&repl.sync_in_progress, __ATOMIC_RELAXED))
            check_sync_done(L);
        return;
    }
    if (L) {
        struct ctl_slot *sl = ctl_slot(&L->ctl, L->slot);
        __atomic_store_n(&sl->heartbeat_ms, (uint64_t)now, __ATOMIC_RELAXED);
        int64_t mhb = (int64_t)__atomic_load_n(&L->ctl.hdr->master_heartbeat_ms, __ATOMIC_RELAXED);
        if (!pid_alive(L->master_pid))
            link_down("the master process exited");
        else if (now - mhb > MASTER_TIMEOUT_MS)
            link_down("no heartbeat from the master");
        else if (__atomic_load_n(&sl->state, __ATOMIC_ACQUIRE) == CTL_FREE)
            link_down("the master dropped this replica");
        else if (__atomic_exchange_n(&repl.relink, 0, __ATOMIC_ACQ_REL))
            link_down("the log was lapped or corrupt: full resync");
        else if (__atomic_load_n(&repl.sync_in_progress, __ATOMIC_RELAXED))
            check_sync_done(L);
        if (!repl.link)
            repl.next_try_ms = now + 100;
        return;
    }
    if (now < repl.next_try_ms)
        return;
    char why[256];
    L = attach(why, sizeof(why));
    if (!L) {
        repl.backoff_ms = repl.backoff_ms ? repl.backoff_ms * 2 : 100;
        if (repl.backoff_ms > 2000)
            repl.backoff_ms = 2000;
        repl.next_try_ms = now + repl.backoff_ms;
        rk_log(RK_LOG_VERBOSE, "replica: %s", why);
        if (repl.backoff_ms == 2000)
            rk_log(RK_LOG_NOTICE, "replica: can't attach to %s:%d: %s", repl.master_host,
                   repl.master_port, why);
        return;
    }
    repl.link_up_ms = now;
    if (L->self) {
        __atomic_store_n(&repl.tcp_link, true, __ATOMIC_RELAXED);
        __atomic_store_n(&repl.rx_lost, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&repl.sync_in_progress, L->partial ? 0 : 1, __ATOMIC_RELAXED);
        publish_link(L);
        repl_tcp_start_rx(L->tcp_fd, !L->partial);
        rk_log(RK_LOG_NOTICE, "MASTER <-> REPLICA sync started over TCP with %s:%d: %s",
               repl.master_host, repl.master_port,
               L->partial ? "partial resync accepted" : "full resync");
        return;
    }
    /* Our data comes from the master's log now; ours stops moving and is no history of it. */
    __atomic_store_n(&repl.log_is_copy, false, __ATOMIC_RELAXED);
    repl.log_valid = false;
    drop_own_replicas();
    REPL_INC(repl.full_syncs);
    __atomic_store_n(&repl.sync_in_progress, 1, __ATOMIC_RELAXED);
    publish_link(L);
    rk_log(RK_LOG_NOTICE,
           "MASTER <-> REPLICA sync started: attached to %s:%d through shared "
           "memory (slot %d)",
           repl.master_host, repl.master_port, L->slot);
}

void repl_replica_shutdown(void)
{
    if (repl.link)
        __atomic_store_n(&ctl_slot(&repl.link->ctl, repl.link->slot)->heartbeat_ms, 0,
                         __ATOMIC_RELAXED);
}

/* ---- workers: applying the log ------------------------------------------------------------ */

/* hash: kv_hash of r's key (any value for a FLUSH). */
static void apply(struct shard *sh, const struct ring_rec *r, uint64_t hash)
{
    switch (r->type) {
    case RING_SET:
        shard_set(sh, hash, r->key, r->klen, r->val, r->vlen, r->expire_ms);
        break;
    case RING_DEL:
        shard_del(sh, hash, r->key, r->klen);
        break;
    case RING_FLUSH:
        shard_flush(sh);
        break;
    }
}

/*
 * Apply up to `budget` records of shard s from *pos on, advancing *pos past each one applied.
 * On a table larger than the caches each apply costs a miss on the tag group and another on
 * the entry, one after the other; a software pipeline overlaps them across records.  Record k
 * is read (copied and checked) and its tag group prefetched, its entry is prefetched once
 * record k + AHEAD has been read (its tags have arrived by then), and it is applied once
 * record k + 2 * AHEAD has been (its entry has arrived).  The REPL_APPLY_BATCH = 2 * AHEAD
 * read buffers hold the records between their reading and their applying.  Every record read
 * is applied, in order, before a failure is returned.  Returns the last ring_read result.
 */
#define AHEAD (REPL_APPLY_BATCH / 2)

static void prefetch_rec(struct shard *sh, const struct ring_rec *r, uint64_t hash)
{
    if (r->type != RING_FLUSH)
        shard_prefetch_entry(sh, hash);
}

static int apply_some(struct worker *w, struct repl_link *L, uint32_t s, uint64_t *pos, int budget)
{
    struct shard *sh = srv.shards[s];
    struct ring_rec rec[REPL_APPLY_BATCH];
    uint64_t hash[REPL_APPLY_BATCH];
    int rc = RING_OK, nread = 0, napplied = 0;
    while (rc == RING_OK && nread < budget) {
        if (nread - napplied == REPL_APPLY_BATCH) {
            int j = napplied++ % REPL_APPLY_BATCH;
            apply(sh, &rec[j], hash[j]);
        }
        int j = nread % REPL_APPLY_BATCH;
        rc = ring_read(&L->log, s, *pos, &w->rbuf[j], &w->rcap[j], &rec[j]);
        if (rc != RING_OK)
            break;
        *pos = rec[j].next;
        hash[j] = 0;
        if (rec[j].type != RING_FLUSH) {
            hash[j] = kv_hash(rec[j].key, rec[j].klen);
            shard_prefetch(sh, hash[j]);
        }
        if (nread >= AHEAD) {
            int k = (nread - AHEAD) % REPL_APPLY_BATCH;
            prefetch_rec(sh, &rec[k], hash[k]);
        }
        nread++;
    }
    /* No more to read: the last AHEAD records' entries, then every record still held. */
    for (int k = nread - AHEAD > napplied ? nread - AHEAD : napplied; k < nread; k++)
        prefetch_rec(sh, &rec[k % REPL_APPLY_BATCH], hash[k % REPL_APPLY_BATCH]);
    while (napplied < nread) {
        int j = napplied++ % REPL_APPLY_BATCH;
        apply(sh, &rec[j], hash[j]);
    }
    return rc;
}

/* Leaving a TCP link: apply what our own log still holds of our shards (it was all received
 * and checked), so that the data is whole before anything else happens to it. */
static void drain_self(struct worker *w, struct repl_link *L)
{
    for (uint32_t s = (uint32_t)w->id, i = 0; s < srv.nshards; s += (uint32_t)srv.nworkers, i++) {
        if (!w->rstarted[i])
            continue;
        uint64_t pos = w->rpos[i];
        while (apply_some(w, L, s, &pos, APPLY_BUDGET) == RING_OK)
            ;
        w->rpos[i] = pos;
        __atomic_store_n(&ctl_applied(&L->ctl, L->slot)[s], pos, __ATOMIC_RELEASE);
    }
}

static void switch_link(struct worker *w, struct repl_link *L, uint64_t epoch)
{
    size_t own = (srv.nshards + (uint32_t)srv.nworkers - 1) / (uint32_t)srv.nworkers;
    if (!w->rpos) {
        w->rpos = rk_calloc(own, sizeof(uint64_t));
        w->rstarted = rk_calloc(own, 1);
    }
    if (w->link && w->link->self)
        drain_self(w, w->link);
    if (L && !L->partial) {
        /* A new attachment is a full sync: start from nothing. */
        for (uint32_t s = (uint32_t)w->id; s < srv.nshards; s += (uint32_t)srv.nworkers)
            shard_flush(srv.shards[s]);
    }
    memset(w->rstarted, 0, own);
    w->link = L;
    /* Release: we no longer touch the previous mapping. */
    __atomic_store_n(&w->link_epoch_seen, epoch, __ATOMIC_RELEASE);
}

static void lag_sample(struct worker *w, uint64_t ns)
{
    uint64_t us = ns / 1000;
    size_t b = us < 1000 ? us / 10 : 100 + (us / 1000 < 99 ? us / 1000 : 99);
    __atomic_store_n(&w->lag_hist[b], __atomic_load_n(&w->lag_hist[b], __ATOMIC_RELAXED) + 1,
                     __ATOMIC_RELAXED);
}

uint64_t repl_lag_percentile(double q, uint64_t *samples)
{
    uint64_t sum[REPL_LAG_BUCKETS] = {0}, total = 0;
    for (int i = 0; i < srv.nworkers; i++)
        for (int b = 0; b < REPL_LAG_BUCKETS; b++) {
            uint64_t n = __atomic_load_n(&srv.workers[i]->lag_hist[b], __ATOMIC_RELAXED);
            sum[b] += n;
            total += n;
        }
    *samples = total;
    if (!total)
        return 0;
    uint64_t want = (uint64_t)(q * (double)total), acc = 0;
    for (int b = 0; b < REPL_LAG_BUCKETS; b++) {
        acc += sum[b];
        if (acc > want)
            return b < 100 ? (uint64_t)(b + 1) * 10 : (uint64_t)(b - 99) * 1000;
    }
    return 100000;
}

void repl_replica_pass(struct worker *w)
{
    uint64_t epoch = __atomic_load_n(&repl.link_epoch, __ATOMIC_ACQUIRE);
    if (epoch != w->link_epoch_seen)
        switch_link(w, __atomic_load_n(&repl.link, __ATOMIC_ACQUIRE), epoch);
    struct repl_link *L = w->link;
    if (!L)
        return;
    int k = L->slot;
    bool advanced = false; /* we applied something: tell whoever waits for it */
    for (uint32_t s = (uint32_t)w->id, i = 0; s < srv.nshards; s += (uint32_t)srv.nworkers, i++) {
        if (!w->rstarted[i]) {
            if (!__atomic_load_n(&ctl_start_set(&L->ctl, k)[s], __ATOMIC_ACQUIRE))
                continue;
            w->rpos[i] = ctl_sync_start(&L->ctl, k)[s];
            w->rstarted[i] = 1;
        }
        uint64_t pos = w->rpos[i];
        /* The tail and the time it was published, for the apply lag once we reach it. */
        uint64_t goal = ring_tail(&L->log, s);
        uint64_t goal_ns = ring_tail_ns(&L->log, s);
        int rc = apply_some(w, L, s, &pos, APPLY_BUDGET);
        if (rc == RING_LAPPED || rc == RING_CORRUPT) {
            rk_log(RK_LOG_WARNING, "replica: shard %u log %s at position %llu", s,
                   rc == RING_LAPPED ? "lapped" : "corrupt", (unsigned long long)pos);
            __atomic_store_n(&repl.relink, 1, __ATOMIC_RELEASE);
            w->link = NULL; /* stop applying until the main thread relinks */
            return;
        }
        if (pos != w->rpos[i]) {
            /* Samples count once the full sync is over: the lag of the live stream. */
            if (pos == goal && goal_ns &&
                !__atomic_load_n(&repl.sync_in_progress, __ATOMIC_RELAXED))
                lag_sample(w, rk_mono_ns() - goal_ns);
            w->rpos[i] = pos;
            __atomic_store_n(&ctl_applied(&L->ctl, k)[s], pos, __ATOMIC_RELEASE);
            advanced = true;
        }
    }
    if (advanced && L->self) {
        /* The replication thread acknowledges what we applied: wake it if it sleeps. */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (__atomic_load_n(&repl_rx_waiting, __ATOMIC_RELAXED)) {
            __atomic_store_n(&repl_rx_waiting, 0, __ATOMIC_RELAXED);
            uint64_t one = 1;
            ssize_t n = write(repl_tcp_efd, &one, sizeof(one));
            (void)n;
        }
    } else if (advanced) {
        /* Our applied positions are stored before we look at the master's flags.  Every
         * waiting worker, not only the owners of the shards we advanced: a reply whose parts
         * are on several shards, or a WAIT, waits on its connection's worker. */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        for (int m = 0; m < L->master_workers; m++) {
            if (!__atomic_load_n(&L->ctl.hdr->ack_waiting[m], __ATOMIC_RELAXED))
                continue;
            __atomic_store_n(&L->ctl.hdr->ack_waiting[m], 0, __ATOMIC_RELAXED);
            uint64_t one = 1;
            ssize_t n = write(L->master_efds[m], &one, sizeof(one)); /* non-blocking eventfd */
            (void)n;
        }
    }
}

static bool records_waiting(struct worker *w, struct repl_link *L)
{
    for (uint32_t s = (uint32_t)w->id, i = 0; s < srv.nshards; s += (uint32_t)srv.nworkers, i++) {
        if (!w->rstarted[i]) {
            if (__atomic_load_n(&ctl_start_set(&L->ctl, L->slot)[s], __ATOMIC_ACQUIRE))
                return true;
        } else if (ring_tail(&L->log, s) != w->rpos[i]) {
            return true;
        }
    }
    return false;
}

bool repl_replica_busy(struct worker *w)
{
    if (__atomic_load_n(&repl.link_epoch, __ATOMIC_ACQUIRE) != w->link_epoch_seen)
        return true;
    struct repl_link *L = w->link;
    if (!L)
        return false;
    if (records_waiting(w, L))
        return true;
    struct ctl_slot *sl = ctl_slot(&L->ctl, L->slot);
    __atomic_store_n(&sl->sleeping[w->id], 1, __ATOMIC_RELAXED);
    /* Our flag is stored before we look at the tails once more (see net/repl.h). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (records_waiting(w, L)) {
        __atomic_store_n(&sl->sleeping[w->id], 0, __ATOMIC_RELAXED);
        return true;
    }
    return false;
}
