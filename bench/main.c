/*
 * ringkv-bench: a closed-loop load generator for ringkv and Redis, on io_uring.
 *
 * main.c reads the options, prepares what the threads share (key and value generators, the
 * verify bitmap, the server address), starts T threads that each drive C/T connections
 * (client.c), prints a progress line each second on a terminal, then merges the threads'
 * counters and histograms and reports: requests/s overall and per command, latency
 * percentiles per command and overall, errors, verify results, as text and optionally JSON.
 *
 * What is counted.  "Requests" are the SETs and GETs the run issues (--requests bounds
 * them).  A WAIT that --wait appends after each SET is a request of its own on the wire but
 * is reported apart (its own count, rate and latency) and not counted in "requests", so a
 * sync-mode row and an async row at the same --requests do the same number of writes.  The
 * "all" latency row covers every reply, WAITs included.  Rates divide by the time from the
 * start (all connections up) to the last reply.
 *
 * --rate caps the closed loop: SETs and GETs are issued at no more than the given rate (see
 * client.c), and the report states that target next to the rate achieved.
 *
 * Exit status: 0 when the run completed cleanly; 1 when a connection failed (refused, reset,
 * closed, unparseable reply stream), the server stalled, a reply had the wrong type for its
 * command, or --verify found a failure; 2 for bad options.  Error replies (-ERR ...) are
 * counted and reported but do not by themselves fail the run: a server out of memory that
 * answers errors is a result worth measuring.
 */
#include "bench/lg.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const lg_cmd_names[LG_NCMD] = {"SET", "GET", "WAIT"};

static struct lg_shared *lg_sig_shared;

static void lg_usage(FILE *f)
{
    fprintf(f, "usage: ringkv-bench [options]\n"
               "  --host H            server address (127.0.0.1)\n"
               "  --port P            server port (6379)\n"
               "  --clients N         connections in all (50)\n"
               "  --threads T         threads, each with its own io_uring (1)\n"
               "  --pipeline P        requests in flight per connection (1)\n"
               "  --requests N        SET+GET requests in all (100000; unbounded with --duration)\n"
               "  --duration S        stop issuing after S seconds\n"
               "  --rate R            at most R SET+GET requests/s in all (0: no limit)\n"
               "  --keyspace K        keys key:000000000000 .. K-1 (100000)\n"
               "  --key-dist D        uniform | zipf:THETA, 0 < THETA < 1 (uniform)\n"
               "  --value-size B      value bytes (32)\n"
               "  --ratio S:G         SET:GET weights (1:0, SETs only; 1:9 is 10%% SETs)\n"
               "  --command C         set (1:0) | get (0:1) | mix (1:9)\n"
               "  --protocol P        resp | line (resp; line sends SET and GET only)\n"
               "  --wait N            send WAIT N 0 after each SET (resp only)\n"
               "  --seed S            seed of keys and values (1)\n"
               "  --verify            check every GET against the value this seed sets\n"
               "  --json FILE         write the results as JSON (- for stdout)\n"
               "  --quiet             no progress line; a short summary\n"
               "  --help              this text\n"
               "Exit status: 0 ok; 1 connection failure, stall, wrong reply type or verify\n"
               "failure; 2 bad options.\n");
}

static void lg_die_usage(const char *opt, const char *arg)
{
    fprintf(stderr, "ringkv-bench: bad value for --%s: '%s' (see --help)\n", opt, arg);
    exit(2);
}

static uint64_t lg_opt_u64(const char *opt, const char *arg, uint64_t lo, uint64_t hi)
{
    char *end;
    errno = 0;
    if (arg[0] < '0' || arg[0] > '9')
        lg_die_usage(opt, arg);
    unsigned long long v = strtoull(arg, &end, 10);
    if (errno || *end || v < lo || v > hi)
        lg_die_usage(opt, arg);
    return v;
}

static double lg_opt_double(const char *opt, const char *arg, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(arg, &end);
    if (errno || end == arg || *end || !(v >= lo && v <= hi))
        lg_die_usage(opt, arg);
    return v;
}

