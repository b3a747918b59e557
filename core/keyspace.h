/*
 * keyspace: the cache commands, executed against one shard.
 *
 * Every keyspace command here works on a single key (argv[1]) in one shard, or on a whole
 * shard (the _shard variants).  The dispatcher (net/dispatch.c) splits multi-key commands
 * (MGET, MSET, DEL k1 k2 ...) into single-key commands and sends each to the worker owning
 * the key's shard, so a command is atomic within one shard and every function here runs on
 * the shard's owner thread, with no locking.
 *
 * Handlers write their reply through ctx->r (net/reply.h), in either protocol.  argv[0] is
 * the command name as the client sent it; arity has already been checked by the dispatcher
 * against the command table.  Expiry is lazy: a key whose deadline is <= ctx->now_ms is
 * deleted when a command touches it, and counted in stats->expired_keys.
 *
 * Every change to the keyspace is reported through ctx->on_change when it is set (the
 * replication log hooks in there): a SET record with the absolute deadline, or a DEL.
 */
#ifndef RK_KEYSPACE_H
#define RK_KEYSPACE_H

#include <stdint.h>
#include "core/shard.h"
#include "net/proto.h"
#include "net/reply.h"

/* Per-worker keyspace counters: summed over workers by INFO. */
struct ks_stats {
    uint64_t keyspace_hits;
    uint64_t keyspace_misses;
    uint64_t expired_keys;
};

/* Count one event: the owner's relaxed read-modify-write (no lock prefix); INFO reads the
 * counters from other threads with relaxed loads. */
#define KS_STAT_INC(st, f)                                                                         \
    __atomic_store_n(&(st)->f, __atomic_load_n(&(st)->f, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED)

enum ks_change { KS_CHANGE_SET, KS_CHANGE_DEL, KS_CHANGE_FLUSH };

struct ks_ctx {
    struct shard *shard; /* the shard that owns argv[1] (or the shard for _shard commands) */
    uint64_t hash;       /* kv_hash(argv[1]) for key commands */
    uint32_t shard_idx;  /* index of shard */
    unsigned shard_bits; /* there are 1 << shard_bits shards */
    int64_t now_ms;      /* wall clock for this command, ms since the epoch */
    struct reply *r;
    struct ks_stats *stats;
    uint64_t max_string; /* proto-max-bulk-len: longest value APPEND/SETRANGE build; 0 = 512 MiB */
    bool keep_expired;   /* a replica: an expired key reads as absent but is not removed (its
                          * master's DEL record removes it) */
    /* Called after each change, on the owner thread; e is the new entry for SET (key, value,
     * deadline), NULL for FLUSH; for DEL key/klen name the key. */
    void (*on_change)(void *arg, enum ks_change what, const struct kv_entry *e, const char *key,
                      size_t klen);
    void *on_change_arg;
};

typedef void ks_cmd_fn(struct ks_ctx *ctx, int argc, const struct arg *argv);

/* Look up a key with lazy expiry: NULL when absent or expired (an expired key is removed,
 * reported as KS_CHANGE_DEL and counted in stats->expired_keys).  key must be the key whose
 * hash is ctx->hash (argv[1]).  Counts no hits or misses.  The entry stays valid until the
 * next change to the shard. */
struct kv_entry *ks_lookup(struct ks_ctx *ctx, const char *key, size_t klen);

/* Single-key commands: Redis semantics and reply texts, argv as the client sent it. */
ks_cmd_fn ks_get, ks_set, ks_setnx, ks_setex, ks_psetex, ks_getset, ks_getdel, ks_getex, ks_del,
    ks_exists, ks_type, ks_incr, ks_decr, ks_incrby, ks_decrby, ks_incrbyfloat, ks_append,
    ks_strlen, ks_getrange, ks_setrange, ks_expire, ks_pexpire, ks_expireat, ks_pexpireat, ks_ttl,
    ks_pttl, ks_persist, ks_touch;

/*
 * The single-key pieces of multi-key commands.  argv[1] is the key (argv[2] the value for
 * ks_mset_one and ks_msetnx_one), argv[0] is the original command's name:
 *   ks_del / ks_exists / ks_touch reply an integer 0 or 1 (the caller sums them);
 *   ks_get replies one bulk or nil (MGET concatenates them);
 *   ks_mset_one sets without a reply (the caller replies OK once);
 *   ks_msetnx_one sets only if absent, replying 1 if set, 0 if not (the caller checks with
 *   ks_exists first).
 */
ks_cmd_fn ks_mset_one, ks_msetnx_one;

/*
 * Whole-shard commands: the dispatcher runs them on every shard (or, for SCAN, one) and
 * combines the parts.
 *   ks_dbsize_shard:  reply_int(count)
 *   ks_flush_shard:   empties the shard; no reply
 *   ks_keys_shard:    argv[1] is the pattern; one bulk per matching key, and sets r->nelem
 *   ks_randomkey_shard: one bulk (a random live key) or nil; argv[1] is a random number
 *   ks_digest_shard:  appends 20 raw bytes to r->b: the shard's digest (see below)
 *   ks_scan_shard:    argv: SCAN cursor [MATCH p] [COUNT n] [TYPE t], already validated; the
 *                     cursor's low shard_bits bits are ctx->shard_idx; replies the whole SCAN
 *                     reply: [next cursor (next shard's cursor when this one is done; "0"
 *                     after the last shard), [keys...]].
 */
ks_cmd_fn ks_dbsize_shard, ks_flush_shard, ks_keys_shard, ks_randomkey_shard, ks_digest_shard,
    ks_scan_shard;

/*
 * DEBUG DIGEST: each key contributes a 20-byte value derived (XXH3-128 plus a 32-bit check)
 * from its key, value and absolute deadline; a shard's digest is the XOR of its keys', and the
 * dataset's the XOR of its shards' (ks_digest_combine).  So equal data gives an equal digest
 * whatever the thread and shard layout.  An empty dataset's digest is all zeros, as Redis's.
 */
#define KS_DIGEST_LEN 20
void ks_digest_combine(uint8_t acc[KS_DIGEST_LEN], const uint8_t part[KS_DIGEST_LEN]);

#endif
