/*
 * client: one load-generator thread, its io_uring and its connections.  The hot path.
 *
 * Each thread owns an io_uring (SINGLE_ISSUER|DEFER_TASKRUN when the kernel takes it, else
 * COOP_TASKRUN, else plain), its sockets registered as fixed files, and per connection one
 * send buffer, one receive buffer and one slot per reply it waits for.  Nothing is shared
 * between threads while they run except the read-only key and value generators, the verify
 * bitmap (atomic bits) and a progress counter that the main thread reads.
 *
 * A connection runs in closed loop, batch after batch: it writes P requests (a SET can be
 * followed by a WAIT) into its send buffer, sends them with one send, and keeps one plain
 * recv armed until every reply of the batch has been parsed; then it builds the next batch.
 * Plain recv into the connection's own buffer, rather than multishot recv with provided
 * buffers, because the parser wants a reply's bytes contiguous and this gets that without a
 * copy; a connection has at most one recv in flight anyway, so multishot would save only the
 * SQE.
 *
 * One loop pass: stamp the batches built since the last pass with the clock, call
 * io_uring_submit_and_wait_timeout() once (it submits every SQE prepared in the pass and
 * waits for at least one completion), read the clock, handle every completion.  The two clock
 * reads per pass are the whole timing cost: every reply handled in a pass arrived at that
 * pass's time, and its latency is that time minus its batch's send stamp.  So latency here is
 * what an application sees, including the time a reply waits behind others in the same pass
 * (small, as a pass is short).
 *
 * Building a request is a memcpy of a template (built once per thread), the key's 12 digits
 * written in place, and for a SET the value copied from the value pool: no malloc, no
 * snprintf, no hashing beyond one mix for the value's pool offset.
 *
 * Bounds.  A thread issues at most its share of --requests and nothing new after the
 * deadline or a SIGINT; batches in flight then finish.  A pass that waits a whole second
 * comes back anyway (the wait has a timeout), and if no byte has moved for LG_STALL_NS the
 * thread counts a stall, shuts its sockets down (which completes the requests in flight with
 * errors) and ends.  Connection failures (refused, reset, EOF, an unparseable stream) end
 * that connection and are counted; the program's exit status reports them.
 *
 * Pacing (--rate R).  Each thread may issue R/threads requests per second: a connection
 * ready for its next batch of n builds it only while issued + n <= R/threads * elapsed +
 * pipeline (one batch of allowance, so the first batch goes at once), issued counting the
 * thread's SETs and GETs since its start.  Otherwise it waits in a FIFO of parked
 * connections, and a ready connection joins that queue behind any already in it, so that the
 * budget goes round fairly.  Each pass releases parked connections, oldest first, while the
 * budget allows, and while some are parked the wait's timeout is the time until the oldest
 * is due (or the deadline, where it stops), not the second, so batches leave on time without
 * spinning.  The budget depends on issued requests, not replies: a slow server still gets
 * at most the rate, and latency is still measured from each batch's send.  Time with nothing
 * in flight is not counted towards a stall: a parked connection waits for the clock, not for
 * the server.  Unpaced, the cost is a flag test per batch and two per pass.
 *
 * Verify.  Every writer of key k writes the same bytes (keygen.c), so a GET of k must return
 * exactly those bytes or nil.  The shared bitmap gets bit k once a SET of k is acknowledged;
 * a GET records the bit as it is sent.  A nil for a GET sent after an acknowledged SET is a
 * lost write; a value that differs is a corrupt one; both are failures.  (A key written by
 * another program, or by a run with another seed or value size, fails too: verify against a
 * server that only this run, or runs with the same seed and size, have written.)
 */
#include "bench/lg.h"

#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LG_RECV_MIN 4096 /* smallest free space a recv is armed with */
#define LG_RECV_INIT (64 * 1024)
#define LG_VERIFY_REPORTS 5 /* verify failures printed per thread */

struct lg_slot {
    uint64_t key;
    uint8_t cmd;   /* enum lg_cmd */
    uint8_t acked; /* verify, GET: a SET of key had been acknowledged when this was sent */
};