static void lg_opt_ratio(struct lg_config *cfg, const char *arg)
{
    const char *colon = strchr(arg, ':');
    if (!colon)
        lg_die_usage("ratio", arg);
    char a[32];
    size_t n = (size_t)(colon - arg);
    if (n == 0 || n >= sizeof(a))
        lg_die_usage("ratio", arg);
    memcpy(a, arg, n);
    a[n] = 0;
    cfg->ratio_set = (uint32_t)lg_opt_u64("ratio", a, 0, 1000000);
    cfg->ratio_get = (uint32_t)lg_opt_u64("ratio", colon + 1, 0, 1000000);
    if (cfg->ratio_set + cfg->ratio_get == 0)
        lg_die_usage("ratio", arg);
}

enum {
    OPT_HOST = 256,
    OPT_PORT,
    OPT_CLIENTS,
    OPT_THREADS,
    OPT_PIPELINE,
    OPT_REQUESTS,
    OPT_DURATION,
    OPT_RATE,
    OPT_KEYSPACE,
    OPT_KEYDIST,
    OPT_VALUESIZE,
    OPT_RATIO,
    OPT_COMMAND,
    OPT_PROTOCOL,
    OPT_WAIT,
    OPT_SEED,
    OPT_VERIFY,
    OPT_JSON,
    OPT_QUIET,
    OPT_HELP,
    OPT_SELFTEST,
};

static const struct option lg_options[] = {
    {"host", required_argument, NULL, OPT_HOST},
    {"port", required_argument, NULL, OPT_PORT},
    {"clients", required_argument, NULL, OPT_CLIENTS},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"pipeline", required_argument, NULL, OPT_PIPELINE},
    {"requests", required_argument, NULL, OPT_REQUESTS},
    {"duration", required_argument, NULL, OPT_DURATION},
    {"rate", required_argument, NULL, OPT_RATE},
    {"keyspace", required_argument, NULL, OPT_KEYSPACE},
    {"key-dist", required_argument, NULL, OPT_KEYDIST},
    {"value-size", required_argument, NULL, OPT_VALUESIZE},
    {"ratio", required_argument, NULL, OPT_RATIO},
    {"command", required_argument, NULL, OPT_COMMAND},
    {"protocol", required_argument, NULL, OPT_PROTOCOL},
    {"wait", required_argument, NULL, OPT_WAIT},
    {"seed", required_argument, NULL, OPT_SEED},
    {"verify", no_argument, NULL, OPT_VERIFY},
    {"json", required_argument, NULL, OPT_JSON},
    {"quiet", no_argument, NULL, OPT_QUIET},
    {"help", no_argument, NULL, OPT_HELP},
    {"selftest", no_argument, NULL, OPT_SELFTEST},
    {NULL, 0, NULL, 0},
};

