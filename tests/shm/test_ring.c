/*
 * ring unit tests: records round-trip, the wrap is padded, a lapped reader is told so, a
 * corrupt frame or header is refused without a crash, and a read-only attach sees the same log.
 * A byte-for-byte copy (ring_reset, ring_write_raw, ring_check_frames, ring_publish) reads back
 * the same records at the same positions; ring_check_frames refuses every malformed run; and
 * ring_has holds only frame boundaries that are in the ring and safe to start from.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shm/ring.h"

static struct ring_map m;

static void setup(void)
{
    cr_assert_eq(ring_map_create(&m, 4, 64 * 1024, "0123456789abcdef0123456789abcdef01234567"), 0);
}

static void teardown(void)
{
    ring_map_close(&m);
}

TestSuite(ring, .init = setup, .fini = teardown);

Test(ring, set_del_flush_round_trip)
{
    uint64_t p1 = ring_append_set(&m, 2, "key", 3, "value", 5, 1234);
    uint64_t p2 = ring_append_del(&m, 2, "key", 3);
    uint64_t p3 = ring_append_flush(&m, 2);
    cr_assert(p1 > 0 && p2 > p1 && p3 > p2);
    cr_assert_eq(ring_tail(&m, 2), p3);
    cr_assert_eq(ring_tail(&m, 1), 0, "other shards untouched");
    char *buf = NULL;
    size_t cap = 0;
    struct ring_rec r;
    cr_assert_eq(ring_read(&m, 2, 0, &buf, &cap, &r), RING_OK);
    cr_assert_eq(r.type, RING_SET);
    cr_assert_eq(r.klen, 3);
    cr_assert(memcmp(r.key, "key", 3) == 0);
    cr_assert_eq(r.vlen, 5);
    cr_assert(memcmp(r.val, "value", 5) == 0);
    cr_assert_eq(r.expire_ms, 1234);
    cr_assert_eq(r.next, p1);
    cr_assert_eq(ring_read(&m, 2, r.next, &buf, &cap, &r), RING_OK);
    cr_assert_eq(r.type, RING_DEL);
    cr_assert(r.klen == 3 && memcmp(r.key, "key", 3) == 0);
    cr_assert_eq(ring_read(&m, 2, r.next, &buf, &cap, &r), RING_OK);
    cr_assert_eq(r.type, RING_FLUSH);
    cr_assert_eq(ring_read(&m, 2, r.next, &buf, &cap, &r), RING_NONE);
    free(buf);
}

Test(ring, wraps_and_reader_follows_every_record)
{
    char *buf = NULL;
    size_t cap = 0;
    uint64_t rpos = 0;
    char key[32], val[300];
    memset(val, 'v', sizeof(val));
    int got = 0;
    for (int i = 0; i < 5000; i++) {
        int kl = snprintf(key, sizeof(key), "k%d", i);
        cr_assert(ring_append_set(&m, 0, key, (size_t)kl, val, (size_t)(i % 300), i) > 0);
        struct ring_rec r;
        int rc;
        while ((rc = ring_read(&m, 0, rpos, &buf, &cap, &r)) == RING_OK) {
            char want[32];
            int wl = snprintf(want, sizeof(want), "k%d", got);
            cr_assert_eq(r.klen, (size_t)wl);
            cr_assert(memcmp(r.key, want, (size_t)wl) == 0, "record %d", got);
            cr_assert_eq(r.vlen, (size_t)(got % 300));
            cr_assert_eq(r.expire_ms, got);
            rpos = r.next;
            got++;
        }
        cr_assert_eq(rc, RING_NONE);
    }
    cr_assert_eq(got, 5000);
    cr_assert_gt(ring_tail(&m, 0), 4 * 64 * 1024, "the ring wrapped several times");
    free(buf);
}

Test(ring, lapped_reader_is_told)
{
    char *buf = NULL;
    size_t cap = 0;
    struct ring_rec r;
    char val[1000] = {0};
    for (int i = 0; i < 200; i++)
        ring_append_set(&m, 1, "k", 1, val, sizeof(val), -1);
    cr_assert_eq(ring_read(&m, 1, 0, &buf, &cap, &r), RING_LAPPED);
    free(buf);
}

Test(ring, oversized_record_refused)
{
    size_t max = ring_max_payload(&m);
    char *big = calloc(1, max + 1);
    cr_assert_eq(ring_append_del(&m, 0, big, max + 1), 0);
    cr_assert_eq(ring_tail(&m, 0), 0);
    cr_assert_gt(ring_append_del(&m, 0, big, max), 0);
    free(big);
}

/* A frame changed in place gets the check its new contents give, so that only the check a
 * test aims at can refuse it (its payload must lie inside the ring). */
static void seal(struct ring_frame *f)
{
    ring_frame_seal(f, f + 1);
}

