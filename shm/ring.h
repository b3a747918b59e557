/*
 * ring: the shared-memory replication log.
 *
 * One ring per shard, all in one mapping (a memfd, so it can be handed to another process).
 * Each ring has exactly one writer, the worker that owns the shard, and any number of
 * readers, in this process or in replica processes that map the memfd read-only.  The
 * writer never waits for a reader: a reader that falls a whole ring behind is "lapped" and
 * must resynchronise.
 *
 * POSITIONS are 64-bit byte offsets into a shard's log that only grow; the byte at position p
 * lives at data[p & (size - 1)].  A FRAME is a struct ring_frame header, then its payload,
 * padded to 16 bytes, the size of the header, so the space left before the end of the ring
 * is always either none or room for at least a PAD frame's header.  Frames never wrap: when the
 * space before the end of the ring is too short, the writer fills it with a PAD frame and starts
 * again at offset 0.
 *
 * PUBLISHING.  The writer first announces the end of the region it is about to overwrite
 * (`reserve`), then writes the frame bytes, then publishes the new `tail` with a release
 * store.  A reader loads `tail` with acquire, copies the frame out, and then (after an
 * acquire fence) loads `reserve`: if the writer may have started overwriting the bytes it
 * copied (reserve - pos > size), the copy is void and the reader has been lapped.  This is
 * the seqlock argument: the writer's store of reserve is ordered before its data stores by a
 * release fence; the reader's data loads are ordered before its load of reserve by an acquire
 * fence; so a reader that saw any overwritten byte also sees the reserve that announced it.
 * Nothing a reader copies out is trusted before that check, and every length is checked
 * against the ring before it is used.
 *
 * CHECKS.  Every frame carries a 24-bit check (ring_frame_check: XXH3 of its payload, seeded
 * with its position, length and type).  The checks on lengths and positions catch most
 * garbage, but not all: a DEL frame's length one byte shorter still fits its padding and would
 * delete another key.  A reader that finds a frame whose check does not match treats it like
 * any corrupt frame (RING_CORRUPT: resynchronise); a TCP replica checks every frame of a
 * committed range before it publishes it (ring_check_frames).  ring_read checks frames of a
 * log it maps from another process only: the owner's own log was written, or checked, by
 * itself.
 *
 * RECORDS are idempotent: SET (key, value, absolute deadline in ms or -1), DEL (key), FLUSH.
 * Replaying any suffix of a shard's log over the state that shard had at the suffix's start
 * gives exactly the writer's state.
 */
#ifndef RK_RING_H
#define RK_RING_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define RING_MAGIC 0x524b564c4f473032ull /* "RKVLOG02": frames with checks */
#define RING_ALIGN 16u /* = sizeof(struct ring_frame): a PAD header always fits before the end */

enum ring_rec_type {
    RING_PAD = 0,
    RING_SET = 1,
    RING_DEL = 2,
    RING_FLUSH = 3,
};

struct ring_frame {
    uint64_t pos; /* the frame's own position: a reader checks it (garbage and laps) */
    uint32_t len; /* payload bytes */
    uint8_t type; /* enum ring_rec_type */
    uint8_t check[3]; /* the low 24 bits of ring_frame_check, little endian */
};

/* SET payload: this header, then the key, then the value. */
struct ring_set {
    int64_t expire_ms; /* absolute deadline, or -1 */
    uint32_t klen;
    uint32_t vlen;
};

/* Per-shard control words, each on its own cache line. */
struct ring_shard {
    _Alignas(64) uint64_t tail;    /* published end of the log (release by the writer) */
    uint64_t tail_ns;              /* writer's CLOCK_MONOTONIC when it published tail (stored
                                    * before tail, so a reader that acquired tail sees it) */
    _Alignas(64) uint64_t reserve; /* writer may be overwriting bytes below reserve - size */
};

/* Writer: the CLOCK_MONOTONIC time stamped on what this thread publishes next (a worker sets
 * it before each completion it handles while replicas follow, so a record carries about the
 * time it was written).  Same host, same clock: a replica measures its apply lag from it. */
void ring_set_clock(uint64_t ns);

struct ring_hdr {
    uint64_t magic;
    uint32_t nshards;
    uint32_t pad;
    uint64_t size;     /* bytes of data per shard, a power of two */
    uint64_t data_off; /* offset of shard 0's data from the start of the mapping */
    uint64_t map_len;  /* bytes in the whole mapping */
    char replid[41];   /* the replication id of this log */
};

/* A mapped set of rings.  The writer's view is read-write; a reader's may be read-only. */
struct ring_map {
    struct ring_hdr *hdr;
    struct ring_shard *shards; /* nshards entries */
    char *data;                /* shard s's data at data + s * size */
    /* The header's size and nshards, as checked when the log was created or attached: a
     * reader never takes them from the mapping again (another process writes it). */
    uint64_t size;
    uint32_t nshards;
    size_t map_len;
    int fd;     /* the memfd */
    bool owner; /* created here (munmap + close on ring_map_close) */
};

