/*
 * repl_failover: FAILOVER, a coordinated switchover from this master to one of its replicas,
 * with Redis's syntax: FAILOVER [TO host port] [TIMEOUT ms] [FORCE] | FAILOVER ABORT.
 *
 * The command answers +OK at once; the main thread then runs the steps, a little on every tick:
 *   1. waiting-for-sync: writes are paused (write commands get -TRYAGAIN; Redis blocks them
 *      instead), then every worker makes a few loop passes, so that no write that started
 *      before the pause is still on its way into the log;
 *   2. the target must have applied every shard's log up to its tail (a tail that no longer
 *      moves): then nothing that any client was told is written is missing on it;
 *   3. failover-in-progress: the target is told REPLICAOF NO ONE (it keeps its data and takes
 *      a new replication id, keeping ours as replid2), and once it answers ROLE as a master,
 *      this server becomes its replica and continues with a partial resync;
 *   4. writes are resumed (now refused with -READONLY, as on any replica).
 * At TIMEOUT, without FORCE, or when the target can't be told, or on FAILOVER ABORT, the
 * switchover rolls back: writes resume here and nothing else changed.  With FORCE the handover
 * goes on at TIMEOUT even though the target is behind (writes it did not get are lost).
 */
#include "net/repl.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/config.h"
#include "net/server.h"

#define PASSES_NEEDED 3

static struct {
    struct repl_failover req;
    int slot;
    int64_t started_ms;
    uint64_t *passes0; /* every worker's pass count when writes were paused */
} F;

const char *repl_failover_state(void)
{
    switch (__atomic_load_n(&repl.failover_state, __ATOMIC_ACQUIRE)) {
    case FO_WAIT_SYNC:
        return "waiting-for-sync";
    case FO_IN_PROGRESS:
        return "failover-in-progress";
    default:
        return "no-failover";
    }
}

static bool host_matches(const char *want, const char *addr)
{
    return strcmp(want, addr) == 0 ||
           (strcmp(addr, "127.0.0.1") == 0 && strcmp(want, "localhost") == 0);
}

static uint64_t slot_applied_sum(int k)
{
    uint64_t sum = 0;
    for (uint32_t s = 0; s < srv.nshards; s++)
        sum += __atomic_load_n(&ctl_applied(&repl.ctl, k)[s], __ATOMIC_ACQUIRE);
    return sum;
}

/* The replica to hand over to: the one named, or the online one furthest ahead.  -1 if none. */
static int pick_target(const struct repl_failover *rq)
{
    int best = -1;
    uint64_t best_off = 0;
    for (int k = 0; k < CTL_MAX_REPLICAS; k++) {
        struct repl_peer *p = &repl.peers[k];
        if (!__atomic_load_n(&p->active, __ATOMIC_ACQUIRE))
            continue;
        if (rq->host[0]) {
            if (p->port == rq->port && host_matches(rq->host, p->addr))
                return k;
            continue;
        }
        if (__atomic_load_n(&ctl_slot(&repl.ctl, k)->state, __ATOMIC_ACQUIRE) != CTL_ONLINE)
            continue;
        uint64_t off = slot_applied_sum(k);
        if (best < 0 || off > best_off) {
            best = k;
            best_off = off;
        }
    }
    return best;
}

