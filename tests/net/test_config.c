/*
 * Tests for net/config.c: defaults, value parsing (integers, memory sizes with units, enums,
 * the accepted-only-as "no" options), the command line and the config file with their exact
 * error lines, and CONFIG GET/SET with the exact reply bytes Redis 7.0 sends.
 *
 * Start-up errors go to stderr; each test that checks one points fd 2 at a temporary file
 * for the call and reads the line back.  --help and --version exit, so they run in a child.
 */
#include <criterion/criterion.h>

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/util.h"
#include "net/config.h"
#include "net/reply.h"

/* ---- helpers --------------------------------------------------------------------------- */

static void setup(void)
{
    config_defaults();
}

TestSuite(config, .init = setup);

#define ARGV(...) ((char *[]){"ringkv-server", __VA_ARGS__, NULL})
#define ARGC(...) ((int)(sizeof((char *[]){"ringkv-server", __VA_ARGS__}) / sizeof(char *)))
/* config_from_args on a literal argument list */
#define FROM_ARGS(...) config_from_args(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__))

static char errbuf[4096];
static int saved_fd2 = -1;
static FILE *errfile;

static void capture_begin(void)
{
    fflush(stderr);
    errfile = tmpfile();
    cr_assert_not_null(errfile);
    saved_fd2 = dup(2);
    dup2(fileno(errfile), 2);
}

/* Stop capturing; returns what was written to stderr. */
static const char *capture_end(void)
{
    fflush(stderr);
    dup2(saved_fd2, 2);
    close(saved_fd2);
    rewind(errfile);
    size_t n = fread(errbuf, 1, sizeof(errbuf) - 1, errfile);
    errbuf[n] = '\0';
    fclose(errfile);
    return errbuf;
}

/* Run config_from_args with stderr captured; *err gets what it printed. */
static int args_err(int argc, char **argv, const char **err)
{
    capture_begin();
    int rc = config_from_args(argc, argv);
    *err = capture_end();
    return rc;
}
#define ARGS_ERR(errp, ...) args_err(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), errp)

/* Expect the argument list to fail with exactly this stderr line (without the newline). */
#define EXPECT_ARGS_FAIL(line, ...)                                                                \
    do {                                                                                           \
        const char *err_;                                                                          \
        cr_assert_eq(ARGS_ERR(&err_, __VA_ARGS__), -1);                                            \
        cr_assert_str_eq(err_, line "\n");                                                         \
    } while (0)

static char tmpdir[] = "/tmp/rk_test_config.XXXXXX";
static char conf_path[PATH_MAX];

/* Write text to a fresh config file; returns its path. */
static const char *write_conf(const char *text)
{
    if (strstr(tmpdir, "XXXXXX"))
        cr_assert_not_null(mkdtemp(tmpdir));
    else
        mkdir(tmpdir, 0700); /* again, if an earlier test removed it */
    snprintf(conf_path, sizeof(conf_path), "%s/ringkv.conf", tmpdir);
    FILE *fp = fopen(conf_path, "w");
    cr_assert_not_null(fp);
    fputs(text, fp);
    fclose(fp);
    return conf_path;
}

static void remove_conf(void)
{
    unlink(conf_path);
    rmdir(tmpdir);
}

static int load_err(const char *path, const char **err)
{
    capture_begin();
    int rc = config_load_file(path);
    *err = capture_end();
    return rc;
}

/* CONFIG GET or SET with the arguments after the subcommand, as C strings; returns the RESP
 * reply, NUL-terminated, to compare byte for byte. */
static struct buf out;

static const char *run_cmd(void (*fn)(struct reply *, int, const struct arg *), int argc,
                           const char *const *words)
{
    struct arg a[32];
    cr_assert_leq(argc, 32);
    for (int i = 0; i < argc; i++) {
        a[i].p = words[i];
        a[i].len = strlen(words[i]);
    }
    struct reply r;
    buf_free(&out);
    out = (struct buf){0};
    reply_init(&r, &out, PROTO_RESP, 0);
    fn(&r, argc, a);
    buf_putc(&out, '\0');
    out.len--;
    return out.p;
}
#define CMD(fn, ...)                                                                               \
    run_cmd(fn, (int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(char *)),                     \
            (const char *const[]){__VA_ARGS__})
#define GET(...) CMD(config_cmd_get, __VA_ARGS__)
#define SET(...) CMD(config_cmd_set, __VA_ARGS__)

static const char *set_failed(const char *name, const char *why)
{
    static char s[512];
    snprintf(s, sizeof(s), "-ERR CONFIG SET failed (possibly related to argument '%s') - %s\r\n",
             name, why);
    return s;
}

/* ---- defaults -------------------------------------------------------------------------- */

