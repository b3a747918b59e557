/*
 * config: the server's settings, from the config file, the command line and CONFIG SET.
 *
 * One table (config.c) names every option once: its name (Redis's directive names where they
 * exist), type, default, range, whether CONFIG SET may change it while running, and its help
 * line.  --help, the config-file parser, `--name value` arguments, CONFIG GET and CONFIG SET
 * all read that table, so they cannot drift apart.
 *
 * Values live in struct config.  Options that may change at run time are read by workers with
 * relaxed atomic loads (cfg_*), and written by CONFIG SET with relaxed atomic stores; a string
 * option changed at run time gets a fresh copy, published with a release store (read with
 * acquire), and the old one is kept (not freed) so that a worker reading it concurrently never
 * sees freed memory.  Options that cannot change at run time are plain reads of cfg.
 */
#ifndef RK_CONFIG_H
#define RK_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>
#include "net/proto.h"
#include "net/reply.h"

#define RINGKV_VERSION "0.1.0"

struct config {
    int port;   /* TCP port, 0 = don't listen on TCP */
    char *bind; /* space-separated addresses */
    long long maxclients;
    char *requirepass;                   /* "" = no password */
    int loglevel;                        /* RK_LOG_* */
    char *logfile;                       /* "" = stdout */
    long long timeout;                   /* idle client timeout in seconds, 0 = never */
    int threads;                         /* worker threads */
    int shards;                          /* shards, a power of two */
    long long proto_max_bulk_len;        /* bytes */
    long long client_query_buffer_limit; /* bytes */
    char *pidfile;                       /* "" = none */
    char *config_file;                   /* absolute path of the file read at start, "" if none */
    char *unixsocket;                    /* "auto" = /tmp/ringkv-<port>.sock, "" = none */
    char *replicaof;                     /* "host port", or "" for a master */
    char *masterauth;                    /* password a replica sends to its master */
    int repl_transport;                  /* enum repl_transport */
    long long repl_ring_size;            /* replication log bytes per shard */
    int sync_mode;                       /* enum sync_mode */
    long long sync_replicas;             /* N for semi and sync */
    long long sync_timeout;              /* ms */
    int sync_fallback;                   /* enum sync_fallback */
};

enum repl_transport { REPL_AUTO = 0, REPL_SHM = 1, REPL_TCP = 2 };
enum sync_mode { SYNC_ASYNC = 0, SYNC_SEMI = 1, SYNC_SYNC = 2 };
enum sync_fallback { FALLBACK_ASYNC = 0, FALLBACK_ERROR = 1 };

extern struct config cfg;

/* Set every option to its default.  threads defaults to the number of online CPUs.  It frees
 * the strings that earlier settings left, so call it only while no worker runs (at start, or
 * between tests).  The other functions here call it first if it has never been called. */
void config_defaults(void);

/*
 * Parse argv as redis-server does: [config-file] [--name value ...] (an option may take
 * several words, e.g. --save ""; "-" as the file reads stdin).  The file is read first, then the
 * --options are applied on top; both apply on top of the current values (config_defaults()
 * first for a clean start).  --help and --version (anywhere; -h and -v as the first argument)
 * print to stdout and exit 0.  On any error it prints one clear line to stderr
 * ("ringkv-server: ...") and returns -1 (main exits with status 2).  Returns 0 on success.
 */
int config_from_args(int argc, char **argv);

/* Load a config file's directives (Redis syntax: "name value...", # comments, quotes).
 * Returns 0 and records the file's absolute path in cfg.config_file, or -1 after printing
 * "ringkv-server: <file>:<line>: <problem>" to stderr (it stops at the first bad line, and
 * the lines before it stay applied). */
int config_load_file(const char *path);

/* Print the --help text: every option, its default and meaning. */
void config_print_help(FILE *fp);

/* CONFIG GET pattern [pattern ...] and CONFIG SET name value [name value ...]: replies as
 * Redis 7.0 does (GET: flat array name, value, ...; SET: +OK or Redis's error texts, and
 * nothing is changed unless every pair is valid).  argv holds only the arguments after
 * "CONFIG GET" / "CONFIG SET" (argc may be 0); these check their own arity and reply with
 * Redis's "wrong number of arguments for 'config|get'" error.  They may run on any worker. */
void config_cmd_get(struct reply *r, int argc, const struct arg *argv);
void config_cmd_set(struct reply *r, int argc, const struct arg *argv);

/* Live values, safe to read from any worker. */
static inline long long cfg_maxclients(void)
{
    return __atomic_load_n(&cfg.maxclients, __ATOMIC_RELAXED);
}
static inline const char *cfg_requirepass(void)
{
    return __atomic_load_n(&cfg.requirepass, __ATOMIC_ACQUIRE);
}
static inline long long cfg_timeout(void)
{
    return __atomic_load_n(&cfg.timeout, __ATOMIC_RELAXED);
}
static inline long long cfg_max_bulk(void)
{
    return __atomic_load_n(&cfg.proto_max_bulk_len, __ATOMIC_RELAXED);
}
static inline int cfg_sync_mode(void)
{
    return __atomic_load_n(&cfg.sync_mode, __ATOMIC_RELAXED);
}
static inline long long cfg_sync_replicas(void)
{
    return __atomic_load_n(&cfg.sync_replicas, __ATOMIC_RELAXED);
}
static inline long long cfg_sync_timeout(void)
{
    return __atomic_load_n(&cfg.sync_timeout, __ATOMIC_RELAXED);
}
static inline int cfg_sync_fallback(void)
{
    return __atomic_load_n(&cfg.sync_fallback, __ATOMIC_RELAXED);
}
static inline long long cfg_qbuf_limit(void)
{
    return __atomic_load_n(&cfg.client_query_buffer_limit, __ATOMIC_RELAXED);
}

#endif