struct lg_conn {
    int fd;
    int sqe_fd;      /* what SQEs name: the fixed-file index, or fd */
    uint32_t nslots; /* replies the current batch waits for */
    uint32_t ndone;  /* ... received so far */
    bool send_armed;
    bool recv_armed;
    bool idle; /* issues nothing more (quota, deadline, stop, or dead) */
    bool dead;
    size_t need; /* parse again once rlen - rpos reaches this */
    char *sbuf;
    size_t slen, ssent;
    char *rbuf;
    size_t rcap, rlen, rpos; /* buffer size, bytes in it, bytes parsed */
    uint64_t sent_ns;        /* when the current batch was submitted */
    uint64_t rng;
    struct lg_slot *slots;
};

/* Request bytes with holes for the key digits and the value. */
struct lg_tmpl {
    char set[96];
    uint32_t set_len; /* up to the value */
    uint32_t set_key; /* offset of the key digits */
    char get[64];
    uint32_t get_len;
    uint32_t get_key;
    char wait[64];
    uint32_t wait_len;
};

struct lg_loop {
    struct lg_thread *t;
    struct lg_shared *sh;
    const struct lg_config *cfg;
    struct io_uring ring;
    bool ring_ok;
    bool fixed;      /* sockets registered as fixed files */
    bool poll_first; /* the kernel takes IORING_RECVSEND_POLL_FIRST on recv */
    struct lg_conn *conns;
    unsigned nconns;
    unsigned active; /* connections not idle */
    unsigned armed;  /* SQEs in flight */
    struct lg_tmpl tmpl;
    uint64_t remaining; /* requests this thread may still issue */
    uint64_t deadline_ns;
    uint64_t now_ns;      /* clock at the start of this pass's completions */
    uint64_t progress_ns; /* last time bytes moved */
    uint64_t last_reply_ns;
    uint64_t done; /* SET+GET replies */
    uint64_t ratio_sum;
    bool all_set, all_get;
    size_t max_line;        /* line protocol: longest reply line accepted */
    struct lg_conn **stamp; /* batches built this pass, stamped before the submit */
    unsigned nstamp;
    bool paced;              /* --rate given */
    double pace_ns;          /* paced: ns per request at this thread's share of the rate */
    struct lg_conn **parked; /* paced: ring of nconns, connections waiting for budget */
    unsigned park_head;      /* ... index of the oldest */
    unsigned nparked;
    unsigned verify_reports;
};

uint64_t lg_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *lg_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "ringkv-bench: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static void lg_note_error(struct lg_thread *t, const char *what, int err)
{
    if (t->first_error[0])
        return;
    if (err)
        snprintf(t->first_error, sizeof(t->first_error), "%s: %s", what, strerror(err));
    else
        snprintf(t->first_error, sizeof(t->first_error), "%s", what);
}

/* ---- request templates ---- */

static uint32_t lg_put(char *dst, uint32_t at, const char *s)
{
    size_t n = strlen(s);
    memcpy(dst + at, s, n);
    return at + (uint32_t)n;
}

static void lg_tmpl_init(struct lg_tmpl *T, const struct lg_config *cfg)
{
    char num[32];
    uint32_t n;
    memset(T, 0, sizeof(*T));
    if (cfg->protocol == LG_RESP) {
        n = lg_put(T->set, 0, "*3\r\n$3\r\nSET\r\n$16\r\n" LG_KEY_PREFIX);
        T->set_key = n;
        n += LG_KEY_DIGITS;
        snprintf(num, sizeof(num), "\r\n$%u\r\n", cfg->value_size);
        T->set_len = lg_put(T->set, n, num);
        n = lg_put(T->get, 0, "*2\r\n$3\r\nGET\r\n$16\r\n" LG_KEY_PREFIX);
        T->get_key = n;
        n += LG_KEY_DIGITS;
        T->get_len = lg_put(T->get, n, "\r\n");
        if (cfg->wait_n >= 0) {
            snprintf(num, sizeof(num), "%d", cfg->wait_n);
            n = lg_put(T->wait, 0, "*3\r\n$4\r\nWAIT\r\n$");
            char len[16];
            snprintf(len, sizeof(len), "%zu\r\n", strlen(num));
            n = lg_put(T->wait, n, len);
            n = lg_put(T->wait, n, num);
            T->wait_len = lg_put(T->wait, n, "\r\n$1\r\n0\r\n");
        }
    } else {
        n = lg_put(T->set, 0, "SET " LG_KEY_PREFIX);
        T->set_key = n;
        n += LG_KEY_DIGITS;
        T->set_len = lg_put(T->set, n, " ");
        n = lg_put(T->get, 0, "GET " LG_KEY_PREFIX);
        T->get_key = n;
        n += LG_KEY_DIGITS;
        T->get_len = lg_put(T->get, n, "\r\n");
    }
    _Static_assert(LG_KEY_LEN == 16, "the templates above spell the key length as $16");
}