Test(ring, corrupt_frames_are_refused_not_trusted)
{
    ring_append_set(&m, 3, "key", 3, "value", 5, -1);
    char *buf = NULL;
    size_t cap = 0;
    struct ring_rec r;
    struct ring_frame *f = (struct ring_frame *)ring_data(&m, 3);
    /* A length past the end of the ring. */
    f->len = 0xfffffff0u;
    cr_assert_eq(ring_read(&m, 3, 0, &buf, &cap, &r), RING_CORRUPT);
    /* A length inside the ring but past the published tail. */
    f->len = 4096;
    cr_assert_eq(ring_read(&m, 3, 0, &buf, &cap, &r), RING_CORRUPT);
    /* SET lengths that do not add up (the frame sealed again: only the lengths are wrong). */
    f->len = sizeof(struct ring_set) + 8;
    struct ring_set *h = (struct ring_set *)(f + 1);
    h->klen = 1000;
    seal(f);
    cr_assert_eq(ring_read(&m, 3, 0, &buf, &cap, &r), RING_CORRUPT);
    /* A wrong position stamp, and an unknown type. */
    h->klen = 3;
    f->pos = 8;
    seal(f);
    cr_assert_eq(ring_read(&m, 3, 0, &buf, &cap, &r), RING_CORRUPT);
    f->pos = 0;
    f->type = 77;
    seal(f);
    cr_assert_eq(ring_read(&m, 3, 0, &buf, &cap, &r), RING_CORRUPT);
    f->type = RING_SET;
    seal(f);
    cr_assert_eq(ring_read(&m, 3, 0, &buf, &cap, &r), RING_OK, "restored");
    /* What only the check finds, by a reader of another process's log (a read-only
     * mapping): a byte of the value, the check itself.  The owner does not check its own. */
    struct ring_map ro;
    cr_assert_eq(ring_map_attach(&ro, dup(m.fd)), 0);
    cr_assert_eq(ring_read(&ro, 3, 0, &buf, &cap, &r), RING_OK);
    ((char *)(h + 1))[4] ^= 1;
    cr_assert_eq(ring_read(&ro, 3, 0, &buf, &cap, &r), RING_CORRUPT, "a value byte");
    cr_assert_eq(ring_read(&m, 3, 0, &buf, &cap, &r), RING_OK, "the owner trusts its log");
    ((char *)(h + 1))[4] ^= 1;
    f->check[0] ^= 1;
    cr_assert_eq(ring_read(&ro, 3, 0, &buf, &cap, &r), RING_CORRUPT, "the check");
    f->check[0] ^= 1;
    cr_assert_eq(ring_read(&ro, 3, 0, &buf, &cap, &r), RING_OK, "restored");
    ring_map_close(&ro);
    /* A misaligned or future position. */
    cr_assert_eq(ring_read(&m, 3, 3, &buf, &cap, &r), RING_CORRUPT);
    cr_assert_eq(ring_read(&m, 3, 1 << 20, &buf, &cap, &r), RING_CORRUPT);
    free(buf);
}

Test(ring, read_only_attach_sees_the_log)
{
    ring_append_set(&m, 0, "a", 1, "b", 1, -1);
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", m.fd);
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0);
    struct ring_map ro;
    cr_assert_eq(ring_map_attach(&ro, fd), 0);
    cr_assert_eq(ro.hdr->nshards, 4);
    cr_assert_str_eq(ro.hdr->replid, "0123456789abcdef0123456789abcdef01234567");
    char *buf = NULL;
    size_t cap = 0;
    struct ring_rec r;
    cr_assert_eq(ring_read(&ro, 0, 0, &buf, &cap, &r), RING_OK);
    cr_assert(r.klen == 1 && r.key[0] == 'a' && r.vlen == 1 && r.val[0] == 'b');
    /* Writes after the attach are seen through the read-only mapping. */
    ring_append_del(&m, 0, "a", 1);
    cr_assert_eq(ring_read(&ro, 0, r.next, &buf, &cap, &r), RING_OK);
    cr_assert_eq(r.type, RING_DEL);
    ring_map_close(&ro);
    free(buf);
}

Test(ring, bad_header_refused)
{
    int fd = memfd_create("bad", 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, 1 << 20), 0);
    struct ring_map ro;
    cr_assert_eq(ring_map_attach(&ro, fd), -EBADMSG, "zeroed file: no magic");
    fd = memfd_create("short", 0);
    cr_assert_eq(ring_map_attach(&ro, fd), -EBADMSG, "empty file");
}

/* ---- a copy of another server's log (TCP replicas) ---------------------------------------- */

/* Record i of a fixed mix: mostly SETs of varied sizes (some with a deadline), some DELs and
 * FLUSHes. */
struct gen_rec {
    uint8_t type;
    char key[32];
    size_t klen;
    char val[600];
    size_t vlen;
    int64_t expire_ms;
};

static void gen(int i, struct gen_rec *g)
{
    g->klen = (size_t)snprintf(g->key, sizeof(g->key), "key:%d", i);
    g->vlen = 0;
    g->expire_ms = -1;
    if (i % 11 == 5) {
        g->type = RING_FLUSH;
        g->klen = 0;
    } else if (i % 7 == 3) {
        g->type = RING_DEL;
    } else {
        g->type = RING_SET;
        g->vlen = (size_t)(i * 37) % sizeof(g->val);
        memset(g->val, 'a' + i % 26, g->vlen);
        g->expire_ms = i % 3 == 0 ? -1 : 1000000 + i;
    }
}