Test(config, defaults)
{
    cfg.port = 1;
    rk_log_level = RK_LOG_DEBUG;
    config_defaults();
    cr_assert_eq(cfg.port, 6379);
    cr_assert_str_eq(cfg.bind, "127.0.0.1");
    cr_assert_eq(cfg.maxclients, 10000);
    cr_assert_str_eq(cfg.requirepass, "");
    cr_assert_eq(cfg.loglevel, RK_LOG_NOTICE);
    cr_assert_eq(rk_log_level, RK_LOG_NOTICE);
    cr_assert_str_eq(cfg.logfile, "");
    cr_assert_eq(cfg.timeout, 0);
    cr_assert_eq(cfg.threads, (int)sysconf(_SC_NPROCESSORS_ONLN));
    cr_assert_eq(cfg.shards, 64);
    cr_assert_eq(cfg.proto_max_bulk_len, 512LL * 1024 * 1024);
    cr_assert_eq(cfg.client_query_buffer_limit, 1024LL * 1024 * 1024);
    cr_assert_str_eq(cfg.pidfile, "");
    cr_assert_str_eq(cfg.config_file, "");
    cr_assert_eq(cfg_maxclients(), 10000);
    cr_assert_str_eq(cfg_requirepass(), "");
    cr_assert_eq(cfg_max_bulk(), 512LL * 1024 * 1024);
    cr_assert_eq(cfg_qbuf_limit(), 1024LL * 1024 * 1024);
    cr_assert_eq(cfg_timeout(), 0);
}

Test(config, no_arguments_keeps_defaults)
{
    char *argv[] = {"ringkv-server", NULL};
    cr_assert_eq(config_from_args(1, argv), 0);
    cr_assert_eq(cfg.port, 6379);
    cr_assert_str_eq(cfg.bind, "127.0.0.1");
}

/* ---- integers -------------------------------------------------------------------------- */

Test(config, int_bounds)
{
    cr_assert_eq(FROM_ARGS("--port", "0"), 0);
    cr_assert_eq(cfg.port, 0);
    cr_assert_eq(FROM_ARGS("--port", "65535"), 0);
    cr_assert_eq(cfg.port, 65535);
    cr_assert_eq(FROM_ARGS("--maxclients", "1", "--timeout", "2147483647"), 0);
    cr_assert_eq(cfg.maxclients, 1);
    cr_assert_eq(cfg.timeout, 2147483647);
    cr_assert_eq(FROM_ARGS("--threads", "1024"), 0);
    cr_assert_eq(cfg.threads, 1024);
    cr_assert_eq(FROM_ARGS("--threads", "1"), 0);
    cr_assert_eq(cfg.threads, 1);
}

Test(config, int_bad_values)
{
    EXPECT_ARGS_FAIL("ringkv-server: bad value 'abc' for 'port': must be an integer between 0 "
                     "and 65535",
                     "--port", "abc");
    EXPECT_ARGS_FAIL("ringkv-server: bad value '65536' for 'port': must be an integer between 0 "
                     "and 65535",
                     "--port", "65536");
    EXPECT_ARGS_FAIL("ringkv-server: bad value '-1' for 'port': must be an integer between 0 "
                     "and 65535",
                     "--port", "-1");
    /* Redis's strictness: no leading zeros, no sign, no spaces, not empty */
    EXPECT_ARGS_FAIL("ringkv-server: bad value '080' for 'port': must be an integer between 0 "
                     "and 65535",
                     "--port", "080");
    EXPECT_ARGS_FAIL("ringkv-server: bad value '+1' for 'port': must be an integer between 0 "
                     "and 65535",
                     "--port", "+1");
    EXPECT_ARGS_FAIL("ringkv-server: bad value '' for 'port': must be an integer between 0 "
                     "and 65535",
                     "--port", "");
    EXPECT_ARGS_FAIL("ringkv-server: bad value '0' for 'maxclients': must be an integer between "
                     "1 and 4294967295",
                     "--maxclients", "0");
    EXPECT_ARGS_FAIL("ringkv-server: bad value '-1' for 'timeout': must be an integer between 0 "
                     "and 2147483647",
                     "--timeout", "-1");
    EXPECT_ARGS_FAIL("ringkv-server: bad value '1025' for 'threads': must be an integer between "
                     "1 and 1024",
                     "--threads", "1025");
    EXPECT_ARGS_FAIL("ringkv-server: bad value '0' for 'threads': must be an integer between 1 "
                     "and 1024",
                     "--threads", "0");
    cr_assert_eq(cfg.port, 6379);
    cr_assert_eq(cfg.maxclients, 10000);
}

Test(config, shards_power_of_two)
{
    cr_assert_eq(FROM_ARGS("--shards", "1"), 0);
    cr_assert_eq(cfg.shards, 1);
    cr_assert_eq(FROM_ARGS("--shards", "65536"), 0);
    cr_assert_eq(cfg.shards, 65536);
    cr_assert_eq(FROM_ARGS("--shards", "256"), 0);
    cr_assert_eq(cfg.shards, 256);
    const char *bad[] = {"3", "0", "131072", "96", "-64", "x"};
    for (size_t i = 0; i < RK_ARRAY_LEN(bad); i++) {
        char *argv[] = {"ringkv-server", "--shards", (char *)bad[i], NULL};
        const char *err;
        char want[256];
        cr_assert_eq(args_err(3, argv, &err), -1, "shards %s accepted", bad[i]);
        snprintf(want, sizeof(want),
                 "ringkv-server: bad value '%s' for 'shards': shards must be a power of two "
                 "between 1 and 65536\n",
                 bad[i]);
        cr_assert_str_eq(err, want);
    }
    cr_assert_eq(cfg.shards, 256);
}

/* ---- memory sizes ---------------------------------------------------------------------- */