/* ---- submission ---- */

static struct io_uring_sqe *lg_sqe(struct lg_loop *L)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&L->ring);
    if (!sqe) {
        /* The ring holds two SQEs per connection, so this is not reached; if it were,
         * submitting early only costs a syscall. */
        io_uring_submit(&L->ring);
        sqe = io_uring_get_sqe(&L->ring);
        if (!sqe) {
            fprintf(stderr, "ringkv-bench: io_uring submission queue full\n");
            exit(1);
        }
    }
    return sqe;
}

static void lg_arm_send(struct lg_loop *L, struct lg_conn *c)
{
    struct io_uring_sqe *sqe = lg_sqe(L);
    io_uring_prep_send(sqe, c->sqe_fd, c->sbuf + c->ssent, c->slen - c->ssent, MSG_NOSIGNAL);
    if (L->fixed)
        sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, (uint64_t)(c - L->conns) << 1);
    c->send_armed = true;
    L->armed++;
}

/* poll_first: the request was just sent, so its reply cannot be there yet; arm the poll
 * straight away instead of first trying a recv that would find nothing (one failed attempt
 * per request saved).  If the data is already there the poll fires at once anyway. */
static void lg_arm_recv(struct lg_loop *L, struct lg_conn *c, bool poll_first)
{
    /* Room for at least LG_RECV_MIN more bytes and for the whole reply being waited for:
     * first slide unparsed bytes to the front, then grow (rare: big values). */
    size_t want = c->need > LG_RECV_MIN ? c->need : LG_RECV_MIN;
    if (c->rcap - c->rlen < LG_RECV_MIN || c->rpos + want > c->rcap) {
        if (c->rpos > 0) {
            memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
            c->rlen -= c->rpos;
            c->rpos = 0;
        }
        size_t cap = c->rcap;
        while (cap - c->rlen < LG_RECV_MIN || want > cap)
            cap *= 2;
        if (cap != c->rcap) {
            char *nb = realloc(c->rbuf, cap);
            if (!nb) {
                fprintf(stderr, "ringkv-bench: out of memory (%zu bytes)\n", cap);
                exit(1);
            }
            c->rbuf = nb;
            c->rcap = cap;
        }
    }
    struct io_uring_sqe *sqe = lg_sqe(L);
    io_uring_prep_recv(sqe, c->sqe_fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
    if (poll_first && L->poll_first)
        sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
    if (L->fixed)
        sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, ((uint64_t)(c - L->conns) << 1) | 1);
    c->recv_armed = true;
    L->armed++;
}

/* End a connection: count it, and shut the socket down so that whatever is still in flight
 * on it completes promptly. */
static void lg_fail(struct lg_loop *L, struct lg_conn *c, const char *why, int err)
{
    if (c->dead)
        return;
    c->dead = true;
    L->t->st.conn_errors++;
    lg_note_error(L->t, why, err);
    if (!c->idle) {
        c->idle = true;
        L->active--;
    }
    shutdown(c->fd, SHUT_RDWR);
}

/* ---- batches ---- */

static inline bool lg_acked(const struct lg_shared *sh, uint64_t k)
{
    return (atomic_load_explicit(&sh->acked[k >> 6], memory_order_relaxed) >> (k & 63)) & 1;
}

