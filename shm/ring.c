/*
 * ring: the shared-memory replication log (see ring.h for the layout and the
 * memory-ordering argument between the writer and its readers).
 *
 * The mapping is laid out as: one page with struct ring_hdr; the per-shard control words
 * (struct ring_shard, two cache lines each), rounded up to a page; then each shard's data,
 * `size` bytes apiece.  Readers in other processes check every field of the header against
 * the size of the file before they use it.
 */
#include "shm/ring.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#define PAGE 4096u

static inline size_t align8(size_t n)
{
    return (n + RING_ALIGN - 1) & ~(size_t)(RING_ALIGN - 1);
}

static size_t layout(uint32_t nshards, size_t size, size_t *data_off)
{
    size_t ctl = ((size_t)nshards * sizeof(struct ring_shard) + PAGE - 1) & ~(size_t)(PAGE - 1);
    *data_off = PAGE + ctl;
    return *data_off + (size_t)nshards * size;
}

static __thread uint64_t ring_clock_ns;

void ring_set_clock(uint64_t ns)
{
    ring_clock_ns = ns;
}

int shm_create(const char *name, size_t len, void **base)
{
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)len) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    /* The size can never change under a process that mapped it. */
    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
    *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (*base == MAP_FAILED) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

/* base's header has been written (create) or checked (attach): h is a copy of it. */
static void set_map(struct ring_map *m, void *base, const struct ring_hdr *h, size_t len, int fd,
                    bool owner)
{
    m->hdr = base;
    m->shards = (struct ring_shard *)((char *)base + PAGE);
    m->data = (char *)base + h->data_off;
    m->size = h->size;
    m->nshards = h->nshards;
    m->map_len = len;
    m->fd = fd;
    m->owner = owner;
}

int ring_map_create(struct ring_map *m, uint32_t nshards, size_t size, const char *replid)
{
    size_t sz = 64 * 1024;
    while (sz < size)
        sz <<= 1;
    size_t data_off;
    size_t len = layout(nshards, sz, &data_off);
    void *base;
    int fd = shm_create("ringkv-repl-log", len, &base);
    if (fd < 0)
        return fd;
    struct ring_hdr *h = base;
    h->magic = RING_MAGIC;
    h->nshards = nshards;
    h->size = sz;
    h->data_off = data_off;
    h->map_len = len;
    snprintf(h->replid, sizeof(h->replid), "%s", replid ? replid : "");
    set_map(m, base, h, len, fd, true);
    return 0;
}

int ring_map_attach(struct ring_map *m, int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    if ((size_t)st.st_size < PAGE) {
        close(fd);
        return -EBADMSG;
    }
    void *base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = -errno;
        close(fd);
        return e;
    }
    struct ring_hdr h;
    memcpy(&h, base, sizeof(h));
    size_t data_off;
    bool ok = h.magic == RING_MAGIC && h.nshards >= 1 && h.nshards <= 65536 &&
              h.size >= 64 * 1024 && (h.size & (h.size - 1)) == 0 && h.size <= (1ull << 40) &&
              layout(h.nshards, (size_t)h.size, &data_off) == (size_t)st.st_size &&
              data_off == h.data_off && h.map_len == (uint64_t)st.st_size;
    if (!ok) {
        munmap(base, (size_t)st.st_size);
        close(fd);
        return -EBADMSG;
    }
    set_map(m, base, &h, (size_t)st.st_size, fd, false);
    return 0;
}

void ring_map_close(struct ring_map *m)
{
    if (m->hdr)
        munmap(m->hdr, m->map_len);
    if (m->fd >= 0)
        close(m->fd);
    memset(m, 0, sizeof(*m));
    m->fd = -1;
}

size_t ring_max_payload(const struct ring_map *m)
{
    return (size_t)m->size / 4 - sizeof(struct ring_frame);
}

/* Append one frame whose payload is the concatenation of up to three pieces. */
#define APPEND_STAGE 256 /* payloads up to this are staged on the stack (append) */

uint32_t ring_frame_check(const struct ring_frame *f, const void *payload)
{
    uint64_t seed = f->pos ^ ((uint64_t)f->len << 32) ^ ((uint64_t)f->type << 24);
    size_t n = f->type == RING_PAD ? 0 : f->len;
    return (uint32_t)XXH3_64bits_withSeed(payload, n, seed) & 0xffffffu;
}

void ring_frame_seal(struct ring_frame *f, const void *payload)
{
    uint32_t c = ring_frame_check(f, payload);
    f->check[0] = (uint8_t)c;
    f->check[1] = (uint8_t)(c >> 8);
    f->check[2] = (uint8_t)(c >> 16);
}

bool ring_frame_checks(const struct ring_frame *f, const void *payload)
{
    uint32_t have = (uint32_t)f->check[0] | (uint32_t)f->check[1] << 8 | (uint32_t)f->check[2] << 16;
    return have == ring_frame_check(f, payload);
}

