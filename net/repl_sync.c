/*
 * repl_sync: semi-sync and sync writes, and WAIT.
 *
 * In sync-mode semi or sync, a write's reply leaves only once sync-replicas replicas have
 * received (semi) or applied (sync) the log records it made.  Same-host replicas apply what
 * they read straight from the log, so for them received and applied are the same position;
 * TCP replicas acknowledge both (net/repl_tcp.c).
 *
 * HOLDING.  Every keyspace command in these modes runs through sync_exec() on the shard's
 * owner.  A command that changed the shard has its reply kept in the shard's queue with the
 * log position after its records; sync_progress() releases replies from the head of the queue
 * as replicas' applied positions in the control region pass them, and at sync-timeout
 * follows sync-fallback (reply anyway and count it in INFO sync_timeouts, or reply an error).
 *
 * NOT VISIBLE BEFORE IT IS ACKNOWLEDGED.  While a shard has a write waiting, a command that
 * could observe it is not run: it is copied into the same queue and run when it reaches the
 * head and every write logged so far on the shard is acknowledged (or released by the
 * fallback).  Only blind writes (SET without NX/XX/GET, SETEX, PSETEX, the parts of MSET) run
 * at once while writes wait, since their replies do not depend on what is stored; once any
 * command waits in the queue, everything after it on that shard waits too, in order, so reads
 * cannot be starved by a stream of writes.  So no client of the master can read a write that
 * a failover could still lose.  Acks are batched: one replica position covers every write
 * logged before it, so a single ack releases all the replies it passes.
 *
 * THE SAME REPLICAS FOR EVERY PART.  Acknowledgements are positions per replica and per
 * shard.  A command that wrote on one shard is acknowledged by the replicas past its position
 * there.  One whose parts wrote on several shards (MSET, DEL of several keys, FLUSHALL), and
 * WAIT, need replicas that hold every part: with two replicas and sync-replicas 1, one replica
 * holding shard 0's part and the other shard 1's is no replica that holds the write, and
 * neither could be promoted without losing some of it.  So each part's reply carries its shard
 * and position (struct part_sync); once a slot has all its parts, sync_slot_gate counts the
 * replicas past every part's position, and while they are too few the slot waits on its
 * connection's worker (w->sync_slots), rechecked each pass as acknowledgements come, until the
 * earliest deadline of its parts; then sync-fallback applies to the whole reply.
 *
 * WAIT numreplicas timeout runs on every shard (a part per shard, in order behind the
 * connection's earlier commands there, and behind the commands waiting in the shard's queue
 * if any), which answers with its log's end; the slot
 * then waits as above until numreplicas replicas hold every shard's end, or the timeout, and
 * answers how many do: never more than Redis's WAIT would.
 */
#include "net/repl.h"

#include <stdlib.h>
#include <string.h>

#include "net/config.h"
#include "net/dispatch.h"
#include "net/server.h"

enum held_kind { HELD_REPLY, HELD_CMD };

/* Released entries are kept on the worker for the next write (every write in these modes
 * holds one), with their buffers: at most HELD_SPARE_MAX of them, none whose buffer grew past
 * HELD_SPARE_BUF bytes. */
#define HELD_SPARE_MAX 4096
#define HELD_SPARE_BUF 1024

struct held {
    struct held *next;
    uint8_t kind;
    uint8_t proto, crlf;
    struct sync_target t;
    uint64_t pos;     /* HELD_REPLY: log position to be acknowledged */
    int64_t deadline; /* ms; INT64_MAX = none */
    long long ival;
    long nelem;
    ks_cmd_fn *fn; /* HELD_CMD */
    uint64_t hash;
    int argc;
    struct arg *argv;
    struct buf b; /* HELD_REPLY: the reply; HELD_CMD: the argument bytes */
};

struct shard_sync {
    struct held *head, *tail; /* replies and commands, in execution order */
    int cmds;                 /* HELD_CMD entries in the queue */
    int64_t last_write_deadline;
};

bool sync_active(void)
{
    return cfg_sync_mode() != SYNC_ASYNC;
}

static struct shard_sync *ss_of(struct worker *w, uint32_t s)
{
    if (!w->ssync)
        w->ssync = rk_calloc(srv.nshards / (uint32_t)srv.nworkers + 1, sizeof(struct shard_sync));
    return &((struct shard_sync *)w->ssync)[s / (uint32_t)srv.nworkers];
}