/* Append record i to shard s; returns the position after it. */
static uint64_t append_gen(struct ring_map *r, uint32_t s, int i)
{
    struct gen_rec g;
    gen(i, &g);
    uint64_t end = g.type == RING_SET
                       ? ring_append_set(r, s, g.key, g.klen, g.val, g.vlen, g.expire_ms)
                   : g.type == RING_DEL ? ring_append_del(r, s, g.key, g.klen)
                                        : ring_append_flush(r, s);
    cr_assert_gt(end, 0, "append %d", i);
    return end;
}

/* A record read back is record i. */
static void expect_gen(const struct ring_rec *r, int i)
{
    struct gen_rec g;
    gen(i, &g);
    cr_assert_eq(r->type, g.type, "record %d", i);
    cr_assert_eq(r->klen, g.klen, "record %d", i);
    cr_assert(g.klen == 0 || memcmp(r->key, g.key, g.klen) == 0, "record %d", i);
    cr_assert_eq(r->vlen, g.vlen, "record %d", i);
    cr_assert(g.vlen == 0 || memcmp(r->val, g.val, g.vlen) == 0, "record %d", i);
    cr_assert_eq(r->expire_ms, g.expire_ms, "record %d", i);
}

/* Copy shard s's log bytes [from, to) from src into dst at the same positions, as a TCP replica
 * does: in runs of at most piece bytes, cut exactly at the end of the ring. */
static void copy_raw(struct ring_map *dst, const struct ring_map *src, uint32_t s, uint64_t from,
                     uint64_t to, size_t piece)
{
    uint64_t size = src->hdr->size;
    for (uint64_t pos = from; pos < to;) {
        size_t off = (size_t)(pos & (size - 1));
        size_t n = (size_t)(to - pos);
        if (n > size - off)
            n = (size_t)size - off;
        if (n > piece)
            n = piece;
        cr_assert_eq(ring_write_raw(dst, s, pos, ring_data(src, s) + off, n), 0, "run at %llu",
                     (unsigned long long)pos);
        pos += n;
    }
}

/* Write one frame (header and payload, with its check) at position pos of shard s,
 * unpublished. */
static void put_frame(struct ring_map *r, uint32_t s, uint64_t pos, uint8_t type, uint32_t len,
                      const void *payload, size_t n)
{
    struct ring_frame f = {.pos = pos, .len = len, .type = type};
    ring_frame_seal(&f, payload);
    cr_assert_eq(ring_write_raw(r, s, pos, &f, sizeof(f)), 0);
    if (n)
        cr_assert_eq(ring_write_raw(r, s, pos + sizeof(f), payload, n), 0);
}

static const char *replid2 = "fedcba9876543210fedcba9876543210fedcba98";

Test(ring, raw_copy_reads_back_record_for_record)
{
    uint64_t size = m.hdr->size;
    struct ring_map c;
    cr_assert_eq(ring_map_create(&c, 4, size, replid2), 0);
    cr_assert_eq(c.hdr->size, size);
    enum { N = 1200 };
    static uint64_t ends[N];
    for (int i = 0; i < N; i++)
        ends[i] = append_gen(&m, 1, i);
    uint64_t tail = ring_tail(&m, 1);
    cr_assert_eq(tail, ends[N - 1]);
    cr_assert_gt(tail, 3 * size, "the master's ring wrapped several times");
    /* The oldest record boundary less than a ring behind the tail. */
    int k = 0;
    while (tail - ends[k] > size)
        k++;
    uint64_t from = ends[k];
    cr_assert_lt(from / size, (tail - 1) / size, "the copied range crosses the end of the ring");

    ring_reset(&c, 1, from);
    cr_assert_eq(ring_tail(&c, 1), from);
    copy_raw(&c, &m, 1, from, tail, SIZE_MAX);
    char *buf = NULL, *buf2 = NULL;
    size_t cap = 0, cap2 = 0;
    struct ring_rec r, r2;
    cr_assert_eq(ring_read(&c, 1, from, &buf, &cap, &r), RING_NONE, "nothing published yet");
    cr_assert_eq(ring_tail(&c, 1), from);
    cr_assert(ring_check_frames(&c, 1, from, tail));
    ring_publish(&c, 1, tail);
    cr_assert_eq(ring_tail(&c, 1), tail);

    uint64_t pos = from;
    int pads = 0;
    for (int i = k + 1; i < N; i++) {
        cr_assert_eq(ring_read(&c, 1, pos, &buf, &cap, &r), RING_OK, "copy, record %d", i);
        cr_assert_eq(ring_read(&m, 1, pos, &buf2, &cap2, &r2), RING_OK, "master, record %d", i);
        expect_gen(&r, i);
        expect_gen(&r2, i);
        cr_assert_eq(r.pos, r2.pos);
        cr_assert_eq(r.next, r2.next);
        cr_assert_eq(r.next, ends[i]);
        if (r.pos != pos)
            pads++; /* a PAD frame was skipped */
        pos = r.next;
    }
    cr_assert_geq(pads, 1, "the copy holds at least one PAD frame");
    cr_assert_eq(ring_read(&c, 1, pos, &buf, &cap, &r), RING_NONE);
    cr_assert_eq(ring_tail(&c, 0), 0, "other shards of the copy untouched");
    free(buf);
    free(buf2);
    ring_map_close(&c);
}

