#define _GNU_SOURCE
#include "cprocess.h"
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <linux/magic.h>
#include <linux/nsfs.h>

int cproc_setns(int fd, int nstype) { return setns(fd, nstype) == 0 ? 0 : -errno; }

int cproc_unshare(int flags) { return unshare(flags) == 0 ? 0 : -errno; }

int cproc_is_netns(int fd) {
    struct statfs sfs;
    if (fstatfs(fd, &sfs) != 0) return -errno;
    if (sfs.f_type != NSFS_MAGIC) return 0;
    int type = ioctl(fd, NS_GET_NSTYPE);
    if (type < 0) return -errno;
    return type == CLONE_NEWNET ? 1 : 0;
}

struct thread_call { void (*fn)(void *); void *ctx; };

static void *thread_main(void *arg) {
    struct thread_call *call = arg;
    call->fn(call->ctx);
    return NULL;
}

static void *owned_call_main(void *arg) {
    struct thread_call call = *(struct thread_call *)arg;
    free(arg);
    call.fn(call.ctx);
    return NULL;
}

int cproc_run_on_new_thread(void (*fn)(void *), void *ctx) {
    struct thread_call call = { fn, ctx };
    pthread_t thread;
    int rc = pthread_create(&thread, NULL, thread_main, &call);
    if (rc != 0) return -rc;
    rc = pthread_join(thread, NULL);
    return rc == 0 ? 0 : -rc;
}

int cproc_thread_start(pthread_t *thread, void (*fn)(void *), void *ctx) {
    struct thread_call *call = malloc(sizeof(*call));
    if (!call) return -ENOMEM;
    call->fn = fn;
    call->ctx = ctx;
    int rc = pthread_create(thread, NULL, owned_call_main, call);
    if (rc != 0) { free(call); return -rc; }
    return 0;
}

int cproc_set_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 ? 0 : -errno;
}

int cproc_spawn_close_from(posix_spawn_file_actions_t *actions, int low) {
    int rc = posix_spawn_file_actions_addclosefrom_np(actions, low);
    return rc == 0 ? 0 : -rc;
}

static volatile sig_atomic_t signal_target = 0;

static void forward(int signal) {
    int saved = errno;  /* kill may set it; the interrupted code must not see that */
    pid_t target = (pid_t)signal_target;
    if (target > 0) kill(target, signal);
    errno = saved;
}

void cproc_set_signal_target(pid_t pid) { signal_target = (sig_atomic_t)pid; }

int cproc_forward_signal(int signal) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = forward;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    return sigaction(signal, &action, NULL) == 0 ? 0 : -errno;
}

void cproc_release_free_memory(void) { malloc_trim(0); }

int cproc_thread_cpus(pthread_t thread, int *cpus, int max) {
    cpu_set_t set;
    int rc = pthread_getaffinity_np(thread, sizeof set, &set);
    if (rc != 0) return -rc;
    int n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && n < max; cpu++)
        if (CPU_ISSET(cpu, &set)) cpus[n++] = cpu;
    return n;
}

int cproc_set_thread_cpus(pthread_t thread, const int *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++) CPU_SET(cpus[i], &set);
    return -pthread_setaffinity_np(thread, sizeof set, &set);
}