/* Write the next batch into c's send buffer; false when the connection is to stop. */
static bool lg_build(struct lg_loop *L, struct lg_conn *c)
{
    const struct lg_config *cfg = L->cfg;
    const struct lg_shared *sh = L->sh;
    const struct lg_tmpl *T = &L->tmpl;
    uint64_t n = cfg->pipeline < L->remaining ? cfg->pipeline : L->remaining;
    if (n == 0 || L->now_ns >= L->deadline_ns ||
        atomic_load_explicit(&L->sh->stop, memory_order_relaxed))
        return false;
    L->remaining -= n;

    char *p = c->sbuf;
    struct lg_slot *s = c->slots;
    uint32_t vsize = cfg->value_size;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t k = lg_keygen_next(&sh->keygen, &c->rng);
        bool set =
            L->all_set || (!L->all_get && lg_rand_below(&c->rng, L->ratio_sum) < cfg->ratio_set);
        s->key = k;
        if (set) {
            memcpy(p, T->set, T->set_len);
            lg_key_digits(p + T->set_key, k);
            p += T->set_len;
            lg_value_write(&sh->values, p, k);
            p += vsize;
            p[0] = '\r';
            p[1] = '\n';
            p += 2;
            s->cmd = LG_SET;
            s++;
            if (T->wait_len) {
                memcpy(p, T->wait, T->wait_len);
                p += T->wait_len;
                s->key = k;
                s->cmd = LG_WAIT;
                s++;
            }
        } else {
            memcpy(p, T->get, T->get_len);
            lg_key_digits(p + T->get_key, k);
            p += T->get_len;
            s->cmd = LG_GET;
            s->acked = cfg->verify && lg_acked(sh, k);
            s++;
        }
    }
    c->slen = (size_t)(p - c->sbuf);
    c->ssent = 0;
    c->nslots = (uint32_t)(s - c->slots);
    c->ndone = 0;
    return true;
}

/* Build c's next batch and arm its send (and recv), or retire c if it is to stop. */
static void lg_issue(struct lg_loop *L, struct lg_conn *c)
{
    if (!lg_build(L, c)) {
        c->idle = true;
        L->active--;
        return;
    }
    L->stamp[L->nstamp++] = c;
    lg_arm_send(L, c);
    if (!c->recv_armed)
        lg_arm_recv(L, c, true);
}

/* ---- pacing (--rate) ---- */

static uint64_t lg_batch_size(const struct lg_loop *L)
{
    return L->cfg->pipeline < L->remaining ? L->cfg->pipeline : L->remaining;
}

/* The first time at which a batch of n more requests fits the budget:
 * issued + n <= elapsed / pace_ns + pipeline.  Rounded up, so it is never early. */
static uint64_t lg_pace_due(const struct lg_loop *L, uint64_t n)
{
    /* remaining started at the quota (UINT64_MAX when unbounded) and lg_build takes every
     * batch off it, so the difference is what this thread has issued. */
    uint64_t ahead = L->t->quota - L->remaining + n;
    if (ahead <= L->cfg->pipeline)
        return 0;
    double off = (double)(ahead - L->cfg->pipeline) * L->pace_ns;
    if (off >= 1e18) /* a rate so low that the batch is due in decades: never */
        return UINT64_MAX;
    return L->t->start_ns + (uint64_t)off + 1;
}

/* True when a ready connection may go on now: its batch fits the budget, or no batch will be
 * built anyway (quota spent, deadline passed, stopped), which lg_build then settles. */
static bool lg_pace_ok(const struct lg_loop *L)
{
    uint64_t n = lg_batch_size(L);
    if (n == 0 || L->now_ns >= L->deadline_ns ||
        atomic_load_explicit(&L->sh->stop, memory_order_relaxed))
        return true;
    return L->now_ns >= lg_pace_due(L, n);
}

/* Let parked connections go, oldest first, while the budget allows. */
static void lg_release(struct lg_loop *L)
{
    while (L->nparked > 0) {
        struct lg_conn *c = L->parked[L->park_head];
        if (!c->dead && !lg_pace_ok(L))
            break;
        L->park_head = L->park_head + 1 == L->nconns ? 0 : L->park_head + 1;
        L->nparked--;
        if (c->dead) /* failed while parked (the stall detector): already retired */
            continue;
        /* The server owes nothing for the time this batch was held back. */
        L->progress_ns = L->now_ns;
        lg_issue(L, c);
    }
}