Test(ring, raw_copy_streams_batches_across_laps)
{
    uint64_t size = m.hdr->size;
    struct ring_map c;
    cr_assert_eq(ring_map_create(&c, 4, size, replid2), 0);
    char *buf = NULL;
    size_t cap = 0;
    struct ring_rec r;
    uint64_t sent = 0, rpos = 0;
    int appended = 0, got = 0;
    for (int b = 0; b < 60; b++) {
        int n = 1 + b % 40;
        for (int j = 0; j < n; j++)
            append_gen(&m, 2, appended++);
        uint64_t tail = ring_tail(&m, 2);
        cr_assert_leq(tail - sent, size);
        /* Odd-sized runs: cut in the middle of frames and of headers. */
        copy_raw(&c, &m, 2, sent, tail, 777 + (size_t)b);
        cr_assert_eq(ring_read(&c, 2, rpos, &buf, &cap, &r), RING_NONE,
                     "a reader of the copy sees nothing before the publish");
        cr_assert(ring_check_frames(&c, 2, sent, tail), "batch %d", b);
        ring_publish(&c, 2, tail);
        sent = tail;
        int rc;
        while ((rc = ring_read(&c, 2, rpos, &buf, &cap, &r)) == RING_OK) {
            expect_gen(&r, got++);
            rpos = r.next;
        }
        cr_assert_eq(rc, RING_NONE, "batch %d", b);
        cr_assert_eq(rpos, tail);
    }
    cr_assert_eq(got, appended);
    cr_assert_gt(sent, 4 * size, "the copy wrapped several times");
    free(buf);
    ring_map_close(&c);
}

Test(ring, write_raw_refuses_a_run_that_wraps)
{
    uint64_t size = m.hdr->size;
    char *d = ring_data(&m, 0);
    char bytes[64];
    memset(bytes, 0x5a, sizeof(bytes));
    uint64_t end = 3 * size; /* a position at the end of the ring */
    cr_assert_eq(ring_write_raw(&m, 0, end - 16, bytes, 32), -1);
    cr_assert_eq(ring_write_raw(&m, 0, end - 48, bytes, 64), -1);
    cr_assert_eq(ring_write_raw(&m, 0, end - 8, bytes, 9), -1);
    for (size_t i = 0; i < 64; i++)
        cr_assert(d[i] == 0 && d[size - 64 + i] == 0, "a refused run writes nothing");
    cr_assert_eq(m.shards[0].reserve, 0, "a refused run announces nothing");
    /* Up to the end exactly, then on from offset 0. */
    cr_assert_eq(ring_write_raw(&m, 0, end - 16, bytes, 16), 0);
    cr_assert_eq(d[size - 16], 0x5a);
    cr_assert_eq(d[size - 17], 0);
    cr_assert_eq(ring_write_raw(&m, 0, end, bytes, 64), 0);
    cr_assert(d[0] == 0x5a && d[63] == 0x5a && d[64] == 0);
    cr_assert_geq(m.shards[0].reserve, end + 64, "the run was announced in reserve");
    cr_assert_eq(ring_write_raw(&m, 0, end - 8, bytes, 8), 0);
    cr_assert_eq(ring_write_raw(&m, 0, end + 5, bytes, 0), 0);
    /* A whole ring at once only from offset 0. */
    char *big = calloc(1, size + 1);
    cr_assert_eq(ring_write_raw(&m, 0, 4 * size, big, size), 0);
    cr_assert_eq(ring_write_raw(&m, 0, 4 * size, big, size + 1), -1);
    cr_assert_eq(ring_write_raw(&m, 0, 4 * size + 16, big, size - 16), 0);
    cr_assert_eq(ring_write_raw(&m, 0, 4 * size + 16, big, size - 15), -1);
    free(big);
    cr_assert_eq(ring_tail(&m, 0), 0, "raw writes publish nothing");
}