Test(config, memory_units)
{
    struct {
        const char *text;
        long long bytes;
    } ok[] = {
        {"1mb", 1LL << 20},
        {"1MB", 1LL << 20},
        {"2m", 2000000},
        {"2M", 2000000},
        {"1048576", 1LL << 20},
        {"1048576b", 1LL << 20},
        {"1024kb", 1LL << 20},
        {"1049k", 1049000},
        {"1g", 1000000000},
        {"1gb", 1LL << 30},
        {"3Gb", 3LL << 30},
        {"0002mb", 2LL << 20},
        {"9223372036854775807", LLONG_MAX},
    };
    for (size_t i = 0; i < RK_ARRAY_LEN(ok); i++) {
        char *argv[] = {"ringkv-server",    "--proto-max-bulk-len",
                        (char *)ok[i].text, "--client-query-buffer-limit",
                        (char *)ok[i].text, NULL};
        cr_assert_eq(config_from_args(5, argv), 0, "%s refused", ok[i].text);
        cr_assert_eq(cfg.proto_max_bulk_len, ok[i].bytes, "%s", ok[i].text);
        cr_assert_eq(cfg.client_query_buffer_limit, ok[i].bytes, "%s", ok[i].text);
    }
}

Test(config, memory_bad_values)
{
    const char *bad[] = {"1k",
                         "1kb",
                         "1048575",
                         "0",
                         "1.5mb",
                         "-1mb",
                         "+2mb",
                         " 2mb",
                         "2 mb",
                         "2mib",
                         "2tb",
                         "mb",
                         "",
                         "99999999999999999999",
                         "9999999999gb",
                         "9223372036854775808"};
    for (size_t i = 0; i < RK_ARRAY_LEN(bad); i++) {
        char *argv[] = {"ringkv-server", "--proto-max-bulk-len", (char *)bad[i], NULL};
        const char *err;
        char want[256];
        cr_assert_eq(args_err(3, argv, &err), -1, "'%s' accepted", bad[i]);
        snprintf(want, sizeof(want),
                 "ringkv-server: bad value '%s' for 'proto-max-bulk-len': must be a memory size "
                 "of at least 1mb: bytes, or a number with a unit (k kb m mb g gb)\n",
                 bad[i]);
        cr_assert_str_eq(err, want);
    }
    cr_assert_eq(cfg.proto_max_bulk_len, 512LL << 20);
}

/* ---- enums, strings and the options kept for redis-server command lines ------------------ */

Test(config, loglevel)
{
    const char *names[] = {"debug", "verbose", "notice", "warning"};
    int levels[] = {RK_LOG_DEBUG, RK_LOG_VERBOSE, RK_LOG_NOTICE, RK_LOG_WARNING};
    for (int i = 3; i >= 0; i--) {
        char *argv[] = {"ringkv-server", "--loglevel", (char *)names[i], NULL};
        cr_assert_eq(config_from_args(3, argv), 0);
        cr_assert_eq(cfg.loglevel, levels[i]);
        cr_assert_eq(rk_log_level, levels[i]);
    }
    cr_assert_eq(FROM_ARGS("--loglevel", "WARNING"), 0);
    cr_assert_eq(cfg.loglevel, RK_LOG_WARNING);
    EXPECT_ARGS_FAIL("ringkv-server: bad value 'loud' for 'loglevel': must be one of debug, "
                     "verbose, notice, warning",
                     "--loglevel", "loud");
    cr_assert_eq(rk_log_level, RK_LOG_WARNING);
}

Test(config, strings)
{
    cr_assert_eq(FROM_ARGS("--requirepass", "s3cret", "--logfile", "/var/log/rk.log", "--pidfile",
                           "/run/rk.pid"),
                 0);
    cr_assert_str_eq(cfg_requirepass(), "s3cret");
    cr_assert_str_eq(cfg.logfile, "/var/log/rk.log");
    cr_assert_str_eq(cfg.pidfile, "/run/rk.pid");
    cr_assert_eq(FROM_ARGS("--requirepass", ""), 0);
    cr_assert_str_eq(cfg_requirepass(), "");
    EXPECT_ARGS_FAIL("ringkv-server: option '--requirepass' takes one value, not 2",
                     "--requirepass", "a", "b");
}

Test(config, bind_takes_several_words)
{
    cr_assert_eq(FROM_ARGS("--bind", "127.0.0.1", "::1", "--port", "7000"), 0);
    cr_assert_str_eq(cfg.bind, "127.0.0.1 ::1");
    cr_assert_eq(cfg.port, 7000);
    cr_assert_eq(FROM_ARGS("--bind", "0.0.0.0"), 0);
    cr_assert_str_eq(cfg.bind, "0.0.0.0");
    EXPECT_ARGS_FAIL("ringkv-server: option '--bind' needs a value", "--bind", "--port", "1");
    EXPECT_ARGS_FAIL("ringkv-server: option '--bind' takes at most 16 values, not 17", "--bind",
                     "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14",
                     "15", "16", "17");
    EXPECT_ARGS_FAIL("ringkv-server: bad value '127.0.0.1 ' for 'bind': an address must not be "
                     "empty",
                     "--bind", "127.0.0.1", "");
    cr_assert_str_eq(cfg.bind, "0.0.0.0");
}