/* A new sealed-size memfd of len bytes named name, mapped read-write at *base.  Returns the
 * fd, or -errno. */
int shm_create(const char *name, size_t len, void **base);

/* Create the rings: nshards logs of size bytes each (rounded up to a power of two, at least
 * 64 KiB), in a new memfd.  Returns 0 or -errno. */
int ring_map_create(struct ring_map *m, uint32_t nshards, size_t size, const char *replid);
/* Map a memfd made by ring_map_create read-only, checking its header against the file's
 * size.  Takes ownership of fd.  Returns 0, -errno, or -EBADMSG for a bad header. */
int ring_map_attach(struct ring_map *m, int fd);
void ring_map_close(struct ring_map *m);

static inline char *ring_data(const struct ring_map *m, uint32_t s)
{
    return m->data + (size_t)s * m->size;
}

/* Writer: append one record to shard s's log and publish it.  Returns the position after it
 * (where the next record starts).  Never waits.  key/value lengths must fit in the ring (a
 * record over a quarter of the ring is refused: returns 0 and appends nothing). */
uint64_t ring_append_set(struct ring_map *m, uint32_t s, const char *key, size_t klen,
                         const char *val, size_t vlen, int64_t expire_ms);
uint64_t ring_append_del(struct ring_map *m, uint32_t s, const char *key, size_t klen);
uint64_t ring_append_flush(struct ring_map *m, uint32_t s);
/* A frame's check: of its payload (len bytes at payload; none for a PAD frame, whose payload
 * is never written) and its header's pos, len and type.  24 bits are kept. */
uint32_t ring_frame_check(const struct ring_frame *f, const void *payload);
/* Set f's check for payload (the writer; tests that build frames by hand). */
void ring_frame_seal(struct ring_frame *f, const void *payload);
/* Does f's check match payload? */
bool ring_frame_checks(const struct ring_frame *f, const void *payload);

/* The largest payload one record may have. */
size_t ring_max_payload(const struct ring_map *m);

/* Published end of shard s's log (acquire). */
static inline uint64_t ring_tail(const struct ring_map *m, uint32_t s)
{
    return __atomic_load_n(&m->shards[s].tail, __ATOMIC_ACQUIRE);
}

/* The writer's clock when it published shard s's tail (see ring_set_clock). */
static inline uint64_t ring_tail_ns(const struct ring_map *m, uint32_t s)
{
    return __atomic_load_n(&m->shards[s].tail_ns, __ATOMIC_RELAXED);
}

/* One record, as a reader copied it out. */
struct ring_rec {
    uint8_t type;
    int64_t expire_ms;
    const char *key; /* point into the reader's buffer */
    size_t klen;
    const char *val;
    size_t vlen;
    uint64_t pos;  /* where the record starts */
    uint64_t next; /* where the next one starts */
};

enum {
    RING_NONE = 0,    /* nothing new */
    RING_OK = 1,      /* *rec holds a record */
    RING_LAPPED = -1, /* the writer overwrote what we were reading: resynchronise */
    RING_CORRUPT = -2 /* a frame failed its checks: resynchronise */
};

/*
 * Reader: copy the record at position pos of shard s into buf (grown as needed; the caller
 * frees *buf) and describe it in *rec.  Returns RING_OK, RING_NONE when pos is the tail,
 * RING_LAPPED or RING_CORRUPT.  Padding is skipped.  Never trusts a length it has not checked.
 */
int ring_read(const struct ring_map *m, uint32_t s, uint64_t pos, char **buf, size_t *cap,
              struct ring_rec *rec);

/*
 * A COPY of another server's log, written by a TCP replica's receiver (the only writer of its
 * rings), byte for byte at the same positions, so that positions mean the same on both and a
 * replica can in turn serve the same bytes.  Bytes are written with ring_write_raw (which
 * announces them in `reserve` first), checked with ring_check_frames, and only then published
 * with ring_publish.
 */
/* Empty shard s's ring and start it at pos. */
void ring_reset(struct ring_map *m, uint32_t s, uint64_t pos);
/* Write n raw log bytes at position pos (not published).  -1 if they would wrap. */
int ring_write_raw(struct ring_map *m, uint32_t s, uint64_t pos, const void *p, size_t n);
/* Are the bytes [from, to) of shard s whole, valid frames?  (Never trusts a length.) */
bool ring_check_frames(const struct ring_map *m, uint32_t s, uint64_t from, uint64_t to);
/* Publish tail (release), stamped with this thread's ring clock. */
void ring_publish(struct ring_map *m, uint32_t s, uint64_t tail);
/* Does shard s's ring still hold a frame boundary at pos, far enough from being overwritten
 * to start reading there?  (pos == tail counts.) */
bool ring_has(const struct ring_map *m, uint32_t s, uint64_t pos);

#endif