Test(ring, check_frames_accepts_whole_frames_rejects_bad_ones)
{
    uint64_t size = m.hdr->size;
    uint64_t e0 = ring_append_set(&m, 3, "key", 3, "value", 5, -1); /* 16 + 16 + 8 -> 48 */
    uint64_t e1 = ring_append_del(&m, 3, "key", 3);                 /* 16 + 3 -> 32 */
    uint64_t e2 = ring_append_flush(&m, 3);                         /* 16 */
    uint64_t e3 = ring_append_set(&m, 3, "k2", 2, "v", 1, 5);       /* 16 + 16 + 3 -> 48 */
    cr_assert(e0 == 48 && e1 == 80 && e2 == 96 && e3 == 144);
    char *d = ring_data(&m, 3);
    struct ring_frame *f0 = (struct ring_frame *)d, *f1 = (struct ring_frame *)(d + e0),
                      *f2 = (struct ring_frame *)(d + e1), *f3 = (struct ring_frame *)(d + e2);
    struct ring_set *h0 = (struct ring_set *)(f0 + 1), *h3 = (struct ring_set *)(f3 + 1);
    cr_assert(ring_check_frames(&m, 3, 0, e3));
    cr_assert(ring_check_frames(&m, 3, e0, e2), "a run in the middle");
    cr_assert(ring_check_frames(&m, 3, e1, e3));
    cr_assert(ring_check_frames(&m, 3, e3, e3), "an empty run");
    cr_assert(ring_check_frames(&m, 3, 0, 0));

    /* Bounds: unaligned, backwards, longer than the ring. */
    cr_assert_not(ring_check_frames(&m, 3, 8, e3));
    cr_assert_not(ring_check_frames(&m, 3, 0, e3 - 8));
    cr_assert_not(ring_check_frames(&m, 3, 0, e3 + 8));
    cr_assert_not(ring_check_frames(&m, 3, e1, e0), "to < from");
    cr_assert_not(ring_check_frames(&m, 3, e2, e1), "to < from");
    cr_assert_not(ring_check_frames(&m, 3, 0, size + 16), "longer than the ring");
    cr_assert_not(ring_check_frames(&m, 3, 0, UINT64_MAX & ~(uint64_t)15));

    /* A run that ends in the middle of a frame, or past the frames written. */
    cr_assert_not(ring_check_frames(&m, 3, 0, 16));
    cr_assert_not(ring_check_frames(&m, 3, 0, 32));
    cr_assert_not(ring_check_frames(&m, 3, 0, e0 + 16));
    cr_assert_not(ring_check_frames(&m, 3, e2, e2 + 32));
    cr_assert_not(ring_check_frames(&m, 3, 0, e3 + 16), "zero bytes after the tail");

    /* Wrong position stamps. */
    f1->pos = e0 + 16;
    cr_assert_not(ring_check_frames(&m, 3, 0, e3));
    cr_assert_not(ring_check_frames(&m, 3, e0, e1));
    f1->pos = e0 + size; /* the same offset a lap later */
    seal(f1);
    cr_assert_not(ring_check_frames(&m, 3, e0, e1));
    cr_assert(ring_check_frames(&m, 3, e0 + size, e1 + size), "valid where it is stamped");
    f1->pos = e0;
    seal(f1);
    cr_assert(ring_check_frames(&m, 3, 0, e3));

    /* A length that runs past the end of the run (frames inside the ring, payloads valid). */
    f1->len = 40; /* a DEL of 40 bytes: ends at e0 + 64, past e1 */
    seal(f1);
    cr_assert_not(ring_check_frames(&m, 3, 0, e1));
    cr_assert_not(ring_check_frames(&m, 3, e0, e1));
    f1->len = 3;
    seal(f1);
    f3->len = sizeof(struct ring_set) + 32; /* a consistent SET that ends past e3 */
    h3->vlen = 30;
    seal(f3);
    cr_assert_not(ring_check_frames(&m, 3, 0, e3));
    cr_assert_not(ring_check_frames(&m, 3, e2, e3));
    f3->len = sizeof(struct ring_set) + 3;
    h3->vlen = 1;
    seal(f3);
    cr_assert(ring_check_frames(&m, 3, 0, e3));

    /* A length past the end of the ring, or longer than any record may be. */
    f1->len = (uint32_t)size;
    cr_assert_not(ring_check_frames(&m, 3, e0, e1));
    f1->len = 0xfffffff0u;
    cr_assert_not(ring_check_frames(&m, 3, e0, e1));
    f1->len = 3;
    f0->type = RING_DEL;
    f0->len = (uint32_t)ring_max_payload(&m) + 16; /* fits before the end of the ring */
    cr_assert_not(ring_check_frames(&m, 3, 0, (16 + f0->len + 15) & ~15u));
    f0->len = 32;
    seal(f0);
    cr_assert(ring_check_frames(&m, 3, 0, e3), "the same frame as a DEL of 32 bytes is fine");
    f0->type = RING_SET;
    f0->len = sizeof(struct ring_set) + 8;

    /* SET lengths that do not add up. */
    h0->klen = 4;
    seal(f0);
    cr_assert_not(ring_check_frames(&m, 3, 0, e0));
    h0->klen = 3;
    h0->vlen = 4;
    seal(f0);
    cr_assert_not(ring_check_frames(&m, 3, 0, e0));
    h0->klen = UINT32_MAX; /* klen + vlen = 8 in 32 bits */
    h0->vlen = 9;
    seal(f0);
    cr_assert_not(ring_check_frames(&m, 3, 0, e0));
    h0->klen = 3;
    h0->vlen = 5;
    f0->len = 8; /* shorter than a SET header */
    seal(f0);
    cr_assert_not(ring_check_frames(&m, 3, 0, 32));
    f0->len = sizeof(struct ring_set) + 8;
    seal(f0);
    cr_assert(ring_check_frames(&m, 3, 0, e3));

    /* A FLUSH with a payload, and unknown types. */
    f2->len = 16;
    seal(f2);
    cr_assert_not(ring_check_frames(&m, 3, e1, e1 + 32));
    f2->len = 0;
    f2->type = 77;
    seal(f2);
    cr_assert_not(ring_check_frames(&m, 3, 0, e3));
    cr_assert_not(ring_check_frames(&m, 3, e1, e2));
    f2->type = 4;
    seal(f2);
    cr_assert_not(ring_check_frames(&m, 3, e1, e2));
    f2->type = RING_FLUSH;
    seal(f2);
    cr_assert(ring_check_frames(&m, 3, 0, e3), "every frame restored");

    /* Changes only the check finds: a DEL one byte shorter (it still fits its padding and
     * would delete another key), one byte of a value, the check itself. */
    f1->len = 2;
    cr_assert_not(ring_check_frames(&m, 3, e0, e1), "a DEL one byte short");
    f1->len = 3;
    cr_assert(ring_check_frames(&m, 3, e0, e1));
    ((char *)(h0 + 1))[3] ^= 1; /* "value" -> "walue" */
    cr_assert_not(ring_check_frames(&m, 3, 0, e0), "a value byte");
    ((char *)(h0 + 1))[3] ^= 1;
    f2->check[1] ^= 0x40;
    cr_assert_not(ring_check_frames(&m, 3, e1, e2), "the check");
    f2->check[1] ^= 0x40;
    cr_assert(ring_check_frames(&m, 3, 0, e3), "every frame restored");

    /* The checked bytes are what a reader gets. */
    char *buf = NULL;
    size_t cap = 0;
    struct ring_rec r;
    cr_assert_eq(ring_read(&m, 3, 0, &buf, &cap, &r), RING_OK);
    cr_assert(r.type == RING_SET && r.klen == 3 && r.vlen == 5 && memcmp(r.val, "value", 5) == 0);
    free(buf);
}