/* Fills cfg; returns 1 when --selftest was asked for. */
static int lg_parse_options(int argc, char **argv, struct lg_config *cfg)
{
    bool requests_set = false;
    int opt, selftest = 0;
    *cfg = (struct lg_config){
        .host = "127.0.0.1",
        .port = 6379,
        .clients = 50,
        .threads = 1,
        .pipeline = 1,
        .requests = 100000,
        .keyspace = 100000,
        .value_size = 32,
        .ratio_set = 1,
        .ratio_get = 0,
        .protocol = LG_RESP,
        .seed = 1,
        .wait_n = -1,
    };
    while ((opt = getopt_long(argc, argv, "", lg_options, NULL)) != -1) {
        /* lg_options lists the options in the order of their codes. */
        const char *name =
            opt >= OPT_HOST && opt <= OPT_SELFTEST ? lg_options[opt - OPT_HOST].name : "?";
        switch (opt) {
        case OPT_HOST:
            cfg->host = optarg;
            break;
        case OPT_PORT:
            cfg->port = (int)lg_opt_u64(name, optarg, 1, 65535);
            break;
        case OPT_CLIENTS:
            cfg->clients = (unsigned)lg_opt_u64(name, optarg, 1, 100000);
            break;
        case OPT_THREADS:
            cfg->threads = (unsigned)lg_opt_u64(name, optarg, 1, 1024);
            break;
        case OPT_PIPELINE:
            cfg->pipeline = (unsigned)lg_opt_u64(name, optarg, 1, 100000);
            break;
        case OPT_REQUESTS:
            cfg->requests = lg_opt_u64(name, optarg, 1, UINT64_MAX / 2);
            requests_set = true;
            break;
        case OPT_DURATION:
            cfg->duration = lg_opt_double(name, optarg, 0.001, 1e7);
            break;
        case OPT_RATE:
            cfg->rate = lg_opt_double(name, optarg, 0, 1e12);
            break;
        case OPT_KEYSPACE:
            cfg->keyspace = lg_opt_u64(name, optarg, 1, LG_KEYSPACE_MAX);
            break;
        case OPT_KEYDIST:
            if (strcmp(optarg, "uniform") == 0)
                cfg->zipf_theta = 0.0;
            else if (strncmp(optarg, "zipf:", 5) == 0)
                cfg->zipf_theta = lg_opt_double(name, optarg + 5, 1e-9, 0.999999);
            else
                lg_die_usage(name, optarg);
            break;
        case OPT_VALUESIZE:
            cfg->value_size = (uint32_t)lg_opt_u64(name, optarg, 0, 256u << 20);
            break;
        case OPT_RATIO:
            lg_opt_ratio(cfg, optarg);
            break;
        case OPT_COMMAND:
            if (strcmp(optarg, "set") == 0)
                lg_opt_ratio(cfg, "1:0");
            else if (strcmp(optarg, "get") == 0)
                lg_opt_ratio(cfg, "0:1");
            else if (strcmp(optarg, "mix") == 0)
                lg_opt_ratio(cfg, "1:9");
            else
                lg_die_usage(name, optarg);
            break;
        case OPT_PROTOCOL:
            if (strcmp(optarg, "resp") == 0)
                cfg->protocol = LG_RESP;
            else if (strcmp(optarg, "line") == 0)
                cfg->protocol = LG_LINE;
            else
                lg_die_usage(name, optarg);
            break;
        case OPT_WAIT:
            cfg->wait_n = (int)lg_opt_u64(name, optarg, 0, 1000000);
            break;
        case OPT_SEED:
            cfg->seed = lg_opt_u64(name, optarg, 0, UINT64_MAX);
            break;
        case OPT_VERIFY:
            cfg->verify = true;
            break;
        case OPT_JSON:
            cfg->json_path = optarg;
            break;
        case OPT_QUIET:
            cfg->quiet = true;
            break;
        case OPT_HELP:
            lg_usage(stdout);
            exit(0);
        case OPT_SELFTEST:
            selftest = 1;
            break;
        default:
            lg_usage(stderr);
            exit(2);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ringkv-bench: unexpected argument '%s' (see --help)\n", argv[optind]);
        exit(2);
    }
    if (cfg->duration > 0 && !requests_set)
        cfg->requests = 0;
    if (cfg->threads > cfg->clients) {
        fprintf(stderr, "ringkv-bench: --threads (%u) exceeds --clients (%u)\n", cfg->threads,
                cfg->clients);
        exit(2);
    }
    if (cfg->protocol == LG_LINE && cfg->wait_n >= 0) {
        fprintf(stderr, "ringkv-bench: --wait needs --protocol resp\n");
        exit(2);
    }
    if (cfg->protocol == LG_LINE && cfg->value_size == 0) {
        fprintf(stderr, "ringkv-bench: the line protocol cannot carry an empty value\n");
        exit(2);
    }
    return selftest;
}

static void lg_on_sigint(int sig)
{
    (void)sig;
    if (lg_sig_shared)
        atomic_store(&lg_sig_shared->stop, 1);
}

static void lg_resolve(struct lg_shared *sh, const struct lg_config *cfg)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", cfg->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai;
    int ret = getaddrinfo(cfg->host, port, &hints, &ai);
    if (ret != 0) {
        fprintf(stderr, "ringkv-bench: %s: %s\n", cfg->host, gai_strerror(ret));
        exit(1);
    }
    memcpy(&sh->addr, ai->ai_addr, ai->ai_addrlen);
    sh->addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
}