Test(config, redis_server_compat_options)
{
    /* the command line the e2e tests give redis-server works unchanged */
    cr_assert_eq(FROM_ARGS("--port", "7001", "--save", "", "--appendonly", "no"), 0);
    cr_assert_eq(cfg.port, 7001);
    cr_assert_eq(FROM_ARGS("--save", "900", "1", "300", "10", "--daemonize", "no"), 0);
    cr_assert_eq(FROM_ARGS("--save", "--databases", "1", "--appendonly", "NO"), 0);
    EXPECT_ARGS_FAIL("ringkv-server: bad value 'yes' for 'daemonize': ringkv does not daemonize "
                     "(run it under a service manager); only 'no' is accepted",
                     "--daemonize", "yes");
    EXPECT_ARGS_FAIL("ringkv-server: bad value 'yes' for 'appendonly': ringkv keeps no "
                     "append-only file; only 'no' is accepted",
                     "--appendonly", "yes");
    EXPECT_ARGS_FAIL("ringkv-server: bad value 'maybe' for 'appendonly': ringkv keeps no "
                     "append-only file; only 'no' is accepted",
                     "--appendonly", "maybe");
    EXPECT_ARGS_FAIL("ringkv-server: bad value '16' for 'databases': ringkv has only database "
                     "0, so databases must be 1",
                     "--databases", "16");
    EXPECT_ARGS_FAIL("ringkv-server: option '--appendonly' needs a value", "--appendonly");
}

/* ---- the command line ------------------------------------------------------------------ */

Test(config, argv_errors)
{
    EXPECT_ARGS_FAIL("ringkv-server: unknown option '--foo'", "--foo", "bar");
    EXPECT_ARGS_FAIL("ringkv-server: unknown option '--'", "--");
    EXPECT_ARGS_FAIL("ringkv-server: unknown option '--proto_max_bulk_len' (did you mean "
                     "'--proto-max-bulk-len'?)",
                     "--proto_max_bulk_len", "1mb");
    EXPECT_ARGS_FAIL("ringkv-server: option '--port' needs a value", "--port");
    EXPECT_ARGS_FAIL("ringkv-server: option '--port' needs a value", "--port", "--threads", "2");
    EXPECT_ARGS_FAIL("ringkv-server: option '--port' takes one value, not 2", "--port", "1", "2");
    /* a second non-option argument is not a second config file */
    EXPECT_ARGS_FAIL("ringkv-server: unexpected argument 'stray': options start with --, and "
                     "only the first argument can be a config file",
                     "/dev/null", "stray");
}

Test(config, argv_names_case_insensitive_and_applied_in_order)
{
    cr_assert_eq(FROM_ARGS("--PORT", "7002", "--MaxClients", "5", "--port", "7003"), 0);
    cr_assert_eq(cfg.port, 7003);
    cr_assert_eq(cfg.maxclients, 5);
}

Test(config, argv_stops_at_first_error)
{
    const char *err;
    cr_assert_eq(ARGS_ERR(&err, "--port", "7004", "--port", "x", "--maxclients", "7"), -1);
    cr_assert_eq(cfg.port, 7004);
    cr_assert_eq(cfg.maxclients, 10000);
}

/* A child that exits through --help or --version skips LeakSanitizer's exit check: it was
 * forked from a threaded runner, where that check warns and can report false leaks. */
static volatile int in_child;
__attribute__((used)) int __lsan_is_turned_off(void)
{
    return in_child;
}