static uint64_t append(struct ring_map *m, uint32_t s, uint8_t type, const void *p1, size_t n1,
                       const void *p2, size_t n2, const void *p3, size_t n3)
{
    size_t plen = n1 + n2 + n3;
    if (plen > ring_max_payload(m))
        return 0;
    struct ring_shard *sh = &m->shards[s];
    uint64_t size = m->size;
    char *data = ring_data(m, s);
    uint64_t t = sh->tail; /* only this thread writes tail */
    size_t need = align8(sizeof(struct ring_frame) + plen);
    size_t off = (size_t)(t & (size - 1));
    size_t to_end = (size_t)size - off;
    uint64_t start = to_end < need ? t + to_end : t;
    uint64_t end = start + need;
    /* Announce the region about to be overwritten before touching it (see ring.h).  Only
     * ever raised: after a ring_reset it may already be past end. */
    if (end > sh->reserve)
        __atomic_store_n(&sh->reserve, end, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    if (start != t) {
        struct ring_frame pad = {
            .pos = t, .len = (uint32_t)(to_end - sizeof(pad)), .type = RING_PAD};
        ring_frame_seal(&pad, NULL);
        memcpy(data + off, &pad, sizeof(pad));
        off = 0;
    }
    struct ring_frame f = {.pos = start, .len = (uint32_t)plen, .type = type};
    /* The payload is put together on the stack, hashed there and copied to the ring once:
     * hashing it in the ring would read back lines whose stores still wait for their cache
     * misses (measured: the hash then cost more than the rest of the append).  Large
     * payloads are hashed in the ring. */
    char stage[APPEND_STAGE];
    char *p = plen <= sizeof(stage) ? stage : data + off + sizeof(f);
    if (n1)
        memcpy(p, p1, n1);
    if (n2)
        memcpy(p + n1, p2, n2);
    if (n3)
        memcpy(p + n1 + n2, p3, n3);
    ring_frame_seal(&f, p);
    if (p == stage)
        memcpy(data + off + sizeof(f), stage, plen);
    memcpy(data + off, &f, sizeof(f));
    /* Release: the frame's bytes are visible before the tail that covers them. */
    __atomic_store_n(&sh->tail_ns, ring_clock_ns, __ATOMIC_RELAXED);
    __atomic_store_n(&sh->tail, end, __ATOMIC_RELEASE);
    return end;
}

uint64_t ring_append_set(struct ring_map *m, uint32_t s, const char *key, size_t klen,
                         const char *val, size_t vlen, int64_t expire_ms)
{
    struct ring_set h = {.expire_ms = expire_ms, .klen = (uint32_t)klen, .vlen = (uint32_t)vlen};
    if (klen > UINT32_MAX || vlen > UINT32_MAX)
        return 0;
    return append(m, s, RING_SET, &h, sizeof(h), key, klen, val, vlen);
}

uint64_t ring_append_del(struct ring_map *m, uint32_t s, const char *key, size_t klen)
{
    return append(m, s, RING_DEL, key, klen, NULL, 0, NULL, 0);
}

uint64_t ring_append_flush(struct ring_map *m, uint32_t s)
{
    return append(m, s, RING_FLUSH, NULL, 0, NULL, 0, NULL, 0);
}

/* Has the writer possibly overwritten bytes at pos?  (acquire fence before the load: our
 * copies of the frame happen before we look) */
static bool lapped(const struct ring_map *m, uint32_t s, uint64_t pos)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    uint64_t r = __atomic_load_n(&m->shards[s].reserve, __ATOMIC_RELAXED);
    return r - pos > m->size;
}

int ring_read(const struct ring_map *m, uint32_t s, uint64_t pos, char **buf, size_t *cap,
              struct ring_rec *rec)
{
    uint64_t size = m->size;
    const char *data = ring_data(m, s);
    for (;;) {
        uint64_t tail = ring_tail(m, s);
        if (pos == tail)
            return RING_NONE;
        if (pos > tail || (pos & (RING_ALIGN - 1)))
            return RING_CORRUPT;
        if (tail - pos > size)
            return RING_LAPPED;
        size_t off = (size_t)(pos & (size - 1));
        size_t room = (size_t)size - off;
        if (room < sizeof(struct ring_frame))
            return RING_CORRUPT;
        struct ring_frame f;
        memcpy(&f, data + off, sizeof(f));
        if (f.pos != pos || f.len > room - sizeof(f))
            return lapped(m, s, pos) ? RING_LAPPED : RING_CORRUPT;
        if (f.type == RING_PAD) {
            if (f.len != room - sizeof(f) || !ring_frame_checks(&f, NULL))
                return lapped(m, s, pos) ? RING_LAPPED : RING_CORRUPT;
            if (lapped(m, s, pos))
                return RING_LAPPED;
            pos += room;
            continue;
        }
        size_t total = align8(sizeof(f) + f.len);
        if (total > tail - pos)
            return lapped(m, s, pos) ? RING_LAPPED : RING_CORRUPT;
        if (*cap < f.len + 1) {
            *cap = f.len + 1;
            *buf = rk_realloc(*buf, *cap);
        }
        memcpy(*buf, data + off + sizeof(f), f.len);
        if (lapped(m, s, pos))
            return RING_LAPPED;
        /* The copy is what the writer wrote; is it what it meant?  Not asked of our own log:
         * we wrote it, or checked every frame before publishing it (ring_check_frames). */
        if (!m->owner && !ring_frame_checks(&f, *buf))
            return RING_CORRUPT;
        /* The copy is good: now its contents may be looked at, still checking every length. */
        memset(rec, 0, sizeof(*rec));
        rec->type = f.type;
        rec->pos = pos;
        rec->next = pos + total;
        rec->expire_ms = -1;
        switch (f.type) {
        case RING_SET: {
            struct ring_set h;
            if (f.len < sizeof(h))
                return RING_CORRUPT;
            memcpy(&h, *buf, sizeof(h));
            if ((uint64_t)h.klen + h.vlen != f.len - sizeof(h))
                return RING_CORRUPT;
            rec->expire_ms = h.expire_ms;
            rec->key = *buf + sizeof(h);
            rec->klen = h.klen;
            rec->val = rec->key + h.klen;
            rec->vlen = h.vlen;
            return RING_OK;
        }
        case RING_DEL:
            rec->key = *buf;
            rec->klen = f.len;
            return RING_OK;
        case RING_FLUSH:
            return f.len == 0 ? RING_OK : RING_CORRUPT;
        default:
            return RING_CORRUPT;
        }
    }
}