/* ---- results ---- */

struct lg_result {
    struct lg_stats st; /* summed over threads */
    struct hist all;    /* every reply */
    uint64_t requests;  /* SET+GET replies */
    double seconds;
    char ring_mode[48];
    char first_error[160];
    bool failed;
};

static double lg_us(uint64_t ns)
{
    return (double)ns / 1000.0;
}

static double lg_rate(uint64_t n, double s)
{
    return s > 0 ? (double)n / s : 0.0;
}

static void lg_collect(struct lg_result *res, struct lg_thread *th, unsigned n)
{
    memset(res, 0, sizeof(*res));
    hist_init(&res->all);
    for (int c = 0; c < LG_NCMD; c++)
        hist_init(&res->st.cmd[c].lat);
    uint64_t start = UINT64_MAX, end = 0;
    for (unsigned i = 0; i < n; i++) {
        struct lg_stats *s = &th[i].st;
        for (int c = 0; c < LG_NCMD; c++) {
            res->st.cmd[c].count += s->cmd[c].count;
            res->st.cmd[c].errors += s->cmd[c].errors;
            res->st.cmd[c].mismatches += s->cmd[c].mismatches;
            hist_merge(&res->st.cmd[c].lat, &s->cmd[c].lat);
            hist_merge(&res->all, &s->cmd[c].lat);
        }
        res->st.conn_errors += s->conn_errors;
        res->st.stalls += s->stalls;
        res->st.wait_short += s->wait_short;
        res->st.verify_checked += s->verify_checked;
        res->st.verify_hits += s->verify_hits;
        res->st.verify_nils += s->verify_nils;
        res->st.verify_failures += s->verify_failures;
        if (th[i].start_ns < start)
            start = th[i].start_ns;
        if (th[i].end_ns > end)
            end = th[i].end_ns;
        if (!res->first_error[0] && th[i].first_error[0])
            memcpy(res->first_error, th[i].first_error, sizeof(res->first_error));
    }
    memcpy(res->ring_mode, th[0].ring_mode, sizeof(res->ring_mode));
    res->requests = res->st.cmd[LG_SET].count + res->st.cmd[LG_GET].count;
    res->seconds = end > start ? (double)(end - start) / 1e9 : 0.0;
    uint64_t mismatches = 0;
    for (int c = 0; c < LG_NCMD; c++)
        mismatches += res->st.cmd[c].mismatches;
    res->failed = res->st.conn_errors || res->st.stalls || mismatches || res->st.verify_failures;
}

static void lg_print_row(const char *name, const struct hist *h, uint64_t errors, double secs)
{
    printf("%-5s %11llu %12.1f %9.1f %9.1f %9.1f %9.1f %9.1f %8llu\n", name,
           (unsigned long long)h->count, lg_rate(h->count, secs), lg_us(hist_quantile(h, 0.5)),
           lg_us(hist_quantile(h, 0.9)), lg_us(hist_quantile(h, 0.99)),
           lg_us(hist_quantile(h, 0.999)), lg_us(h->max), (unsigned long long)errors);
}