void srv_failover(struct conn *c, struct req *req)
{
    struct reply r;
    conn_reply_begin(c, &r, req->proto, req->crlf);
    struct repl_failover rq = {0};
    bool abort_req = false;
    const char *err = NULL;
    for (int i = 1; i < req->argc && !err; i++) {
        const struct arg *a = &req->argv[i];
        if (rk_eqi(a->p, a->len, "to") && i + 2 < req->argc && !rq.host[0]) {
            const struct arg *h = &req->argv[i + 1], *p = &req->argv[i + 2];
            long long port;
            if (h->len == 0 || h->len >= sizeof(rq.host) || rk_str2ll(p->p, p->len, &port) < 0 ||
                port <= 0 || port > 65535) {
                err = "ERR Invalid host or port";
                break;
            }
            memcpy(rq.host, h->p, h->len);
            rq.port = (int)port;
            i += 2;
        } else if (rk_eqi(a->p, a->len, "timeout") && i + 1 < req->argc) {
            long long t;
            const struct arg *v = &req->argv[++i];
            if (rk_str2ll(v->p, v->len, &t) < 0 || t <= 0)
                err = "ERR FAILOVER timeout must be greater than 0";
            rq.timeout_ms = t;
        } else if (rk_eqi(a->p, a->len, "force")) {
            rq.force = true;
        } else if (rk_eqi(a->p, a->len, "abort") && req->argc == 2) {
            abort_req = true;
        } else {
            err = "ERR syntax error";
        }
    }
    int state = __atomic_load_n(&repl.failover_state, __ATOMIC_ACQUIRE);
    if (!err && abort_req) {
        if (state == FO_NONE)
            err = "ERR No failover in progress.";
        else
            __atomic_store_n(&repl.failover_abort, 1, __ATOMIC_RELEASE);
    } else if (!err) {
        int n = 0; /* replicas that are online (a full sync is not a replica yet) */
        for (int k = 0; k < CTL_MAX_REPLICAS; k++)
            n += __atomic_load_n(&repl.peers[k].active, __ATOMIC_ACQUIRE) &&
                 __atomic_load_n(&ctl_slot(&repl.ctl, k)->state, __ATOMIC_ACQUIRE) == CTL_ONLINE;
        if (repl_is_replica())
            err = "ERR FAILOVER is not valid when server is a replica.";
        else if (rq.force && (!rq.host[0] || !rq.timeout_ms))
            err = "ERR FAILOVER with force option requires both a timeout and target HOST and "
                  "IP.";
        else if (n == 0)
            err = "ERR FAILOVER requires connected replicas.";
        else if (state != FO_NONE || __atomic_load_n(&repl.failover_req, __ATOMIC_ACQUIRE))
            err = "ERR FAILOVER already in progress.";
        else if (rq.host[0] && pick_target(&rq) < 0)
            err = "ERR FAILOVER target HOST and PORT is not a replica.";
        else if (rq.host[0] && __atomic_load_n(&ctl_slot(&repl.ctl, pick_target(&rq))->state,
                                               __ATOMIC_ACQUIRE) != CTL_ONLINE)
            err = "ERR FAILOVER target replica is not online.";
    }
    if (!err && !abort_req) {
        /* The state and the pause take effect now (INFO says so at once, as in Redis); the
         * main thread takes the request on its next tick. */
        int none = FO_NONE;
        if (!__atomic_compare_exchange_n(&repl.failover_state, &none, FO_WAIT_SYNC, false,
                                         __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
            err = "ERR FAILOVER already in progress.";
        } else {
            __atomic_store_n(&repl.writes_paused, 1, __ATOMIC_RELEASE);
            struct repl_failover *p = rk_malloc(sizeof(*p));
            *p = rq;
            struct repl_failover *old =
                __atomic_exchange_n(&repl.failover_req, p, __ATOMIC_ACQ_REL);
            rk_free(old);
        }
    }
    if (err)
        reply_error(&r, err);
    else
        reply_ok(&r);
    conn_reply_end(c, &r);
}

/* ---- main thread -------------------------------------------------------------------------- */

static void finish(const char *what)
{
    __atomic_store_n(&repl.writes_paused, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&repl.failover_state, FO_NONE, __ATOMIC_RELEASE);
    __atomic_store_n(&repl.failover_abort, 0, __ATOMIC_RELEASE);
    rk_free(F.passes0);
    F.passes0 = NULL;
    rk_log(RK_LOG_NOTICE, "FAILOVER %s", what);
}

static bool workers_passed(void)
{
    uint64_t one = 1;
    bool all = true;
    for (int i = 0; i < srv.nworkers; i++) {
        struct worker *w = srv.workers[i];
        if (__atomic_load_n(&w->passes, __ATOMIC_RELAXED) < F.passes0[i] + PASSES_NEEDED) {
            all = false;
            ssize_t n = write(w->event_fd, &one, sizeof(one)); /* a sleeping worker wakes */
            (void)n;
        }
    }
    return all;
}

/* Has the target applied every shard up to its tail? */
static bool target_caught_up(void)
{
    for (uint32_t s = 0; s < srv.nshards; s++)
        if (__atomic_load_n(&ctl_applied(&repl.ctl, F.slot)[s], __ATOMIC_ACQUIRE) <
            ring_tail(&repl.log, s))
            return false;
    return true;
}

/* A short blocking exchange with the target: one command, one reply line. */
static int ask_target(const char *host, int port, const char *cmd, char *line, size_t cap)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    char ps[16];
    snprintf(ps, sizeof(ps), "%d", port);
    if (getaddrinfo(host, ps, &hints, &res) != 0)
        return -1;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = 1};
    int rc = -1;
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        if (connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
            char out[600];
            size_t n = 0;
            if (cfg.masterauth[0])
                n = (size_t)snprintf(out, sizeof(out), "*2\r\n$4\r\nAUTH\r\n$%zu\r\n%s\r\n",
                                     strlen(cfg.masterauth), cfg.masterauth);
            n += (size_t)snprintf(out + n, sizeof(out) - n, "%s", cmd);
            if (n < sizeof(out) && send(fd, out, n, MSG_NOSIGNAL) == (ssize_t)n) {
                /* Read every reply line of the exchange; keep the last one. */
                size_t got = 0;
                int want = cfg.masterauth[0] ? 2 : 1, lines = 0;
                char buf[1024];
                while (lines < want && got < sizeof(buf) - 1) {
                    ssize_t k = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
                    if (k <= 0)
                        break;
                    got += (size_t)k;
                    buf[got] = '\0';
                    lines = 0;
                    for (char *p = buf; (p = strstr(p, "\r\n")); p += 2)
                        lines++;
                }
                if (lines >= want) {
                    char *last = buf;
                    for (int i = 0; i < want - 1; i++)
                        last = strstr(last, "\r\n") + 2;
                    snprintf(line, cap, "%.*s", (int)strcspn(last, "\r"), last);
                    rc = 0;
                }
            }
        }
        close(fd);
    }
    freeaddrinfo(res);
    return rc;
}