Test(ring, check_frames_pad_must_reach_the_ring_end)
{
    uint64_t size = m.hdr->size;
    uint64_t p = 5 * size - 64; /* 64 bytes before the end of the ring */
    ring_reset(&m, 0, p);
    put_frame(&m, 0, p, RING_DEL, 3, "abc", 3);              /* [p, p + 32) */
    put_frame(&m, 0, p + 32, RING_PAD, 16, NULL, 0);         /* [p + 32, 5 * size) */
    put_frame(&m, 0, 5 * size, RING_DEL, 2, "xy", 2);        /* [5 * size, + 32) */
    put_frame(&m, 0, 5 * size + 32, RING_FLUSH, 0, NULL, 0); /* [+ 32, + 48) */
    uint64_t to = 5 * size + 48;
    cr_assert(ring_check_frames(&m, 0, p, to));
    cr_assert(ring_check_frames(&m, 0, p + 32, to), "from the PAD");
    cr_assert(ring_check_frames(&m, 0, p, 5 * size), "up to the end of the ring");
    cr_assert(ring_check_frames(&m, 0, 5 * size, to), "from offset 0");
    cr_assert_not(ring_check_frames(&m, 0, p, p + 48), "ends inside the PAD");
    cr_assert_not(ring_check_frames(&m, 0, p + 48, to), "starts inside the PAD");
    struct ring_frame *pad = (struct ring_frame *)(ring_data(&m, 0) + size - 32);
    pad->len = 0; /* stops short of the end */
    cr_assert_not(ring_check_frames(&m, 0, p, to));
    cr_assert_not(ring_check_frames(&m, 0, p + 32, p + 48));
    pad->len = 32; /* runs past the end */
    cr_assert_not(ring_check_frames(&m, 0, p, to));
    pad->len = 16;
    pad->pos = p; /* wrong stamp */
    cr_assert_not(ring_check_frames(&m, 0, p, to));
    pad->pos = p + 32;
    cr_assert(ring_check_frames(&m, 0, p, to));

    /* Published, a reader skips the PAD. */
    ring_publish(&m, 0, to);
    char *buf = NULL;
    size_t cap = 0;
    struct ring_rec r;
    cr_assert_eq(ring_read(&m, 0, p, &buf, &cap, &r), RING_OK);
    cr_assert(r.type == RING_DEL && r.klen == 3 && memcmp(r.key, "abc", 3) == 0);
    cr_assert_eq(r.next, p + 32);
    cr_assert_eq(ring_read(&m, 0, r.next, &buf, &cap, &r), RING_OK);
    cr_assert(r.type == RING_DEL && r.klen == 2 && memcmp(r.key, "xy", 2) == 0);
    cr_assert_eq(r.pos, 5 * size);
    cr_assert_eq(ring_read(&m, 0, r.next, &buf, &cap, &r), RING_OK);
    cr_assert_eq(r.type, RING_FLUSH);
    cr_assert_eq(ring_read(&m, 0, r.next, &buf, &cap, &r), RING_NONE);
    free(buf);
}

