#define _GNU_SOURCE
#include "cshim.h"
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <linux/nsfs.h>
#include <linux/magic.h>

int cshim_setns(int fd, int nstype) { return setns(fd, nstype) == 0 ? 0 : -errno; }

int cshim_unshare(int flags) { return unshare(flags) == 0 ? 0 : -errno; }

int cshim_is_netns(int fd) {
    struct statfs sfs;
    if (fstatfs(fd, &sfs) != 0) return -errno;
    if (sfs.f_type != NSFS_MAGIC) return 0;
    int type = ioctl(fd, NS_GET_NSTYPE);
    if (type < 0) return -errno;
    return type == CLONE_NEWNET ? 1 : 0;
}

int cshim_bind_mount(const char *src, const char *dst) {
    return mount(src, dst, "none", MS_BIND, NULL) == 0 ? 0 : -errno;
}

int cshim_umount_detach(const char *path) {
    return umount2(path, MNT_DETACH) == 0 ? 0 : -errno;
}

int cshim_pipe2(int fds[2], int flags) { return pipe2(fds, flags) == 0 ? 0 : -errno; }

pid_t cshim_gettid(void) { return (pid_t)syscall(SYS_gettid); }

struct thread_call { void (*fn)(void *); void *ctx; };

static void *thread_main(void *arg) {
    struct thread_call *call = arg;
    call->fn(call->ctx);
    return NULL;
}

int cshim_run_on_new_thread(void (*fn)(void *), void *ctx) {
    struct thread_call call = { fn, ctx };
    pthread_t thread;
    int rc = pthread_create(&thread, NULL, thread_main, &call);
    if (rc != 0) return -rc;
    rc = pthread_join(thread, NULL);
    return rc == 0 ? 0 : -rc;
}