/* Where each attached replica is in shard s's log: how far it received (semi) or applied (sync
 * and WAIT) it.  Same-host replicas apply what they read and report only applied; TCP
 * replicas report both.  Positions only grow, so a view taken once serves a whole queue. */
struct ack_view {
    int n;
    uint64_t pos[CTL_MAX_REPLICAS];
};

static void ack_view(uint32_t s, struct ack_view *v)
{
    v->n = 0;
    if (!repl.ctl.hdr)
        return;
    bool semi = cfg_sync_mode() == SYNC_SEMI;
    for (int k = 0; k < CTL_MAX_REPLICAS; k++) {
        if (!__atomic_load_n(&repl.peers[k].active, __ATOMIC_ACQUIRE))
            continue;
        uint64_t p = __atomic_load_n(&ctl_applied(&repl.ctl, k)[s], __ATOMIC_ACQUIRE);
        if (semi) {
            uint64_t r = __atomic_load_n(&ctl_received(&repl.ctl, k)[s], __ATOMIC_ACQUIRE);
            if (r > p)
                p = r;
        }
        v->pos[v->n++] = p;
    }
}

/* How many replicas of the view have the shard up to pos. */
static long long ack_count(const struct ack_view *v, uint64_t pos)
{
    if (pos == UINT64_MAX)
        return 0;
    long long n = 0;
    for (int i = 0; i < v->n; i++)
        n += v->pos[i] >= pos;
    return n;
}

static long long acked(uint32_t s, uint64_t pos)
{
    struct ack_view v;
    ack_view(s, &v);
    return ack_count(&v, pos);
}

static uint64_t log_tail(uint32_t s)
{
    return repl_logging() ? ring_tail(&repl.log, s) : UINT64_MAX;
}

void sync_deliver(struct worker *w, const struct sync_target *t, const char *p, size_t n,
                  long long ival, long nelem, const struct part_sync *ps)
{
    if (t->remote) {
        struct xm_rep *rp;
        if (ps) {
            /* XM_REPLY_SYNC: the part_sync, then the XM_REPLY record */
            struct part_sync *q = worker_post(w, t->from, sizeof(*q) + sizeof(*rp) + n,
                                              XM_REPLY_SYNC);
            *q = *ps;
            rp = (struct xm_rep *)(q + 1);
        } else {
            rp = worker_post(w, t->from, sizeof(*rp) + n, XM_REPLY);
        }
        rp->conn = t->conn;
        rp->slot = t->slot;
        rp->ival = ival;
        rp->nelem = nelem;
        rp->part = t->part;
        rp->blen = (uint32_t)n;
        if (n)
            memcpy(rp->bytes, p, n);
    } else {
        struct conn *c = t->conn;
        c->refs--;
        conn_part_deliver(c, t->slot, t->part, p, n, ival, nelem, ps);
        conn_release(c);
    }
}

static struct held *held_new(struct worker *w, struct shard_sync *ss, int kind,
                             const struct sync_target *t, int proto, int crlf)
{
    struct held *h = w->held_spare;
    if (h) {
        /* What a caller does not set; argv is NULL since held_free. */
        w->held_spare = h->next;
        w->held_nspare--;
        if (w->held_spare) /* the next write's, likely in this same batch */
            __builtin_prefetch(w->held_spare, 1);
        h->next = NULL;
        h->pos = 0;
        h->ival = 0;
        h->nelem = 0;
        h->b.len = 0;
    } else {
        h = rk_calloc(1, sizeof(*h));
    }
    h->kind = (uint8_t)kind;
    h->t = *t;
    h->proto = (uint8_t)proto;
    h->crlf = (uint8_t)crlf;
    if (ss->tail)
        ss->tail->next = h;
    else
        ss->head = h;
    ss->tail = h;
    return h;
}

static void held_free(struct worker *w, struct held *h)
{
    rk_free(h->argv);
    h->argv = NULL;
    if (w->held_nspare >= HELD_SPARE_MAX || h->b.cap > HELD_SPARE_BUF) {
        buf_free(&h->b);
        rk_free(h);
        return;
    }
    h->next = w->held_spare;
    w->held_spare = h;
    w->held_nspare++;
}

