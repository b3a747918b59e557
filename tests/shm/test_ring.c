/*
 * ring unit tests: records round-trip, the wrap is padded, a lapped reader is told so, a
 * corrupt frame or header is refused without a crash, and a read-only attach sees the same log.
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
    /* SET lengths that do not add up. */
    f->len = sizeof(struct ring_set) + 8;
    struct ring_set *h = (struct ring_set *)(f + 1);
    h->klen = 1000;
    cr_assert_eq(ring_read(&m, 3, 0, &buf, &cap, &r), RING_CORRUPT);
    /* A wrong position stamp, and an unknown type. */
    h->klen = 3;
    f->pos = 8;
    cr_assert_eq(ring_read(&m, 3, 0, &buf, &cap, &r), RING_CORRUPT);
    f->pos = 0;
    f->type = 77;
    cr_assert_eq(ring_read(&m, 3, 0, &buf, &cap, &r), RING_CORRUPT);
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