/* Run config_from_args in a child with stdout to a file; returns the exit status. */
static int run_child(char **argv, int argc, char *outtext, size_t cap)
{
    FILE *tf = tmpfile();
    cr_assert_not_null(tf);
    fflush(stdout);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        in_child = 1;
        dup2(fileno(tf), 1);
        config_from_args(argc, argv);
        _exit(99); /* --help/--version must exit by themselves */
    }
    int st;
    waitpid(pid, &st, 0);
    rewind(tf);
    size_t n = fread(outtext, 1, cap - 1, tf);
    outtext[n] = '\0';
    fclose(tf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(config, version)
{
    char text[256];
    char *argv[] = {"ringkv-server", "--version", NULL};
    cr_assert_eq(run_child(argv, 2, text, sizeof(text)), 0);
    cr_assert_str_eq(text, "ringkv-server " RINGKV_VERSION "\n");
    cr_assert_str_eq(RINGKV_VERSION, "0.1.0");
    char *argv2[] = {"ringkv-server", "-v", NULL};
    cr_assert_eq(run_child(argv2, 2, text, sizeof(text)), 0);
    cr_assert_str_eq(text, "ringkv-server 0.1.0\n");
    /* even after other options, and before a bad one is looked at */
    char *argv3[] = {"ringkv-server", "--port", "bad", "--version", NULL};
    cr_assert_eq(run_child(argv3, 4, text, sizeof(text)), 0);
    cr_assert_str_eq(text, "ringkv-server 0.1.0\n");
}

Test(config, help)
{
    static char text[16384];
    char *argv[] = {"ringkv-server", "--help", NULL};
    cr_assert_eq(run_child(argv, 2, text, sizeof(text)), 0);
    cr_assert(!strncmp(text, "Usage: ringkv-server [config-file] [--option value ...]\n", 56), "%s",
              text);
    const char *names[] = {"port",
                           "bind",
                           "maxclients",
                           "requirepass",
                           "loglevel",
                           "logfile",
                           "timeout",
                           "threads",
                           "shards",
                           "proto-max-bulk-len",
                           "client-query-buffer-limit",
                           "pidfile",
                           "daemonize",
                           "save",
                           "appendonly",
                           "databases"};
    const char *prev = text;
    for (size_t i = 0; i < RK_ARRAY_LEN(names); i++) {
        char key[64];
        snprintf(key, sizeof(key), "\n  --%s ", names[i]);
        const char *at = strstr(text, key);
        cr_assert_not_null(at, "no help line for %s", names[i]);
        cr_assert_gt(at, prev - 1, "%s out of table order", names[i]);
        prev = at;
        const char *eol = strchr(at + 1, '\n');
        cr_assert(memmem(at, (size_t)(eol - at), "(default ", 9), "no default for %s", names[i]);
    }
    cr_assert_not_null(strstr(text, "(default 6379)"));
    cr_assert_not_null(strstr(text, "(default 512mb, live)"));
    cr_assert_not_null(strstr(text, "--help, --version"));
    cr_assert_not_null(strstr(text, "\nExample: ringkv-server "));
    cr_assert_not_null(strstr(text, "--save '' --appendonly no"));
    char *argv2[] = {"ringkv-server", "-h", NULL};
    char text2[16384];
    cr_assert_eq(run_child(argv2, 2, text2, sizeof(text2)), 0);
    cr_assert_str_eq(text2, text);
}

/* ---- config file ----------------------------------------------------------------------- */

Test(config, file_then_argv_on_top, .fini = remove_conf)
{
    const char *path = write_conf("# ringkv test config\n"
                                  "\n"
                                  "   # an indented comment with an unbalanced \" quote\n"
                                  "port 7100\r\n"
                                  "BIND 127.0.0.1 ::1\n"
                                  "maxclients   200\t\n"
                                  "requirepass \"pa ss\\x41\\n\\\"q\\\"\"\n"
                                  "logfile /tmp/\"it s.log\"\n"
                                  "pidfile '/tmp/it\\'s.pid'\n"
                                  "proto-max-bulk-len 2mb\n"
                                  "save \"\"\n"
                                  "save 900 1\n"
                                  "appendonly no\n"
                                  "loglevel verbose");
    char *argv[] = {"ringkv-server", (char *)path, "--port", "7101", "--save", "", NULL};
    cr_assert_eq(config_from_args(6, argv), 0);
    cr_assert_eq(cfg.port, 7101); /* the command line wins */
    cr_assert_str_eq(cfg.bind, "127.0.0.1 ::1");
    cr_assert_eq(cfg.maxclients, 200);
    cr_assert_str_eq(cfg_requirepass(), "pa ssA\n\"q\"");
    /* a quote may open in the middle of a word */
    cr_assert_str_eq(cfg.logfile, "/tmp/it s.log");
    cr_assert_str_eq(cfg.pidfile, "/tmp/it's.pid");
    cr_assert_eq(cfg.proto_max_bulk_len, 2LL << 20);
    cr_assert_eq(cfg.loglevel, RK_LOG_VERBOSE);
    char *real = realpath(path, NULL);
    cr_assert_str_eq(cfg.config_file, real);
    free(real);
}

Test(config, file_relative_path_recorded_absolute, .fini = remove_conf)
{
    const char *path = write_conf("port 7200\n");
    char cwd[PATH_MAX];
    cr_assert_not_null(getcwd(cwd, sizeof(cwd)));
    cr_assert_eq(chdir(tmpdir), 0);
    int rc = config_load_file("ringkv.conf");
    cr_assert_eq(chdir(cwd), 0);
    cr_assert_eq(rc, 0);
    cr_assert_eq(cfg.port, 7200);
    char *real = realpath(path, NULL);
    cr_assert_str_eq(cfg.config_file, real);
    cr_assert_eq(cfg.config_file[0], '/');
    free(real);
}

Test(config, file_errors_name_the_line, .fini = remove_conf)
{
    struct {
        const char *text;
        const char *line; /* after "ringkv-server: <path>:" */
    } cases[] = {
        {"port 1\n# c\nfoo bar\n", "3: unknown option 'foo'"},
        {"\n\nport abc\n", "3: bad value 'abc' for 'port': must be an integer between 0 and "
                           "65535"},
        {"port 1\nrequirepass \"abc\n", "2: unbalanced quotes"},
        {"requirepass \"abc\"def\n", "1: unbalanced quotes"},
        {"requirepass 'abc'def\n", "1: unbalanced quotes"},
        {"port\n", "1: 'port' needs a value"},
        {"port 1 # trailing comments are not comments\n", "1: 'port' takes one value, not 7"},
        {"max_clients 3\n", "1: unknown option 'max_clients'"},
        {"requirepass \"a\\x00b\"\n", "1: bad value 'a\\x00b' for 'requirepass': must not "
                                      "contain a NUL byte"},
        {"databases 16\n", "1: bad value '16' for 'databases': ringkv has only database 0, so "
                           "databases must be 1"},
        {"save 900 1\nshards 48\n", "2: bad value '48' for 'shards': shards must be a power of "
                                    "two between 1 and 65536"},
    };
    for (size_t i = 0; i < RK_ARRAY_LEN(cases); i++) {
        config_defaults();
        const char *path = write_conf(cases[i].text);
        const char *err;
        cr_assert_eq(load_err(path, &err), -1, "case %zu accepted", i);
        char want[512];
        snprintf(want, sizeof(want), "ringkv-server: %s:%s\n", path, cases[i].line);
        cr_assert_str_eq(err, want, "case %zu", i);
        cr_assert_str_eq(cfg.config_file, "");
    }
}

Test(config, file_error_through_argv, .fini = remove_conf)
{
    const char *path = write_conf("port 7300\nthreads 0\n");
    char *argv[] = {"ringkv-server", (char *)path, "--maxclients", "9", NULL};
    const char *err;
    cr_assert_eq(args_err(4, argv, &err), -1);
    char want[512];
    snprintf(want, sizeof(want),
             "ringkv-server: %s:2: bad value '0' for 'threads': must be an integer between 1 and "
             "1024\n",
             path);
    cr_assert_str_eq(err, want);
    cr_assert_eq(cfg.maxclients, 10000); /* the options after the file were not applied */
}

Test(config, file_missing)
{
    const char *err;
    cr_assert_eq(load_err("/nonexistent/ringkv.conf", &err), -1);
    cr_assert_str_eq(err, "ringkv-server: can't open config file '/nonexistent/ringkv.conf': No "
                          "such file or directory\n");
}

/* ---- CONFIG GET ------------------------------------------------------------------------ */

Test(config, get_exact_bytes)
{
    cr_assert_str_eq(GET("port"), "*2\r\n$4\r\nport\r\n$4\r\n6379\r\n");
    cr_assert_str_eq(GET("bind"), "*2\r\n$4\r\nbind\r\n$9\r\n127.0.0.1\r\n");
    cr_assert_str_eq(GET("loglevel"), "*2\r\n$8\r\nloglevel\r\n$6\r\nnotice\r\n");
    cr_assert_str_eq(GET("proto-max-bulk-len"),
                     "*2\r\n$18\r\nproto-max-bulk-len\r\n$9\r\n536870912\r\n");
    cr_assert_str_eq(GET("requirepass"), "*2\r\n$11\r\nrequirepass\r\n$0\r\n\r\n");
    cr_assert_str_eq(GET("save"), "*2\r\n$4\r\nsave\r\n$0\r\n\r\n");
    cr_assert_str_eq(GET("appendonly"), "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n");
    cr_assert_str_eq(GET("databases"), "*2\r\n$9\r\ndatabases\r\n$1\r\n1\r\n");
    cr_assert_str_eq(GET("daemonize"), "*2\r\n$9\r\ndaemonize\r\n$2\r\nno\r\n");
    cr_assert_str_eq(GET("nosuch"), "*0\r\n");
    cr_assert_str_eq(GET("x*"), "*0\r\n");
}

Test(config, get_patterns)
{
    /* a glob: every match, once, named as the table names it, in table order */
    cr_assert_str_eq(GET("MAX*"), "*2\r\n$10\r\nmaxclients\r\n$5\r\n10000\r\n");
    cr_assert_str_eq(GET("*port*"), "*4\r\n$4\r\nport\r\n$4\r\n6379\r\n"
                                    "$14\r\nrepl-transport\r\n$4\r\nauto\r\n");
    cr_assert_str_eq(GET("sync-mode"), "*2\r\n$9\r\nsync-mode\r\n$5\r\nasync\r\n");
    cr_assert_str_eq(GET("p*"), "*6\r\n$4\r\nport\r\n$4\r\n6379\r\n"
                                "$18\r\nproto-max-bulk-len\r\n$9\r\n536870912\r\n"
                                "$7\r\npidfile\r\n$0\r\n\r\n");
    cr_assert_str_eq(GET("?ind"), "*2\r\n$4\r\nbind\r\n$9\r\n127.0.0.1\r\n");
    cr_assert_str_eq(GET("[bq]i*"), "*2\r\n$4\r\nbind\r\n$9\r\n127.0.0.1\r\n");
    /* an exact name is echoed as sent; later patterns don't repeat what matched */
    cr_assert_str_eq(GET("MAXCLIENTS", "maxc*", "maxclients"),
                     "*2\r\n$10\r\nMAXCLIENTS\r\n$5\r\n10000\r\n");
    /* the whole table */
    const char *all = GET("*");
    cr_assert(!strncmp(all, "*50\r\n$4\r\nport\r\n$4\r\n6379\r\n$4\r\nbind\r\n", 35), "%s", all);
}

Test(config, get_order_and_threads)
{
    config_defaults();
    cfg.threads = 3;
    cr_assert_str_eq(GET("timeout", "port", "t*"),
                     "*6\r\n$7\r\ntimeout\r\n$1\r\n0\r\n$4\r\nport\r\n$4\r\n6379\r\n"
                     "$7\r\nthreads\r\n$1\r\n3\r\n");
}

Test(config, get_shows_set_values)
{
    cr_assert_eq(FROM_ARGS("--bind", "10.0.0.1", "::1", "--loglevel", "warning",
                           "--client-query-buffer-limit", "4mb", "--requirepass", "pw"),
                 0);
    cr_assert_str_eq(GET("bind", "loglevel", "client-query-buffer-limit", "requirepass"),
                     "*8\r\n$4\r\nbind\r\n$12\r\n10.0.0.1 ::1\r\n"
                     "$8\r\nloglevel\r\n$7\r\nwarning\r\n"
                     "$25\r\nclient-query-buffer-limit\r\n$7\r\n4194304\r\n"
                     "$11\r\nrequirepass\r\n$2\r\npw\r\n");
}

Test(config, get_arity)
{
    cr_assert_str_eq(run_cmd(config_cmd_get, 0, NULL),
                     "-ERR wrong number of arguments for 'config|get' command\r\n");
}

/* ---- CONFIG SET ------------------------------------------------------------------------ */

Test(config, set_ok)
{
    cr_assert_str_eq(SET("maxclients", "50", "timeout", "30", "proto-max-bulk-len", "2mb",
                         "client-query-buffer-limit", "3M"),
                     "+OK\r\n");
    cr_assert_eq(cfg_maxclients(), 50);
    cr_assert_eq(cfg_timeout(), 30);
    cr_assert_eq(cfg_max_bulk(), 2LL << 20);
    cr_assert_eq(cfg_qbuf_limit(), 3000000);
    cr_assert_str_eq(SET("LogLevel", "DEBUG"), "+OK\r\n");
    cr_assert_eq(cfg.loglevel, RK_LOG_DEBUG);
    cr_assert_eq(rk_log_level, RK_LOG_DEBUG);
    cr_assert_str_eq(SET("save", ""), "+OK\r\n");
    cr_assert_str_eq(SET("save", "3600 1 300 100"), "+OK\r\n");
    cr_assert_str_eq(GET("save"), "*2\r\n$4\r\nsave\r\n$0\r\n\r\n");
    cr_assert_str_eq(SET("appendonly", "no"), "+OK\r\n");
    cr_assert_str_eq(GET("maxclients"), "*2\r\n$10\r\nmaxclients\r\n$2\r\n50\r\n");
}

Test(config, set_requirepass_visible)
{
    cr_assert_str_eq(SET("requirepass", "first"), "+OK\r\n");
    const char *old = cfg_requirepass();
    cr_assert_str_eq(old, "first");
    cr_assert_str_eq(SET("requirepass", "second"), "+OK\r\n");
    cr_assert_str_eq(cfg_requirepass(), "second");
    cr_assert_neq(cfg_requirepass(), old);
    cr_assert_str_eq(old, "first"); /* a reader holding the old copy still has valid bytes */
    cr_assert_str_eq(SET("requirepass", ""), "+OK\r\n");
    cr_assert_str_eq(cfg_requirepass(), "");
}

Test(config, set_arity)
{
    const char *arity = "-ERR wrong number of arguments for 'config|set' command\r\n";
    cr_assert_str_eq(run_cmd(config_cmd_set, 0, NULL), arity);
    cr_assert_str_eq(SET("maxclients"), arity);
    cr_assert_str_eq(SET("maxclients", "5", "timeout"), arity);
    cr_assert_eq(cfg.maxclients, 10000);
}

Test(config, set_unknown_and_immutable)
{
    cr_assert_str_eq(SET("foo", "bar"),
                     "-ERR Unknown option or number of arguments for CONFIG SET - 'foo'\r\n");
    cr_assert_str_eq(SET("maxclients", "10", "FOO", "1"),
                     "-ERR Unknown option or number of arguments for CONFIG SET - 'FOO'\r\n");
    cr_assert_str_eq(SET("port", "1"), set_failed("port", "can't set immutable config"));
    cr_assert_str_eq(SET("PORT", "abc"), set_failed("PORT", "can't set immutable config"));
    const char *imm[] = {"bind",    "threads",   "shards",   "logfile",
                         "pidfile", "daemonize", "databases"};
    for (size_t i = 0; i < RK_ARRAY_LEN(imm); i++)
        cr_assert_str_eq(SET(imm[i], "1"), set_failed(imm[i], "can't set immutable config"));
    cr_assert_str_eq(SET("maxclients", "1", "maxclients", "2"),
                     set_failed("maxclients", "duplicate parameter"));
    cr_assert_str_eq(SET("maxclients", "1", "timeout", "x", "MAXCLIENTS", "2"),
                     set_failed("MAXCLIENTS", "duplicate parameter"));
    /* names are checked before values, pair by pair */
    cr_assert_str_eq(SET("timeout", "abc", "daemonize", "no"),
                     set_failed("daemonize", "can't set immutable config"));
    cr_assert_eq(cfg.maxclients, 10000);
    cr_assert_eq(cfg.port, 6379);
}

Test(config, set_every_live_option_then_a_repeat)
{
    /* every live option once is fine; one more pair can only be a repeat */
    cr_assert_str_eq(SET("maxclients", "9", "requirepass", "p", "loglevel", "debug", "timeout", "8",
                         "proto-max-bulk-len", "7mb", "client-query-buffer-limit", "6mb", "save",
                         "", "appendonly", "no"),
                     "+OK\r\n");
    cr_assert_str_eq(SET("maxclients", "1", "requirepass", "q", "loglevel", "debug", "timeout", "1",
                         "proto-max-bulk-len", "1mb", "client-query-buffer-limit", "1mb", "save",
                         "", "appendonly", "no", "Timeout", "2"),
                     set_failed("Timeout", "duplicate parameter"));
    cr_assert_eq(cfg_maxclients(), 9);
    cr_assert_str_eq(cfg_requirepass(), "p");
    cr_assert_eq(cfg_timeout(), 8);
    cr_assert_eq(cfg_max_bulk(), 7LL << 20);
    cr_assert_eq(cfg_qbuf_limit(), 6LL << 20);
}

Test(config, set_bad_values)
{
    cr_assert_str_eq(SET("maxclients", "abc"),
                     set_failed("maxclients", "argument couldn't be parsed into an integer"));
    cr_assert_str_eq(SET("MAXCLIENTS", ""),
                     set_failed("maxclients", "argument couldn't be parsed into an integer"));
    cr_assert_str_eq(
        SET("maxclients", "0"),
        set_failed("maxclients", "argument must be between 1 and 4294967295 inclusive"));
    cr_assert_str_eq(SET("timeout", "-1"),
                     set_failed("timeout", "argument must be between 0 and 2147483647 inclusive"));
    cr_assert_str_eq(SET("timeout", "1.5"),
                     set_failed("timeout", "argument couldn't be parsed into an integer"));
    cr_assert_str_eq(SET("timeout", "99999999999999999999"),
                     set_failed("timeout", "argument couldn't be parsed into an integer"));
    cr_assert_str_eq(SET("proto-max-bulk-len", "1k"),
                     set_failed("proto-max-bulk-len", "argument must be between 1048576 and "
                                                      "9223372036854775807 inclusive"));
    cr_assert_str_eq(SET("proto-max-bulk-len", "1.5mb"),
                     set_failed("proto-max-bulk-len", "argument must be a memory value"));
    cr_assert_str_eq(SET("client-query-buffer-limit", "-1"),
                     set_failed("client-query-buffer-limit", "argument must be a memory value"));
    cr_assert_str_eq(SET("loglevel", "loud"),
                     set_failed("loglevel", "argument(s) must be one of the following: debug, "
                                            "verbose, notice, warning"));
    cr_assert_str_eq(SET("appendonly", "maybe"),
                     set_failed("appendonly", "argument must be 'yes' or 'no'"));
    cr_assert_str_eq(
        SET("appendonly", "yes"),
        set_failed("appendonly", "ringkv keeps no append-only file; only 'no' is accepted"));
    cr_assert_eq(cfg.maxclients, 10000);
    cr_assert_eq(cfg.timeout, 0);
    cr_assert_eq(cfg.proto_max_bulk_len, 512LL << 20);
    cr_assert_eq(cfg.loglevel, RK_LOG_NOTICE);
}

Test(config, set_all_or_nothing)
{
    cr_assert_str_eq(
        SET("maxclients", "77", "timeout", "5", "requirepass", "new", "loglevel", "nope"),
        set_failed("loglevel", "argument(s) must be one of the following: debug, "
                               "verbose, notice, warning"));
    cr_assert_eq(cfg_maxclients(), 10000);
    cr_assert_eq(cfg_timeout(), 0);
    cr_assert_str_eq(cfg_requirepass(), "");
    cr_assert_str_eq(
        SET("maxclients", "77", "timeout", "5", "requirepass", "new", "loglevel", "warning"),
        "+OK\r\n");
    cr_assert_eq(cfg_maxclients(), 77);
    cr_assert_eq(cfg_timeout(), 5);
    cr_assert_str_eq(cfg_requirepass(), "new");
    cr_assert_eq(cfg.loglevel, RK_LOG_WARNING);
}

Test(config, set_requirepass_with_nul_refused)
{
    struct arg a[] = {{"requirepass", 11}, {"a\0b", 3}};
    struct buf b = {0};
    struct reply r;
    reply_init(&r, &b, PROTO_RESP, 0);
    config_cmd_set(&r, 2, a);
    const char *want = set_failed("requirepass", "argument must not contain a NUL byte");
    cr_assert_eq(b.len, strlen(want));
    cr_assert(!memcmp(b.p, want, b.len));
    cr_assert_str_eq(cfg_requirepass(), "");
    buf_free(&b);
}

Test(config, enum_options_set_and_refuse)
{
    config_defaults();
    cr_assert_str_eq(SET("sync-mode", "SYNC"), "+OK\r\n");
    cr_assert_eq(cfg_sync_mode(), SYNC_SYNC);
    cr_assert_str_eq(SET("sync-fallback", "error"), "+OK\r\n");
    cr_assert_eq(cfg_sync_fallback(), FALLBACK_ERROR);
    cr_assert_str_eq(SET("sync-mode", "later"),
                     "-ERR CONFIG SET failed (possibly related to argument 'sync-mode') - "
                     "argument(s) must be one of the following: async, semi, sync\r\n");
    cr_assert_eq(cfg_sync_mode(), SYNC_SYNC, "a refused value changes nothing");
    cr_assert_str_eq(GET("sync-*"), "*8\r\n$9\r\nsync-mode\r\n$4\r\nsync\r\n"
                                    "$13\r\nsync-replicas\r\n$1\r\n1\r\n"
                                    "$12\r\nsync-timeout\r\n$4\r\n1000\r\n"
                                    "$13\r\nsync-fallback\r\n$5\r\nerror\r\n");
}