/* Is this command a blind write: its reply can't depend on what is stored? */
static bool blind_write(ks_cmd_fn *fn, int argc, const struct arg *argv)
{
    if (fn == ks_mset_one || fn == ks_setex || fn == ks_psetex)
        return true;
    if (fn != ks_set)
        return false;
    for (int i = 3; i < argc; i++) {
        const struct arg *a = &argv[i];
        if (rk_eqi(a->p, a->len, "nx") || rk_eqi(a->p, a->len, "xx") || rk_eqi(a->p, a->len, "get"))
            return false;
    }
    return true;
}

/* Run fn now; hold its reply if it wrote. */
static void run_now(struct worker *w, struct shard_sync *ss, uint32_t s, uint64_t hash,
                    ks_cmd_fn *fn, int argc, const struct arg *argv, int proto, int crlf,
                    const struct sync_target *t, struct held *into)
{
    struct reply r;
    w->scratch.len = 0;
    reply_init(&r, &w->scratch, proto, crlf);
    w->sync_wrote = false;
    dispatch_ks_run(w, s, hash, fn, argc, argv, &r);
    if (!w->sync_wrote) {
        sync_deliver(w, t, w->scratch.p, w->scratch.len, r.ival, r.nelem, NULL);
        return;
    }
    struct held *h = into;
    if (!h) {
        h = held_new(w, ss, HELD_REPLY, t, proto, crlf);
    } else {
        h->kind = HELD_REPLY;
        h->b.len = 0;
        rk_free(h->argv);
        h->argv = NULL;
    }
    h->pos = log_tail(s);
    h->deadline = w->now_ms + cfg_sync_timeout();
    ss->last_write_deadline = h->deadline;
    h->ival = r.ival;
    h->nelem = r.nelem;
    buf_append(&h->b, w->scratch.p, w->scratch.len);
    w->sync_held++;
}

void sync_exec(struct worker *w, uint32_t s, uint64_t hash, ks_cmd_fn *fn, int argc,
               const struct arg *argv, int proto, int crlf, const struct sync_target *t)
{
    struct shard_sync *ss = ss_of(w, s);
    if (ss->cmds > 0 || (ss->head && !blind_write(fn, argc, argv))) {
        /* Wait behind the writes not yet acknowledged: keep a private copy. */
        struct held *h = held_new(w, ss, HELD_CMD, t, proto, crlf);
        h->fn = fn;
        h->hash = hash;
        h->argc = argc;
        h->argv = rk_malloc(sizeof(struct arg) * (size_t)argc);
        size_t total = 0;
        for (int i = 0; i < argc; i++)
            total += argv[i].len;
        buf_reserve(&h->b, total ? total : 1);
        for (int i = 0; i < argc; i++) {
            h->argv[i].p = h->b.p + h->b.len;
            h->argv[i].len = argv[i].len;
            buf_append(&h->b, argv[i].p, argv[i].len);
        }
        h->deadline = INT64_MAX;
        ss->cmds++;
        w->sync_held++;
        return;
    }
    run_now(w, ss, s, hash, fn, argc, argv, proto, crlf, t, NULL);
}

static void wait_part_now(struct worker *w, uint32_t s, const struct sync_target *t)
{
    struct part_sync ps = {.state = PART_SYNC_ACKED,
                           .shard = s,
                           .pos = repl_logging() ? ring_tail(&repl.log, s) : 0,
                           .deadline = INT64_MAX};
    sync_deliver(w, t, NULL, 0, 0, 0, &ps);
}

void sync_wait_part(struct worker *w, uint32_t s, const struct sync_target *t)
{
    struct shard_sync *ss = ss_of(w, s);
    if (ss->cmds > 0) {
        /* Commands wait in the shard's queue, maybe this connection's: the log's end is
         * taken once they have run (an entry without fn, answered at the head). */
        struct held *h = held_new(w, ss, HELD_CMD, t, PROTO_RESP, 0);
        h->fn = NULL;
        h->argc = 0;
        h->deadline = INT64_MAX;
        ss->cmds++;
        w->sync_held++;
        return;
    }
    wait_part_now(w, s, t);
}

void sync_norepl(struct reply *r)
{
    reply_errorf(r,
                 "NOREPL the write was applied on the master but not confirmed by %lld "
                 "replica(s) within sync-timeout",
                 cfg_sync_replicas());
}