/* The wait of a pass with connections parked: until the oldest is due, or until the deadline
 * if that is sooner (it then stops), and never more than the usual second. */
static void lg_pace_timeout(const struct lg_loop *L, struct __kernel_timespec *ts)
{
    uint64_t due = lg_pace_due(L, lg_batch_size(L));
    if (due > L->deadline_ns)
        due = L->deadline_ns;
    uint64_t now = lg_now_ns();
    uint64_t wait = due > now ? due - now : 0;
    if (wait < 1000000000ull) {
        ts->tv_sec = 0;
        ts->tv_nsec = (long long)wait;
    }
}

/* c has every reply of its batch: send the next one, or park c until the budget allows. */
static void lg_next(struct lg_loop *L, struct lg_conn *c)
{
    c->rlen = c->rpos = 0;
    c->need = 1;
    if (L->paced && (L->nparked > 0 || !lg_pace_ok(L))) {
        /* Behind any already parked, even if the budget would take it: first come, first
         * served. */
        unsigned tail = L->park_head + L->nparked;
        L->parked[tail >= L->nconns ? tail - L->nconns : tail] = c;
        L->nparked++;
        return;
    }
    lg_issue(L, c);
}

/* ---- replies ---- */

static void lg_verify_report(struct lg_loop *L, uint64_t k, const struct lg_reply *r)
{
    if (L->verify_reports++ >= LG_VERIFY_REPORTS)
        return;
    char key[LG_KEY_DIGITS + 1];
    lg_key_digits(key, k);
    key[LG_KEY_DIGITS] = 0;
    if (r->type == LG_R_NIL)
        fprintf(stderr,
                "verify: GET " LG_KEY_PREFIX "%s returned nil after an "
                "acknowledged SET\n",
                key);
    else
        fprintf(stderr,
                "verify: GET " LG_KEY_PREFIX "%s returned %zu bytes \"%.*s%s\", not "
                "the value this run sets (%u bytes)\n",
                key, r->len, (int)(r->len < 40 ? r->len : 40), r->p, r->len > 40 ? "..." : "",
                L->cfg->value_size);
}

static void lg_on_reply(struct lg_loop *L, const struct lg_slot *s, const struct lg_reply *r,
                        uint64_t lat)
{
    struct lg_stats *st = &L->t->st;
    struct lg_cmd_stats *cs = &st->cmd[s->cmd];
    cs->count++;
    hist_record(&cs->lat, lat);
    if (r->type == LG_R_ERROR) {
        cs->errors++;
        if (s->cmd != LG_WAIT)
            L->done++;
        return;
    }
    switch (s->cmd) {
    case LG_SET:
        L->done++;
        if (r->type != LG_R_STATUS || r->len != 2 || memcmp(r->p, "OK", 2) != 0) {
            cs->mismatches++;
        } else if (L->cfg->verify && !lg_acked(L->sh, s->key)) {
            atomic_fetch_or_explicit(&L->sh->acked[s->key >> 6], 1ull << (s->key & 63),
                                     memory_order_relaxed);
        }
        break;
    case LG_GET:
        L->done++;
        if (r->type == LG_R_NIL) {
            if (L->cfg->verify) {
                st->verify_checked++;
                if (s->acked) {
                    st->verify_failures++;
                    lg_verify_report(L, s->key, r);
                } else {
                    st->verify_nils++;
                }
            }
        } else if (r->type == LG_R_BULK || (L->cfg->protocol == LG_LINE &&
                                            (r->type == LG_R_INT || r->type == LG_R_STATUS))) {
            if (L->cfg->verify) {
                st->verify_checked++;
                if (lg_value_check(&L->sh->values, r->p, r->len, s->key)) {
                    st->verify_hits++;
                } else {
                    st->verify_failures++;
                    lg_verify_report(L, s->key, r);
                }
            }
        } else {
            cs->mismatches++;
        }
        break;
    case LG_WAIT:
        if (r->type != LG_R_INT)
            cs->mismatches++;
        else if (r->ival < L->cfg->wait_n)
            st->wait_short++;
        break;
    }
}

