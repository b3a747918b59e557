/*
 * conn: a client connection's life and the order of its replies.
 *
 * REPLY ORDER.  A client may pipeline requests whose keys live on different workers; the
 * replies must still leave in request order.  While nothing is outstanding, a reply made on
 * this worker is appended straight to the connection's output buffer (pend): the common case
 * costs nothing extra.  As soon as one request goes to another worker, its reply gets a slot
 * at the tail of the connection's slot queue, and every later reply, wherever it is made,
 * gets a slot behind it.  When a slot's reply is complete and it is at the head of the queue,
 * it and every complete slot behind it move to pend.  So bytes reach pend in request order.
 *
 * LIFETIME.  Completions and replies from other workers point at the connection, so it is
 * freed only when it is closing and refs, the count of such outstanding operations (an armed
 * recv, a send in flight, parts away on other workers, a place on the flush list), is zero.
 */
#include "net/server.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/dispatch.h"
#include "net/repl.h"

void conn_mark_dirty(struct conn *c)
{
    if (c->dirty || c->closing)
        return;
    c->dirty = true;
    c->refs++;
    c->next_dirty = c->w->dirty;
    c->w->dirty = c;
}

/* Slots of at most one part are recycled through a per-worker free list, buffers and all:
 * a pipeline that crosses workers makes and drops one per request. */
#define SLOT_POOL_MAX 4096
#define SLOT_POOL_BUF_MAX 4096

static void slot_free(struct worker *w, struct slot *s)
{
    if (s->nparts <= 1 && w->slot_pool_len < SLOT_POOL_MAX && s->out.cap <= SLOT_POOL_BUF_MAX &&
        (s->nparts == 0 || s->parts[0].b.cap <= SLOT_POOL_BUF_MAX) && !s->argv) {
        s->next = w->slot_pool;
        w->slot_pool = s;
        w->slot_pool_len++;
        return;
    }
    buf_free(&s->out);
    for (int i = 0; i < s->nparts; i++)
        buf_free(&s->parts[i].b);
    rk_free(s->argv);
    rk_free(s->argmem);
    rk_free(s);
}

void conn_slot_pool_free(struct worker *w)
{
    struct slot *s;
    while ((s = w->slot_pool)) {
        w->slot_pool = s->next;
        buf_free(&s->out);
        buf_free(&s->parts[0].b);
        rk_free(s);
    }
    w->slot_pool_len = 0;
}

struct slot *conn_slot_new(struct conn *c, int nparts, int comb, int proto, int crlf)
{
    struct slot *s;
    struct worker *w = c->w;
    if (nparts <= 1 && w->slot_pool) {
        s = w->slot_pool;
        w->slot_pool = s->next;
        w->slot_pool_len--;
        struct buf out = s->out, pb = s->parts[0].b;
        memset(s, 0, sizeof(*s) + sizeof(struct part));
        s->out = out;
        s->out.len = 0;
        s->parts[0].b = pb;
        s->parts[0].b.len = 0;
    } else {
        /* Pool slots always have room for one part, so any slot can go back to the pool. */
        size_t np = nparts < 1 ? 1 : (size_t)nparts;
        s = rk_calloc(1, sizeof(*s) + np * sizeof(struct part));
    }
    s->nparts = nparts;
    s->remaining = nparts;
    s->comb = (uint8_t)comb;
    s->proto = (uint8_t)proto;
    s->crlf = (uint8_t)crlf;
    if (c->slot_tail)
        c->slot_tail->next = s;
    else
        c->slot_head = s;
    c->slot_tail = s;
    return s;
}

void conn_reply_begin(struct conn *c, struct reply *r, int proto, int crlf)
{
    if (!c->slot_head) {
        reply_init(r, &c->pend, proto, crlf);
        return;
    }
    struct slot *s = conn_slot_new(c, 0, COMB_ONE, proto, crlf);
    s->done = true;
    reply_init(r, &s->out, proto, crlf);
}

void conn_reply_end(struct conn *c, struct reply *r)
{
    if (r->b == &c->pend)
        conn_mark_dirty(c);
}

/* Move every finished slot at the head of the queue to pend. */
static void drain_slots(struct conn *c)
{
    struct slot *s;
    bool moved = false;
    while ((s = c->slot_head) && s->done) {
        c->slot_head = s->next;
        if (!c->slot_head)
            c->slot_tail = NULL;
        if (!c->closing) {
            if (c->pend.len == 0 && c->pend.cap < s->out.cap) {
                /* Take the slot's buffer instead of copying it. */
                struct buf t = c->pend;
                c->pend = s->out;
                s->out = t;
            } else {
                buf_append(&c->pend, s->out.p, s->out.len);
            }
        }
        slot_free(c->w, s);
        moved = true;
    }
    if (moved)
        conn_mark_dirty(c);
}

void conn_slot_finish(struct conn *c, struct slot *s)
{
    if (!dispatch_combine(c, s))
        return; /* a next phase was started */
    s->done = true;
    if (s == c->slot_head)
        drain_slots(c);
}

void conn_part_done(struct conn *c, struct slot *s, int i)
{
    if (i >= 0)
        s->parts[i].done = true;
    rk_assert(s->remaining > 0);
    if (--s->remaining > 0)
        return;
    if (sync_slot_gate(c, s))
        return; /* waits for replicas that hold every part; finished later */
    conn_slot_finish(c, s);
}

void conn_part_deliver(struct conn *c, struct slot *s, int i, const char *p, size_t n,
                       long long ival, long nelem, const struct part_sync *ps)
{
    if (s->nparts == 1 && s->comb == COMB_ONE && s == c->slot_head && s->remaining == 1) {
        /* The common case, one remote key at the head of the queue: straight to pend. */
        c->slot_head = s->next;
        if (!c->slot_head)
            c->slot_tail = NULL;
        if (!c->closing)
            buf_append(&c->pend, p, n);
        slot_free(c->w, s);
        conn_mark_dirty(c);
        drain_slots(c);
        return;
    }
    struct part *pt = &s->parts[i];
    buf_append(&pt->b, p, n);
    pt->ival = ival;
    pt->nelem = nelem;
    if (ps)
        pt->ps = *ps;
    conn_part_done(c, s, i);
}

void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    struct worker *w = c->w;
    STAT_ADD(w, connected_clients, (uint64_t)-1);
    rk_log(RK_LOG_VERBOSE, "client %s (id %llu) closed", c->addr, (unsigned long long)c->id);
    /* Ends the armed multishot recv (it completes with 0); the fd is closed once no
     * operation refers to it. */
    shutdown(c->fd, SHUT_RDWR);
}

void conn_free_final(struct conn *c)
{
    struct slot *s = c->slot_head;
    while (s) {
        struct slot *n = s->next;
        slot_free(c->w, s);
        s = n;
    }
    if (c->fd >= 0)
        close(c->fd);
    buf_free(&c->in);
    buf_free(&c->out);
    buf_free(&c->pend);
    proto_state_free(&c->ps);
    req_free(&c->req);
    rk_free(c->name);
    rk_free(c);
}

void conn_release(struct conn *c)
{
    if (!c->closing || c->refs > 0)
        return;
    struct worker *w = c->w;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    conn_free_final(c);
}