static void lg_report(const struct lg_config *cfg, const struct lg_result *r)
{
    const struct lg_stats *s = &r->st;
    if (cfg->quiet) {
        for (int c = 0; c < LG_NCMD; c++) {
            const struct lg_cmd_stats *cs = &s->cmd[c];
            if (!cs->count)
                continue;
            printf("%s: %.2f requests per second, p50=%.1f us, p99=%.1f us", lg_cmd_names[c],
                   lg_rate(cs->count, r->seconds), lg_us(hist_quantile(&cs->lat, 0.5)),
                   lg_us(hist_quantile(&cs->lat, 0.99)));
            if (cs->errors || cs->mismatches)
                printf(", %llu errors, %llu wrong replies", (unsigned long long)cs->errors,
                       (unsigned long long)cs->mismatches);
            printf("\n");
        }
        if (cfg->rate > 0)
            printf("target: %.10g requests per second in all\n", cfg->rate);
    } else {
        printf("ringkv-bench %s:%d: %u clients, %u threads, pipeline %u, %s, ring %s\n", cfg->host,
               cfg->port, cfg->clients, cfg->threads, cfg->pipeline,
               cfg->protocol == LG_RESP ? "resp" : "line", r->ring_mode);
        printf("keyspace %llu ", (unsigned long long)cfg->keyspace);
        if (cfg->zipf_theta > 0)
            printf("zipf:%g", cfg->zipf_theta);
        else
            printf("uniform");
        printf(", value %u B, ratio %u:%u, seed %llu", cfg->value_size, cfg->ratio_set,
               cfg->ratio_get, (unsigned long long)cfg->seed);
        if (cfg->wait_n >= 0)
            printf(", WAIT %d 0 after each SET", cfg->wait_n);
        printf("\n%llu requests in %.3f s: %.1f requests/s", (unsigned long long)r->requests,
               r->seconds, lg_rate(r->requests, r->seconds));
        if (cfg->rate > 0)
            printf(" (target %.10g)", cfg->rate);
        printf("\n\n");
        printf("%-5s %11s %12s %9s %9s %9s %9s %9s %8s\n", "cmd", "replies", "rps", "p50 us",
               "p90 us", "p99 us", "p99.9 us", "max us", "errors");
        for (int c = 0; c < LG_NCMD; c++)
            if (s->cmd[c].count)
                lg_print_row(lg_cmd_names[c], &s->cmd[c].lat,
                             s->cmd[c].errors + s->cmd[c].mismatches, r->seconds);
        lg_print_row("all", &r->all, 0, r->seconds);
        if (s->wait_short)
            printf("WAIT replies below %d: %llu\n", cfg->wait_n, (unsigned long long)s->wait_short);
    }
    for (int c = 0; c < LG_NCMD; c++)
        if (s->cmd[c].mismatches)
            fprintf(stderr, "ringkv-bench: %llu %s replies of the wrong type\n",
                    (unsigned long long)s->cmd[c].mismatches, lg_cmd_names[c]);
    if (cfg->verify)
        printf("verify: %llu GETs checked, %llu values, %llu nil, %llu failures\n",
               (unsigned long long)s->verify_checked, (unsigned long long)s->verify_hits,
               (unsigned long long)s->verify_nils, (unsigned long long)s->verify_failures);
    if (s->conn_errors || s->stalls)
        fprintf(stderr, "ringkv-bench: %llu connection errors%s (first: %s)\n",
                (unsigned long long)s->conn_errors, s->stalls ? ", server stalled" : "",
                r->first_error[0] ? r->first_error : "?");
}

static void lg_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void lg_json_lat(FILE *f, const struct hist *h)
{
    fprintf(f,
            "{\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"p99.9\": %.3f, \"max\": %.3f, "
            "\"min\": %.3f, \"mean\": %.3f}",
            lg_us(hist_quantile(h, 0.5)), lg_us(hist_quantile(h, 0.9)),
            lg_us(hist_quantile(h, 0.99)), lg_us(hist_quantile(h, 0.999)), lg_us(h->max),
            lg_us(h->count ? h->min : 0), hist_mean(h) / 1000.0);
}

