/*
 * ctl: create and map the control region (see ctl.h).  Layout: struct ctl_hdr on the first
 * page, then CTL_MAX_REPLICAS slots (and the self slot), each a struct ctl_slot followed by its
 * five per-shard arrays, rounded up to a cache line.
 */
#include "shm/ctl.h"
#include "shm/ring.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static size_t slot_size(uint32_t nshards)
{
    size_t n = sizeof(struct ctl_slot) + 5 * (size_t)nshards * sizeof(uint64_t);
    return (n + 63) & ~(size_t)63;
}

static size_t map_size(uint32_t nshards)
{
    return 4096 + (CTL_MAX_REPLICAS + 1) * slot_size(nshards);
}

int ctl_create(struct ctl_map *c, uint32_t nshards, uint32_t master_workers)
{
    size_t len = map_size(nshards);
    void *p;
    int fd = shm_create("ringkv-repl-ctl", len, &p);
    if (fd < 0)
        return fd;
    c->hdr = p;
    c->map_len = len;
    c->fd = fd;
    c->hdr->magic = CTL_MAGIC;
    c->hdr->nshards = nshards;
    c->hdr->master_workers = master_workers;
    c->hdr->master_pid = (int32_t)getpid();
    c->hdr->slot_off = 4096;
    c->hdr->slot_size = slot_size(nshards);
    c->hdr->map_len = len;
    c->nshards = nshards;
    c->slot_off = 4096;
    c->slot_size = slot_size(nshards);
    return 0;
}

int ctl_attach(struct ctl_map *c, int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size < 4096) {
        close(fd);
        return -EBADMSG;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        int e = -errno;
        close(fd);
        return e;
    }
    struct ctl_hdr h;
    memcpy(&h, p, sizeof(h));
    bool ok = h.magic == CTL_MAGIC && h.nshards >= 1 && h.nshards <= 65536 &&
              h.master_workers >= 1 && h.master_workers <= CTL_MAX_WORKERS && h.slot_off == 4096 &&
              h.slot_size == slot_size(h.nshards) && h.map_len == (uint64_t)st.st_size &&
              map_size(h.nshards) == (size_t)st.st_size;
    if (!ok) {
        munmap(p, (size_t)st.st_size);
        close(fd);
        return -EBADMSG;
    }
    c->hdr = p;
    c->nshards = h.nshards;
    c->slot_off = (size_t)h.slot_off;
    c->slot_size = (size_t)h.slot_size;
    c->map_len = (size_t)st.st_size;
    c->fd = fd;
    return 0;
}

void ctl_close(struct ctl_map *c)
{
    if (c->hdr)
        munmap(c->hdr, c->map_len);
    if (c->fd >= 0)
        close(c->fd);
    c->hdr = NULL;
    c->fd = -1;
}