static void release_reply(struct worker *w, struct held *h, uint32_t s, bool timed_out)
{
    struct part_sync ps = {.state = timed_out ? PART_SYNC_FELL_BACK : PART_SYNC_ACKED,
                           .shard = s,
                           .pos = h->pos,
                           .deadline = h->deadline};
    if (timed_out) {
        __atomic_add_fetch(&repl.sync_timeouts, 1, __ATOMIC_RELAXED);
        if (cfg_sync_fallback() == FALLBACK_ERROR) {
            struct buf b = {0};
            struct reply r;
            reply_init(&r, &b, h->proto, h->crlf);
            sync_norepl(&r);
            ps.refused = true;
            sync_deliver(w, &h->t, b.p, b.len, 0, 0, &ps);
            buf_free(&b);
            return;
        }
    }
    sync_deliver(w, &h->t, h->b.p, h->b.len, h->ival, h->nelem, &ps);
}

/* Release what can be released on shard s. */
static void progress_shard(struct worker *w, uint32_t s, struct shard_sync *ss)
{
    long long need = cfg_sync_replicas();
    bool async = !sync_active();
    int64_t now = w->now_ms;
    struct ack_view v;
    ack_view(s, &v);
    struct held *h;
    while ((h = ss->head)) {
        if (h->kind == HELD_REPLY) {
            bool ok = async || ack_count(&v, h->pos) >= need;
            if (!ok && now < h->deadline)
                break;
            ss->head = h->next;
            if (!ss->head)
                ss->tail = NULL;
            release_reply(w, h, s, !ok);
            held_free(w, h);
            w->sync_held--;
        } else if (!h->fn) {
            /* A WAIT part: everything before it has run, its writes are in the log. */
            ss->head = h->next;
            if (!ss->head)
                ss->tail = NULL;
            ss->cmds--;
            w->sync_held--;
            wait_part_now(w, s, &h->t);
            held_free(w, h);
        } else {
            /* A command waits until every write logged so far is acknowledged. */
            bool ok = async || ack_count(&v, log_tail(s)) >= need ||
                      now >= ss->last_write_deadline;
            if (!ok)
                break;
            ss->cmds--;
            w->sync_held--;
            struct held tmp = *h;
            /* Run it in place: if it writes, it becomes a held reply at the head. */
            run_now(w, ss, s, tmp.hash, tmp.fn, tmp.argc, tmp.argv, tmp.proto, tmp.crlf, &tmp.t, h);
            if (h->kind == HELD_CMD) {
                /* It did not write: its reply went out, drop the entry. */
                ss->head = h->next;
                if (!ss->head)
                    ss->tail = NULL;
                held_free(w, h);
            } else {
                h->t = tmp.t;
            }
        }
    }
}

/* ---- replies whose parts must all be held by the same replicas ---------------------------- */

/* How many attached replicas are past every acknowledged part's position in sl. */
static long long slot_holders(const struct slot *sl)
{
    if (!repl.ctl.hdr)
        return 0;
    bool semi = cfg_sync_mode() == SYNC_SEMI && sl->comb != COMB_WAIT; /* WAIT: applied */
    long long n = 0;
    for (int k = 0; k < CTL_MAX_REPLICAS; k++) {
        if (!__atomic_load_n(&repl.peers[k].active, __ATOMIC_ACQUIRE))
            continue;
        bool all = true;
        for (int i = 0; i < sl->nparts && all; i++) {
            const struct part_sync *ps = &sl->parts[i].ps;
            if (ps->state != PART_SYNC_ACKED)
                continue;
            uint64_t p = __atomic_load_n(&ctl_applied(&repl.ctl, k)[ps->shard], __ATOMIC_ACQUIRE);
            if (semi && p < ps->pos)
                p = __atomic_load_n(&ctl_received(&repl.ctl, k)[ps->shard], __ATOMIC_ACQUIRE);
            all = p >= ps->pos;
        }
        n += all;
    }
    return n;
}

enum slot_verdict { SLOT_WAIT, SLOT_READY, SLOT_TIMED_OUT, SLOT_UNBLOCKED };

/* What sl's wait (on connection c) comes to at now (ms), changing nothing; *count gets a
 * WAIT's answer. */