static int lg_write_json(const struct lg_config *cfg, const struct lg_result *r)
{
    bool to_stdout = strcmp(cfg->json_path, "-") == 0;
    FILE *f = to_stdout ? stdout : fopen(cfg->json_path, "w");
    if (!f) {
        fprintf(stderr, "ringkv-bench: %s: %s\n", cfg->json_path, strerror(errno));
        return -1;
    }
    const struct lg_stats *s = &r->st;
    fprintf(f, "{\n  \"tool\": \"ringkv-bench\",\n  \"config\": {\"host\": ");
    lg_json_str(f, cfg->host);
    fprintf(f, ", \"port\": %d, \"clients\": %u, \"threads\": %u, \"pipeline\": %u, ", cfg->port,
            cfg->clients, cfg->threads, cfg->pipeline);
    if (cfg->requests)
        fprintf(f, "\"requests\": %llu, ", (unsigned long long)cfg->requests);
    else
        fprintf(f, "\"requests\": null, ");
    fprintf(f, "\"duration\": %.3f, \"keyspace\": %llu, \"key_dist\": ", cfg->duration,
            (unsigned long long)cfg->keyspace);
    if (cfg->zipf_theta > 0)
        fprintf(f, "\"zipf\", \"zipf_theta\": %.6f", cfg->zipf_theta);
    else
        fprintf(f, "\"uniform\"");
    fprintf(f,
            ", \"value_size\": %u, \"ratio\": {\"set\": %u, \"get\": %u}, \"protocol\": \"%s\", "
            "\"seed\": %llu, \"verify\": %s, \"wait\": ",
            cfg->value_size, cfg->ratio_set, cfg->ratio_get,
            cfg->protocol == LG_RESP ? "resp" : "line", (unsigned long long)cfg->seed,
            cfg->verify ? "true" : "false");
    if (cfg->wait_n >= 0)
        fprintf(f, "%d", cfg->wait_n);
    else
        fprintf(f, "null");
    fprintf(f, ", \"ring\": ");
    lg_json_str(f, r->ring_mode);
    fprintf(f,
            "},\n  \"duration_s\": %.6f,\n  \"requests\": %llu,\n  \"rps\": %.2f,\n"
            "  \"rate_target\": %.10g,\n",
            r->seconds, (unsigned long long)r->requests, lg_rate(r->requests, r->seconds),
            cfg->rate);
    fprintf(f, "  \"commands\": {");
    bool first = true;
    for (int c = 0; c < LG_NCMD; c++) {
        const struct lg_cmd_stats *cs = &s->cmd[c];
        if (!cs->count)
            continue;
        fprintf(f,
                "%s\n    \"%s\": {\"count\": %llu, \"rps\": %.2f, \"errors\": %llu, "
                "\"wrong_type\": %llu, ",
                first ? "" : ",", lg_cmd_names[c], (unsigned long long)cs->count,
                lg_rate(cs->count, r->seconds), (unsigned long long)cs->errors,
                (unsigned long long)cs->mismatches);
        if (c == LG_WAIT)
            fprintf(f, "\"below_n\": %llu, ", (unsigned long long)s->wait_short);
        fprintf(f, "\"latency_us\": ");
        lg_json_lat(f, &cs->lat);
        fprintf(f, "}");
        first = false;
    }
    fprintf(f, "\n  },\n  \"all\": {\"count\": %llu, \"latency_us\": ",
            (unsigned long long)r->all.count);
    lg_json_lat(f, &r->all);
    fprintf(f, "},\n  \"errors\": {\"connection\": %llu, \"stalled\": %s, \"first\": ",
            (unsigned long long)s->conn_errors, s->stalls ? "true" : "false");
    lg_json_str(f, r->first_error);
    fprintf(f,
            "},\n  \"verify\": {\"enabled\": %s, \"checked\": %llu, \"values\": %llu, "
            "\"nil\": %llu, \"failures\": %llu},\n  \"ok\": %s\n}\n",
            cfg->verify ? "true" : "false", (unsigned long long)s->verify_checked,
            (unsigned long long)s->verify_hits, (unsigned long long)s->verify_nils,
            (unsigned long long)s->verify_failures, r->failed ? "false" : "true");
    if (to_stdout)
        return fflush(f) == 0 ? 0 : -1;
    return fclose(f) == 0 ? 0 : -1;
}

/* ---- running ---- */