Test(ring, check_frames_takes_at_most_one_ring)
{
    uint64_t size = m.hdr->size;
    /* Fill positions [16, size + 16) with 16-byte FLUSH frames: exactly one ring. */
    ring_reset(&m, 1, 16);
    for (uint64_t pos = 16; pos < size + 16; pos += 16)
        put_frame(&m, 1, pos, RING_FLUSH, 0, NULL, 0);
    cr_assert(ring_check_frames(&m, 1, 16, size + 16), "a whole ring");
    cr_assert(ring_check_frames(&m, 1, 32, size + 16));
    cr_assert_not(ring_check_frames(&m, 1, 16, size + 32), "longer than the ring");
    cr_assert_not(ring_check_frames(&m, 1, 0, size + 16), "longer than the ring");
    cr_assert_not(ring_check_frames(&m, 1, 16, 16 + (1ull << 62)));
    cr_assert_not(ring_check_frames(&m, 1, 16, 16 + 2 * size));
    ring_publish(&m, 1, size + 16);
    char *buf = NULL;
    size_t cap = 0;
    struct ring_rec r;
    uint64_t pos = 16;
    int n = 0;
    while (ring_read(&m, 1, pos, &buf, &cap, &r) == RING_OK) {
        cr_assert_eq(r.type, RING_FLUSH);
        pos = r.next;
        n++;
    }
    cr_assert_eq(pos, size + 16);
    cr_assert_eq((uint64_t)n, size / 16);
    free(buf);
}

Test(ring, reset_starts_the_log_at_a_new_position)
{
    uint64_t size = m.hdr->size;
    uint64_t e0 = ring_append_set(&m, 1, "old", 3, "value", 5, -1);
    ring_append_del(&m, 1, "old", 3);
    uint64_t pos = 10 * size + 4096;
    ring_reset(&m, 1, pos);
    cr_assert_eq(ring_tail(&m, 1), pos);
    char *buf = NULL;
    size_t cap = 0;
    struct ring_rec r;
    cr_assert_eq(ring_read(&m, 1, pos, &buf, &cap, &r), RING_NONE);
    cr_assert(ring_has(&m, 1, pos));
    /* Readers at an old position are told to resynchronise. */
    int rc = ring_read(&m, 1, 0, &buf, &cap, &r);
    cr_assert(rc == RING_LAPPED || rc == RING_CORRUPT, "old position 0: %d", rc);
    rc = ring_read(&m, 1, e0, &buf, &cap, &r);
    cr_assert(rc == RING_LAPPED || rc == RING_CORRUPT, "old position e0: %d", rc);
    cr_assert_not(ring_has(&m, 1, 0));
    cr_assert_not(ring_has(&m, 1, e0));
    /* Appends go on from there, across laps, and a reader follows every one. */
    uint64_t rpos = pos;
    int got = 0;
    for (int i = 0; i < 800; i++) {
        uint64_t end = append_gen(&m, 1, i);
        cr_assert_gt(end, pos);
        int rc2;
        while ((rc2 = ring_read(&m, 1, rpos, &buf, &cap, &r)) == RING_OK) {
            if (got == 0)
                cr_assert_eq(r.pos, pos, "the first record starts at the reset position");
            expect_gen(&r, got++);
            rpos = r.next;
        }
        cr_assert_eq(rc2, RING_NONE);
        cr_assert_eq(rpos, end);
    }
    cr_assert_eq(got, 800);
    cr_assert_gt(ring_tail(&m, 1), pos + 2 * size, "wrapped after the reset");
    cr_assert_eq(ring_tail(&m, 0), 0, "other shards untouched");
    free(buf);
}

Test(ring, reset_backwards_readers_ahead_resynchronise)
{
    char val[200];
    memset(val, 'o', sizeof(val));
    uint64_t old[20];
    for (int i = 0; i < 20; i++)
        old[i] = ring_append_set(&m, 2, "o", 1, val, sizeof(val), -1); /* 240 bytes each */
    ring_reset(&m, 2, 0);
    cr_assert_eq(ring_tail(&m, 2), 0);
    char *buf = NULL;
    size_t cap = 0;
    struct ring_rec r;
    for (int i = 0; i < 20; i++) {
        cr_assert_eq(ring_read(&m, 2, old[i], &buf, &cap, &r), RING_CORRUPT, "ahead of the tail");
        cr_assert_not(ring_has(&m, 2, old[i]));
    }
    /* A new history whose frames fall elsewhere: 48-byte SETs. */
    for (int i = 0; i < 200; i++)
        ring_append_set(&m, 2, "n", 1, "v", 1, -1);
    cr_assert_gt(ring_tail(&m, 2), old[19]);
    for (int i = 0; i < 20; i++) {
        if (old[i] % 48 == 0)
            continue; /* also a frame boundary of the new history */
        int rc = ring_read(&m, 2, old[i], &buf, &cap, &r);
        cr_assert(rc == RING_CORRUPT || rc == RING_LAPPED, "old position %llu: %d",
                  (unsigned long long)old[i], rc);
        cr_assert_not(ring_has(&m, 2, old[i]));
    }
    free(buf);
}