/* Parse what has arrived; false when the stream is broken (the connection is failed). */
static bool lg_parse(struct lg_loop *L, struct lg_conn *c)
{
    uint64_t lat = L->now_ns - c->sent_ns;
    bool resp = L->cfg->protocol == LG_RESP;
    while (c->ndone < c->nslots && c->rlen - c->rpos >= c->need) {
        struct lg_reply r;
        size_t avail = c->rlen - c->rpos;
        ssize_t n = resp ? lg_resp_parse(c->rbuf + c->rpos, avail, &r)
                         : lg_line_parse(c->rbuf + c->rpos, avail, L->max_line, &r);
        if (n < 0) {
            lg_fail(L, c, "unparseable reply from the server", 0);
            return false;
        }
        if (n == 0) {
            c->need = r.need ? r.need : avail + 1;
            break;
        }
        c->need = 1;
        c->rpos += (size_t)n;
        lg_on_reply(L, &c->slots[c->ndone++], &r, lat);
    }
    if (c->ndone == c->nslots && c->rpos != c->rlen) {
        lg_fail(L, c, "the server sent more replies than requests", 0);
        return false;
    }
    return true;
}

static void lg_on_recv(struct lg_loop *L, struct lg_conn *c, int res)
{
    c->recv_armed = false;
    if (c->dead)
        return;
    if (res == -EINTR || res == -EAGAIN || res == -ENOBUFS) {
        lg_arm_recv(L, c, false);
        return;
    }
    if (res == -EINVAL && L->poll_first) {
        /* A kernel before 5.19 refuses IORING_RECVSEND_POLL_FIRST: do without. */
        L->poll_first = false;
        lg_arm_recv(L, c, false);
        return;
    }
    if (res <= 0) {
        lg_fail(L, c, res == 0 ? "server closed the connection" : "recv", -res);
        return;
    }
    c->rlen += (size_t)res;
    L->progress_ns = L->last_reply_ns = L->now_ns;
    if (!lg_parse(L, c))
        return;
    if (c->ndone < c->nslots)
        lg_arm_recv(L, c, false);
    else if (!c->send_armed)
        lg_next(L, c);
    /* else: every reply is in but the send's completion is not yet; lg_on_send goes on. */
}

static void lg_on_send(struct lg_loop *L, struct lg_conn *c, int res)
{
    c->send_armed = false;
    if (c->dead)
        return;
    if (res == -EINTR || res == -EAGAIN) {
        lg_arm_send(L, c);
        return;
    }
    if (res < 0) {
        lg_fail(L, c, "send", -res);
        return;
    }
    c->ssent += (size_t)res;
    L->progress_ns = L->now_ns;
    if (c->ssent < c->slen)
        lg_arm_send(L, c);
    else if (c->ndone == c->nslots)
        lg_next(L, c);
}

/* ---- set-up ---- */

static int lg_connect(struct lg_loop *L, struct lg_conn *c)
{
    const struct lg_shared *sh = L->sh;
    int fd = socket(sh->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    /* connect() honours the send timeout: a host that does not answer fails in 5 s. */
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (const struct sockaddr *)&sh->addr, sh->addrlen) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = c->sqe_fd = fd;
    return 0;
}

static int lg_ring_init(struct lg_loop *L)
{
    unsigned entries = 8;
    while (entries < 2 * L->nconns + 2)
        entries *= 2;
    static const struct {
        unsigned flags;
        const char *name;
    } modes[] = {
        {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "single-issuer,defer-taskrun"},
        {IORING_SETUP_COOP_TASKRUN, "coop-taskrun"},
        {0, "plain"},
    };
    int ret = -EINVAL;
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        /* CLAMP: tens of thousands of connections on one thread get the largest ring the
         * kernel allows; lg_sqe() submits early if it ever fills. */
        struct io_uring_params p = {.flags = modes[i].flags | IORING_SETUP_CLAMP};
        ret = io_uring_queue_init_params(entries, &L->ring, &p);
        if (ret == 0) {
            snprintf(L->t->ring_mode, sizeof(L->t->ring_mode), "%s", modes[i].name);
            break;
        }
    }
    if (ret < 0)
        return ret;
    L->ring_ok = true;

    int *fds = lg_xmalloc(sizeof(int) * L->nconns);
    unsigned n = 0;
    for (unsigned i = 0; i < L->nconns; i++)
        fds[n++] = L->conns[i].dead ? -1 : L->conns[i].fd;
    if (io_uring_register_files(&L->ring, fds, n) == 0) {
        L->fixed = true;
        for (unsigned i = 0; i < L->nconns; i++)
            L->conns[i].sqe_fd = (int)i;
        strncat(L->t->ring_mode, ",fixed-files",
                sizeof(L->t->ring_mode) - strlen(L->t->ring_mode) - 1);
    }
    free(fds);
    return 0;
}