static void hand_over(void)
{
    struct repl_peer *p = &repl.peers[F.slot];
    char host[256], line[256];
    snprintf(host, sizeof(host), "%s", F.req.host[0] ? F.req.host : p->addr);
    int port = p->port;
    __atomic_store_n(&repl.failover_state, FO_IN_PROGRESS, __ATOMIC_RELEASE);
    if (ask_target(host, port, "*3\r\n$9\r\nREPLICAOF\r\n$2\r\nNO\r\n$3\r\nONE\r\n", line,
                   sizeof(line)) < 0 ||
        strcmp(line, "+OK") != 0) {
        finish("aborted: the target did not accept REPLICAOF NO ONE; rolled back");
        return;
    }
    /* The target promotes itself on its next tick: wait (at most 3 s) until it says master,
     * so that we do not follow a server that still follows us.  It accepted, so there is no
     * going back: two masters would be worse than a late handover. */
    bool master = false;
    int64_t until = rk_now_ms() + 3000;
    while (!master && rk_now_ms() < until) {
        if (ask_target(host, port, "*1\r\n$4\r\nROLE\r\n", line, sizeof(line)) == 0)
            master = strcmp(line, "*3") == 0; /* a master's ROLE is a 3-element array */
        if (!master)
            usleep(20 * 1000);
    }
    if (!master)
        rk_log(RK_LOG_WARNING, "FAILOVER: the target accepted but does not say master yet: "
                               "following it anyway");
    /* Follow it the way it followed us: over TCP, our log continues with a partial resync. */
    repl_follow(host, port, p->tcp);
    finish("done: this server is now a replica of the new master");
}

void repl_failover_tick(void)
{
    struct repl_failover *rq = __atomic_exchange_n(&repl.failover_req, NULL, __ATOMIC_ACQ_REL);
    if (!rq && !F.passes0)
        return; /* nothing under way */
    if (rq) {
        F.req = *rq;
        rk_free(rq);
        F.slot = pick_target(&F.req);
        if (F.slot < 0 || repl_is_replica()) {
            finish("aborted: no online replica to hand over to");
            return;
        }
        F.started_ms = rk_now_ms();
        F.passes0 = rk_calloc((size_t)srv.nworkers, sizeof(uint64_t));
        for (int i = 0; i < srv.nworkers; i++)
            F.passes0[i] = __atomic_load_n(&srv.workers[i]->passes, __ATOMIC_RELAXED);
        __atomic_store_n(&repl.writes_paused, 1, __ATOMIC_RELEASE);
        rk_log(RK_LOG_NOTICE, "FAILOVER requested to %s:%d: writes paused, waiting for the target",
               repl.peers[F.slot].addr, repl.peers[F.slot].port);
    }
    /* Waiting for sync: poll for up to ~50 ms per tick so the handover is not held to 100 ms
     * steps. */
    for (int i = 0; i < 50; i++) {
        if (__atomic_load_n(&repl.failover_abort, __ATOMIC_ACQUIRE)) {
            finish("aborted by FAILOVER ABORT; rolled back");
            return;
        }
        if (!__atomic_load_n(&repl.peers[F.slot].active, __ATOMIC_ACQUIRE)) {
            finish("aborted: the target replica went away; rolled back");
            return;
        }
        if (workers_passed() && target_caught_up()) {
            hand_over();
            return;
        }
        if (F.req.timeout_ms && rk_now_ms() - F.started_ms >= F.req.timeout_ms) {
            if (F.req.force) {
                rk_log(RK_LOG_WARNING, "FAILOVER: timeout with FORCE: handing over anyway");
                hand_over();
            } else {
                finish("timed out: the target did not catch up; rolled back");
            }
            return;
        }
        usleep(1000);
    }
}