static enum slot_verdict slot_verdict(const struct slot *sl, const struct conn *c, int64_t now,
                                      long long *count)
{
    *count = 0;
    if (c->closing)
        return SLOT_READY; /* nobody to answer: finish it, the reply is dropped */
    if (repl_is_replica()) /* demoted: no replica of ours will confirm anything now */
        return sl->comb == COMB_WAIT ? SLOT_UNBLOCKED : SLOT_TIMED_OUT;
    if (sl->comb == COMB_WAIT) {
        *count = slot_holders(sl);
        return *count >= sl->wait_need || now >= sl->wait_deadline ? SLOT_READY : SLOT_WAIT;
    }
    if (!sync_active() || slot_holders(sl) >= cfg_sync_replicas())
        return SLOT_READY;
    return now < sl->wait_deadline ? SLOT_WAIT : SLOT_TIMED_OUT;
}

/* Is sl's wait over?  Then sets what its reply says (wait_count, sync_failed and
 * sync_timeouts, sync_unblocked). */
static bool slot_decided(struct slot *sl, const struct conn *c, int64_t now)
{
    long long count;
    switch (slot_verdict(sl, c, now, &count)) {
    case SLOT_WAIT:
        return false;
    case SLOT_READY:
        sl->wait_count = count;
        return true;
    case SLOT_TIMED_OUT:
        sl->sync_failed = true;
        __atomic_add_fetch(&repl.sync_timeouts, 1, __ATOMIC_RELAXED);
        return true;
    case SLOT_UNBLOCKED:
        sl->sync_unblocked = true;
        return true;
    }
    return true;
}

bool sync_slot_gate(struct conn *c, struct slot *sl)
{
    int acked_parts = 0;
    int64_t deadline = INT64_MAX;
    if (sl->comb != COMB_WAIT) {
        if (sl->nparts < 2 || !sync_active())
            return false;
        for (int i = 0; i < sl->nparts; i++) {
            const struct part_sync *ps = &sl->parts[i].ps;
            if (ps->state == PART_SYNC_FELL_BACK)
                return false; /* the fallback was taken, and counted, for this reply */
            if (ps->state == PART_SYNC_ACKED) {
                acked_parts++;
                if (ps->deadline < deadline)
                    deadline = ps->deadline;
            }
        }
        if (acked_parts < 2)
            return false;
        sl->wait_deadline = deadline;
    }
    struct worker *w = c->w;
    if (slot_decided(sl, c, w->now_ms))
        return false;
    c->refs++;
    sl->sync_conn = c;
    sl->sync_next = w->sync_slots;
    w->sync_slots = sl;
    w->sync_held++;
    return true;
}

static void progress_slots(struct worker *w)
{
    struct slot **pp = &w->sync_slots, *sl;
    while ((sl = *pp)) {
        if (!slot_decided(sl, sl->sync_conn, w->now_ms)) {
            pp = &sl->sync_next;
            continue;
        }
        *pp = sl->sync_next;
        sl->sync_next = NULL;
        w->sync_held--;
        struct conn *c = sl->sync_conn;
        c->refs--;
        conn_slot_finish(c, sl);
        conn_release(c);
    }
}

void sync_progress(struct worker *w)
{
    if (!w->sync_held)
        return;
    for (uint32_t s = (uint32_t)w->id; s < srv.nshards; s += (uint32_t)srv.nworkers) {
        struct shard_sync *ss = ss_of(w, s);
        if (ss->head)
            progress_shard(w, s, ss);
    }
    progress_slots(w);
}

bool sync_busy(struct worker *w)
{
    if (!w->sync_held || !repl.ctl.hdr)
        return false;
    /* Have replicas ring us as they apply; the fence orders the flag before our last look. */
    __atomic_store_n(&repl.ctl.hdr->ack_waiting[w->id], 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    long long need = cfg_sync_replicas();
    for (uint32_t s = (uint32_t)w->id; s < srv.nshards; s += (uint32_t)srv.nworkers) {
        struct shard_sync *ss = ss_of(w, s);
        if (ss->head && ss->head->kind == HELD_REPLY && acked(s, ss->head->pos) >= need)
            return true;
        /* A command at the head runs once every write logged so far is acknowledged (an
         * acknowledgement that came after this pass's look would otherwise wake nobody). */
        if (ss->head && ss->head->kind == HELD_CMD && acked(s, log_tail(s)) >= need)
            return true;
    }
    long long count;
    for (struct slot *sl = w->sync_slots; sl; sl = sl->sync_next)
        if (slot_verdict(sl, sl->sync_conn, w->now_ms, &count) != SLOT_WAIT)
            return true;
    return false;
}