static void lg_sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Wait for the threads, printing a progress line each second on a terminal. */
static void lg_watch(const struct lg_config *cfg, struct lg_thread *th, unsigned n)
{
    bool tty = !cfg->quiet && isatty(1);
    uint64_t t0 = lg_now_ns(), next = t0 + 1000000000ull, prev_done = 0, prev_t = t0;
    bool printed = false;
    for (;;) {
        unsigned running = 0;
        for (unsigned i = 0; i < n; i++)
            running += !atomic_load(&th[i].finished);
        if (!running)
            break;
        lg_sleep_ms(50);
        uint64_t now = lg_now_ns();
        if (!tty || now < next)
            continue;
        uint64_t done = 0;
        for (unsigned i = 0; i < n; i++)
            done += atomic_load_explicit(&th[i].done, memory_order_relaxed);
        printf("\r[%4.0fs] %llu requests, %.0f rps now, %.0f rps overall\033[K",
               (double)(now - t0) / 1e9, (unsigned long long)done,
               (double)(done - prev_done) * 1e9 / (double)(now - prev_t),
               (double)done * 1e9 / (double)(now - t0));
        fflush(stdout);
        printed = true;
        prev_done = done;
        prev_t = now;
        next += 1000000000ull;
        if (next < now)
            next = now + 1000000000ull;
    }
    if (printed) {
        printf("\r\033[K");
        fflush(stdout);
    }
}

int main(int argc, char **argv)
{
    struct lg_config cfg;
    if (lg_parse_options(argc, argv, &cfg))
        return lg_selftest() ? 1 : 0;

    static struct lg_shared sh;
    sh.cfg = &cfg;
    lg_resolve(&sh, &cfg);
    lg_keygen_init(&sh.keygen, cfg.keyspace, cfg.zipf_theta, cfg.seed);
    lg_values_init(&sh.values, cfg.value_size, cfg.seed);
    if (cfg.verify) {
        size_t words = (size_t)((cfg.keyspace + 63) / 64);
        sh.acked = calloc(words, sizeof(*sh.acked));
        if (!sh.acked) {
            fprintf(stderr, "ringkv-bench: no memory for the verify bitmap (%zu words)\n", words);
            return 1;
        }
    }
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, cfg.threads + 1);
    sh.start = &start;

    lg_sig_shared = &sh;
    struct sigaction sa = {.sa_handler = lg_on_sigint, .sa_flags = SA_RESETHAND};
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct lg_thread *th = calloc(cfg.threads, sizeof(*th));
    if (!th) {
        fprintf(stderr, "ringkv-bench: out of memory\n");
        return 1;
    }
    for (unsigned i = 0; i < cfg.threads; i++) {
        th[i].sh = &sh;
        th[i].id = i;
        th[i].nconns = cfg.clients / cfg.threads + (i < cfg.clients % cfg.threads);
        if (cfg.requests)
            th[i].quota = cfg.requests / cfg.threads + (i < cfg.requests % cfg.threads);
        else
            th[i].quota = UINT64_MAX;
        int ret = pthread_create(&th[i].tid, NULL, lg_thread_main, &th[i]);
        if (ret) {
            fprintf(stderr, "ringkv-bench: pthread_create: %s\n", strerror(ret));
            return 1;
        }
        char name[16];
        snprintf(name, sizeof(name), "lg-%u", i);
        pthread_setname_np(th[i].tid, name);
    }
    pthread_barrier_wait(&start);
    lg_watch(&cfg, th, cfg.threads);
    for (unsigned i = 0; i < cfg.threads; i++)
        pthread_join(th[i].tid, NULL);

    static struct lg_result res;
    lg_collect(&res, th, cfg.threads);
    lg_report(&cfg, &res);
    int rc = res.failed ? 1 : 0;
    if (cfg.json_path && lg_write_json(&cfg, &res) < 0)
        rc = 1;
    free(th);
    free(sh.acked);
    lg_values_free(&sh.values);
    pthread_barrier_destroy(&start);
    return rc;
}