/* ring_reset empties the ring: even a little ahead of the old log, the old frames are gone. */
Test(ring, reset_forward_within_a_ring_forgets_the_old_log)
{
    uint64_t e0 = ring_append_set(&m, 3, "old", 3, "value", 5, -1);
    uint64_t e1 = ring_append_del(&m, 3, "old", 3);
    uint64_t pos = e1 + 4096;
    ring_reset(&m, 3, pos);
    char *buf = NULL;
    size_t cap = 0;
    struct ring_rec r;
    int rc = ring_read(&m, 3, 0, &buf, &cap, &r);
    cr_expect(rc == RING_LAPPED || rc == RING_CORRUPT, "old position 0 after a reset: %d", rc);
    rc = ring_read(&m, 3, e0, &buf, &cap, &r);
    cr_expect(rc == RING_LAPPED || rc == RING_CORRUPT, "old position e0 after a reset: %d", rc);
    cr_expect_not(ring_has(&m, 3, 0), "old position 0 is not held after a reset");
    cr_expect_not(ring_has(&m, 3, e0), "old position e0 is not held after a reset");
    cr_expect_not(ring_has(&m, 3, e1), "the old tail is not held after a reset");
    /* A never-written shard reset a little ahead: its zero bytes are not a frame at 0. */
    ring_reset(&m, 2, 4096);
    cr_expect_not(ring_has(&m, 2, 0), "zeroed bytes at 0 are not a frame boundary");
    cr_expect(ring_has(&m, 2, 4096));
    free(buf);
}

Test(ring, has_only_boundaries_held_and_safe)
{
    uint64_t size = m.hdr->size;
    cr_assert(ring_has(&m, 0, 0), "an empty log: its tail");
    cr_assert_not(ring_has(&m, 0, 16), "past the tail");
    /* Several laps, stopping a little past the end of the ring, so that the boundaries less
     * than 3/4 of a ring behind the tail include a PAD. */
    static uint64_t ends[4000];
    int N = 0;
    uint64_t tail = 0;
    while (tail < 3 * size || (tail & (size - 1)) < 1024 || (tail & (size - 1)) > size / 2) {
        cr_assert_lt(N, 4000);
        ends[N] = append_gen(&m, 0, N);
        tail = ends[N++];
    }
    cr_assert_eq(ring_tail(&m, 0), tail);
    cr_assert(ring_has(&m, 0, tail));
    cr_assert_not(ring_has(&m, 0, tail + 16), "past the tail");
    cr_assert_not(ring_has(&m, 0, tail + size), "past the tail");
    cr_assert_not(ring_has(&m, 0, 0), "overwritten");
    cr_assert_not(ring_has(&m, 0, ends[0]), "overwritten");
    cr_assert_not(ring_has(&m, 0, tail - size - 16), "overwritten");
    /* Every boundary from 3/4 of a ring behind the tail: records and PADs alike. */
    int k = 0;
    while (tail - ends[k] > size / 4 * 3)
        k++;
    char *buf = NULL;
    size_t cap = 0;
    struct ring_rec r;
    uint64_t pos = ends[k];
    int pads = 0, mid = 0;
    for (int i = k + 1; i < N; i++) {
        cr_assert(ring_has(&m, 0, pos), "boundary %llu", (unsigned long long)pos);
        cr_assert_eq(ring_read(&m, 0, pos, &buf, &cap, &r), RING_OK);
        expect_gen(&r, i);
        if (r.pos != pos) {
            pads++;
            cr_assert(ring_has(&m, 0, r.pos), "the record after a PAD");
        }
        cr_assert_not(ring_has(&m, 0, r.pos + 8), "misaligned");
        cr_assert_not(ring_has(&m, 0, r.pos + 1), "misaligned");
        if (r.next - r.pos >= 48) {
            cr_assert_not(ring_has(&m, 0, r.pos + 16), "inside a frame");
            cr_assert_not(ring_has(&m, 0, r.pos + 32), "inside a frame");
            mid++;
        }
        pos = r.next;
    }
    cr_assert_eq(pos, tail);
    cr_assert_geq(pads, 1);
    cr_assert_gt(mid, 100);
    /* Still in the ring but too close to being overwritten to start from. */
    int j = 0;
    while (tail - ends[j] > size)
        j++;
    cr_assert_gt(tail - ends[j], size - ring_max_payload(&m), "a boundary in the unsafe zone");
    cr_assert_not(ring_has(&m, 0, ends[j]));
    free(buf);
}

Test(ring, has_is_false_where_an_unpublished_run_overwrote)
{
    uint64_t size = m.hdr->size;
    char val[1000];
    memset(val, 'x', sizeof(val));
    for (int i = 0; i < 20; i++)
        ring_append_set(&m, 1, "k", 1, val, sizeof(val), -1);
    uint64_t tail = ring_tail(&m, 1);
    cr_assert_lt(tail, size / 2);
    cr_assert(ring_has(&m, 1, 0));
    cr_assert(ring_has(&m, 1, 1040)); /* each record is 16 + 16 + 1 + 1000 -> 1040 bytes */
    /* A receiver writing the next lap's first bytes (not yet published) over position 0. */
    char junk[64];
    memset(junk, 0, sizeof(junk));
    cr_assert_eq(ring_write_raw(&m, 1, size, junk, sizeof(junk)), 0);
    cr_assert_eq(ring_tail(&m, 1), tail);
    cr_assert_not(ring_has(&m, 1, 0), "position 0 is being overwritten");
    cr_assert(ring_has(&m, 1, 1040), "position 1040 is not");
    cr_assert(ring_has(&m, 1, tail));
}
