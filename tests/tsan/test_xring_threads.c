/*
 * Two threads through one xring, for ThreadSanitizer (Criterion cannot start under TSan, so
 * this is a plain program: exit 0 and "1 passed, 0 failed" when every record arrived intact
 * and in order).  The producer never blocks: when the ring is full it yields and retries, as a
 * worker keeps records on its overflow list.  Bounded: a fixed record count and a 60 s cap.
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "net/xring.h"

#define RECORDS 200000

static struct xring *ring;
static int failed;

static void *producer(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < RECORDS; i++) {
        size_t sz = 8 + (i * 13) % 300;
        char *p;
        while (!(p = xring_reserve(ring, sz, 5)))
            sched_yield();
        for (size_t k = 0; k < sz; k++)
            p[k] = (char)(i + k);
        memcpy(p, &i, sizeof(i));
        if (i % 7 == 0 || i == RECORDS - 1)
            xring_publish(ring);
    }
    return NULL;
}

int main(void)
{
    ring = xring_new(8192);
    pthread_t t;
    pthread_create(&t, NULL, producer, NULL);
    unsigned next = 0;
    time_t start = time(NULL);
    while (next < RECORDS && time(NULL) - start < 60) {
        size_t len;
        uint32_t type;
        char *q = xring_peek(ring, &len, &type);
        if (!q) {
            sched_yield();
            continue;
        }
        unsigned seq;
        memcpy(&seq, q, sizeof(seq));
        if (seq != next || type != 5 || len != 8 + (seq * 13) % 300) {
            fprintf(stderr, "record %u: got seq %u type %u len %zu\n", next, seq, type, len);
            failed = 1;
            break;
        }
        for (size_t k = sizeof(seq); k < len; k++)
            if (q[k] != (char)(seq + k)) {
                fprintf(stderr, "record %u: byte %zu corrupt\n", seq, k);
                failed = 1;
                break;
            }
        xring_consume(ring, len);
        next++;
    }
    if (next != RECORDS)
        failed = 1;
    pthread_join(t, NULL);
    xring_free(ring);
    printf("xring two threads: %u of %u records\n", next, RECORDS);
    printf("%d passed, %d failed\n", failed ? 0 : 1, failed ? 1 : 0);
    return failed;
}
