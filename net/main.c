/*
 * main: ringkv-server's start and stop.
 *
 * Reads the configuration (net/config.h), checks that the port is free, starts the workers
 * (net/worker.c) and then only waits: for SIGINT or SIGTERM, or for SHUTDOWN, which sets the
 * stop flag.  Workers look at the flag on their 100 ms tick, so the server stops within about
 * a tenth of a second, closes every connection and exits 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "net/config.h"
#include "net/repl.h"
#include "net/server.h"

static void make_run_id(void)
{
    unsigned char raw[20];
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, raw, sizeof(raw)) : -1;
    if (fd >= 0)
        close(fd);
    if (n != (ssize_t)sizeof(raw)) {
        uint64_t x = (uint64_t)rk_now_us() ^ ((uint64_t)getpid() << 32);
        for (size_t i = 0; i < sizeof(raw); i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            raw[i] = (unsigned char)(x >> 56);
        }
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof(raw); i++) {
        srv.run_id[2 * i] = hex[raw[i] >> 4];
        srv.run_id[2 * i + 1] = hex[raw[i] & 15];
    }
    srv.run_id[40] = '\0';
}

/* Listeners use SO_REUSEPORT, which would let two servers share a port without an error: bind
 * a plain socket first so that a port already in use is refused loudly. */
static int check_port_free(void)
{
    if (cfg.port == 0)
        return 0;
    char *copy = rk_strndup(cfg.bind, strlen(cfg.bind));
    char *save = NULL;
    int rc = 0;
    for (char *a = strtok_r(copy, " ", &save); a && rc == 0; a = strtok_r(NULL, " ", &save)) {
        int fd = server_probe_bind(a, cfg.port);
        if (fd < 0) {
            fprintf(stderr, "ringkv-server: can't listen on %s:%d: %s\n", a, cfg.port,
                    strerror(-fd));
            rc = -1;
        } else {
            close(fd);
        }
    }
    rk_free(copy);
    return rc;
}

int main(int argc, char **argv)
{
    config_defaults();
    if (config_from_args(argc, argv) < 0)
        return 2;
    rk_log_level = cfg.loglevel;
    rk_log_set_file(cfg.logfile);
    if (check_port_free() < 0)
        return 1;
    if (repl_prepare() < 0)
        return 2;
    ssize_t n = readlink("/proc/self/exe", srv.executable, sizeof(srv.executable) - 1);
    srv.executable[n > 0 ? n : 0] = '\0';
    make_run_id();
    srv.start_ms = rk_now_ms();

    /* Workers inherit this mask: only the main thread takes SIGINT and SIGTERM. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (cfg.pidfile[0]) {
        FILE *f = fopen(cfg.pidfile, "w");
        if (f) {
            fprintf(f, "%d\n", (int)getpid());
            fclose(f);
        } else {
            rk_log(RK_LOG_WARNING, "can't write the pid file %s: %s", cfg.pidfile, strerror(errno));
        }
    }
    rk_log(RK_LOG_NOTICE, "ringkv %s starting: pid %d, %d worker threads, %d shards",
           RINGKV_VERSION, (int)getpid(), cfg.threads, cfg.shards);
    if (workers_start() < 0) {
        rk_log(RK_LOG_WARNING, "start-up failed, exiting");
        workers_stop_and_join();
        return 1;
    }
    rk_log(RK_LOG_NOTICE, "io_uring: %s, doorbells by %s",
           (srv.ring_flags & IORING_SETUP_DEFER_TASKRUN)  ? "SINGLE_ISSUER|DEFER_TASKRUN"
           : (srv.ring_flags & IORING_SETUP_COOP_TASKRUN) ? "COOP_TASKRUN"
                                                          : "default flags",
           srv.use_msg_ring ? "IORING_OP_MSG_RING" : "eventfd");
    rk_log(RK_LOG_NOTICE, "Ready to accept connections on %s port %d", cfg.bind, cfg.port);

    struct timespec tick = {0, 100 * 1000000L};
    while (!__atomic_load_n(&srv.stop, __ATOMIC_SEQ_CST)) {
        repl_main_tick();
        int sig = sigtimedwait(&set, NULL, &tick);
        if (sig == SIGINT || sig == SIGTERM) {
            rk_log(RK_LOG_WARNING, "Received %s, scheduling shutdown...",
                   sig == SIGINT ? "SIGINT" : "SIGTERM");
            break;
        }
    }
    repl_shutdown();
    workers_stop_and_join();
    if (cfg.pidfile[0])
        unlink(cfg.pidfile);
    rk_log(RK_LOG_WARNING, "ringkv is now ready to exit, bye bye...");
    return 0;
}