static void lg_loop_init(struct lg_loop *L, struct lg_thread *t)
{
    const struct lg_config *cfg = t->sh->cfg;
    memset(L, 0, sizeof(*L));
    L->t = t;
    L->sh = t->sh;
    L->cfg = cfg;
    L->nconns = t->nconns;
    L->remaining = t->quota;
    L->deadline_ns = UINT64_MAX;
    L->poll_first = true;
    L->ratio_sum = (uint64_t)cfg->ratio_set + cfg->ratio_get;
    L->all_set = cfg->ratio_get == 0;
    L->all_get = cfg->ratio_set == 0;
    L->max_line = (size_t)cfg->value_size + 64 * 1024;
    if (cfg->rate > 0) {
        L->paced = true;
        L->pace_ns = 1e9 * cfg->threads / cfg->rate;
        L->parked = lg_xmalloc(sizeof(*L->parked) * (L->nconns ? L->nconns : 1));
    }
    lg_tmpl_init(&L->tmpl, cfg);
    for (int i = 0; i < LG_NCMD; i++)
        hist_init(&t->st.cmd[i].lat);

    size_t per_req = L->tmpl.set_len + cfg->value_size + 2 + L->tmpl.wait_len;
    if (per_req < L->tmpl.get_len)
        per_req = L->tmpl.get_len;
    size_t slots = (size_t)cfg->pipeline * (cfg->wait_n >= 0 ? 2 : 1);
    size_t rcap = (size_t)cfg->pipeline * (cfg->value_size + 32);
    rcap = rcap < LG_RECV_INIT ? LG_RECV_INIT : rcap > (4u << 20) ? (4u << 20) : rcap;
    L->conns = calloc(L->nconns, sizeof(*L->conns));
    L->stamp = lg_xmalloc(sizeof(*L->stamp) * (L->nconns ? L->nconns : 1));
    if (!L->conns) {
        fprintf(stderr, "ringkv-bench: out of memory\n");
        exit(1);
    }
    for (unsigned i = 0; i < L->nconns; i++) {
        struct lg_conn *c = &L->conns[i];
        c->fd = c->sqe_fd = -1;
        c->sbuf = lg_xmalloc(per_req * cfg->pipeline);
        c->rbuf = lg_xmalloc(rcap);
        c->rcap = rcap;
        c->slots = calloc(slots, sizeof(*c->slots));
        if (!c->slots) {
            fprintf(stderr, "ringkv-bench: out of memory\n");
            exit(1);
        }
        c->need = 1;
        c->rng = lg_mix(cfg->seed ^ lg_mix(((uint64_t)t->id << 32) + i + 1));
    }
}

static void lg_loop_free(struct lg_loop *L)
{
    if (L->ring_ok)
        io_uring_queue_exit(&L->ring);
    for (unsigned i = 0; i < L->nconns; i++) {
        struct lg_conn *c = &L->conns[i];
        if (c->fd >= 0)
            close(c->fd);
        free(c->sbuf);
        free(c->rbuf);
        free(c->slots);
    }
    free(L->conns);
    free(L->stamp);
    free(L->parked);
}

/* ---- the loop ---- */

static void lg_dispatch(struct lg_loop *L, const struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    struct lg_conn *c = &L->conns[ud >> 1];
    L->armed--;
    if (ud & 1)
        lg_on_recv(L, c, cqe->res);
    else
        lg_on_send(L, c, cqe->res);
}