/* ---- a copy of another server's log (TCP replicas) ---------------------------------------- */

void ring_reset(struct ring_map *m, uint32_t s, uint64_t pos)
{
    struct ring_shard *sh = &m->shards[s];
    /* Every byte before pos is void: a reserve a whole ring past pos makes any reader of an
     * older position see itself lapped, while a reader at pos or later reads normally. */
    __atomic_store_n(&sh->reserve, pos + m->size, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&sh->tail, pos, __ATOMIC_RELEASE);
}

int ring_write_raw(struct ring_map *m, uint32_t s, uint64_t pos, const void *p, size_t n)
{
    uint64_t size = m->size;
    size_t off = (size_t)(pos & (size - 1));
    if (n > size - off)
        return -1; /* frames never wrap, so neither does a run of them */
    struct ring_shard *sh = &m->shards[s];
    if (pos + n > sh->reserve) {
        __atomic_store_n(&sh->reserve, pos + n, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
    }
    memcpy(ring_data(m, s) + off, p, n);
    return 0;
}

/* The payload checks of ring_read, on bytes that are not published yet. */
static bool payload_ok(const struct ring_frame *f, const char *payload)
{
    switch (f->type) {
    case RING_SET: {
        struct ring_set h;
        if (f->len < sizeof(h))
            return false;
        memcpy(&h, payload, sizeof(h));
        return (uint64_t)h.klen + h.vlen == f->len - sizeof(h);
    }
    case RING_DEL:
        return true;
    case RING_FLUSH:
        return f->len == 0;
    default:
        return false;
    }
}

bool ring_check_frames(const struct ring_map *m, uint32_t s, uint64_t from, uint64_t to)
{
    uint64_t size = m->size;
    const char *data = ring_data(m, s);
    if (to < from || to - from > size || (from & (RING_ALIGN - 1)) || (to & (RING_ALIGN - 1)))
        return false;
    uint64_t pos = from;
    while (pos < to) {
        size_t off = (size_t)(pos & (size - 1));
        size_t room = (size_t)size - off;
        struct ring_frame f;
        memcpy(&f, data + off, sizeof(f));
        if (f.pos != pos || f.len > room - sizeof(f))
            return false;
        if (f.type == RING_PAD) {
            if (f.len != room - sizeof(f) || !ring_frame_checks(&f, NULL))
                return false;
            pos += room;
            continue;
        }
        if (f.len > ring_max_payload(m) || !payload_ok(&f, data + off + sizeof(f)) ||
            !ring_frame_checks(&f, data + off + sizeof(f)))
            return false;
        pos += align8(sizeof(f) + f.len);
    }
    return pos == to;
}

void ring_publish(struct ring_map *m, uint32_t s, uint64_t tail)
{
    __atomic_store_n(&m->shards[s].tail_ns, ring_clock_ns, __ATOMIC_RELAXED);
    __atomic_store_n(&m->shards[s].tail, tail, __ATOMIC_RELEASE);
}

bool ring_has(const struct ring_map *m, uint32_t s, uint64_t pos)
{
    uint64_t size = m->size, tail = ring_tail(m, s);
    if (pos > tail || (pos & (RING_ALIGN - 1)))
        return false;
    if (pos == tail)
        return true;
    if (tail - pos > size - ring_max_payload(m))
        return false; /* about to be overwritten: not worth starting from */
    struct ring_frame f;
    memcpy(&f, ring_data(m, s) + (pos & (size - 1)), sizeof(f));
    return f.pos == pos && !lapped(m, s, pos);
}