static void lg_run(struct lg_loop *L)
{
    struct lg_thread *t = L->t;
    bool stalled = false;
    uint64_t stall_end = 0;

    L->now_ns = L->progress_ns = t->start_ns;
    for (unsigned i = 0; i < L->nconns; i++) {
        if (!L->conns[i].dead) {
            L->active++;
            lg_next(L, &L->conns[i]);
        }
    }
    while (L->active > 0 || L->armed > 0) {
        if (L->nstamp) {
            uint64_t ts = lg_now_ns();
            for (unsigned i = 0; i < L->nstamp; i++)
                L->stamp[i]->sent_ns = ts;
            L->nstamp = 0;
        }
        struct __kernel_timespec wait = {.tv_sec = 1};
        if (L->nparked)
            lg_pace_timeout(L, &wait);
        struct io_uring_cqe *cqe;
        int ret = io_uring_submit_and_wait_timeout(&L->ring, &cqe, 1, &wait, NULL);
        L->now_ns = lg_now_ns();
        if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
            fprintf(stderr, "ringkv-bench: io_uring_enter: %s\n", strerror(-ret));
            exit(1);
        }
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&L->ring, head, cqe)
        {
            lg_dispatch(L, cqe);
            seen++;
        }
        io_uring_cq_advance(&L->ring, seen);
        if (L->nparked)
            lg_release(L);
        atomic_store_explicit(&t->done, L->done, memory_order_relaxed);

        if (stalled) {
            /* Shut-down sockets complete their requests at once; do not wait forever for
             * a kernel that does not. */
            if (L->now_ns > stall_end)
                break;
        } else if (L->armed == 0) {
            /* Nothing in flight: every live connection is parked by --rate, waiting for the
             * clock rather than the server, so the stall clock does not run. */
            L->progress_ns = L->now_ns;
        } else if (L->now_ns - L->progress_ns > LG_STALL_NS) {
            stalled = true;
            stall_end = L->now_ns + 2000000000ull;
            t->st.stalls++;
            lg_note_error(t, "no progress for 10 s: the server stopped answering", 0);
            for (unsigned i = 0; i < L->nconns; i++)
                if (!L->conns[i].idle || L->conns[i].send_armed || L->conns[i].recv_armed)
                    lg_fail(L, &L->conns[i], "stalled", 0);
        }
    }
    t->end_ns = L->last_reply_ns ? L->last_reply_ns : L->now_ns;
    if (L->armed > 0) {
        /* Requests still in flight point into our buffers: leave them allocated. */
        L->nconns = 0;
    }
}

void *lg_thread_main(void *arg)
{
    struct lg_thread *t = arg;
    struct lg_shared *sh = t->sh;
    struct lg_loop L;
    lg_loop_init(&L, t);

    for (unsigned i = 0; i < L.nconns; i++) {
        int ret = lg_connect(&L, &L.conns[i]);
        if (ret < 0) {
            L.conns[i].dead = L.conns[i].idle = true;
            t->st.conn_errors++;
            lg_note_error(t, "connect", -ret);
        }
    }
    int ret = lg_ring_init(&L);
    if (ret < 0) {
        fprintf(stderr, "ringkv-bench: io_uring_queue_init: %s\n", strerror(-ret));
        exit(1);
    }
    /* Any failed connection stops the whole run before it starts: numbers from fewer
     * clients than asked for would be misleading. */
    if (t->st.conn_errors)
        atomic_store(&sh->stop, 1);
    pthread_barrier_wait(sh->start);
    t->start_ns = lg_now_ns();
    if (sh->cfg->duration > 0)
        L.deadline_ns = t->start_ns + (uint64_t)(sh->cfg->duration * 1e9);
    lg_run(&L);
    atomic_store_explicit(&t->done, L.done, memory_order_relaxed);
    if (L.nconns == 0 && L.armed > 0) {
        /* Stalled with requests in flight: keep the buffers, close the sockets. */
        for (unsigned i = 0; i < t->nconns; i++)
            if (L.conns[i].fd >= 0)
                close(L.conns[i].fd);
    } else {
        lg_loop_free(&L);
    }
    atomic_store(&t->finished, 1);
    return NULL;
}
