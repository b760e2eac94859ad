#define _GNU_SOURCE
#include "cdetached.h"
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/netlink.h>
#include <linux/sockios.h>

/* Detached helper processes, for work a short-lived caller (a CNI plugin call, a CLI
 * command) need not wait for. A helper is a grandchild, reparented at once (the middle
 * child exits), so the caller never has to reap it; it holds none of the caller's
 * descriptors but those it needs (a CNI runtime reads the plugin's stdout until every copy
 * of it is closed). The middle child shares the caller's memory (CLONE_VM | CLONE_VFORK: no
 * copy of the address space to make and tear down, ~0.5 ms of a CNI DEL) and makes the
 * helper with a raw clone, which copies it; after that, only raw system calls run. */
struct detached_start { void (*work)(void *); void *arg; int error; };

static int detached_middle(void *p) {
    struct detached_start *start = p;
    long helper = syscall(SYS_clone, (unsigned long)SIGCHLD, 0UL, 0UL, 0UL, 0UL);
    if (helper == 0) {
        /* The caller's handlers are not the helper's business; signals arrive again. */
        struct sigaction dfl = { .sa_handler = SIG_DFL };
        for (int sig = 1; sig < NSIG; sig++) sigaction(sig, &dfl, NULL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setsid();
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) { dup2(null, 0); dup2(null, 1); dup2(null, 2); if (null > 2) close(null); }
        start->work(start->arg);
        _exit(0);
    }
    if (helper < 0) start->error = errno;  /* shared memory: the caller reads it */
    _exit(helper < 0 ? 1 : 0);
}

static int spawn_detached(void (*work)(void *), void *arg) {
    struct detached_start start = { work, arg, 0 };
    enum { STACK = 64 * 1024 };
    char *stack = malloc(STACK);
    if (!stack) return -ENOMEM;
    /* No handler may run in the middle child: it would run on the caller's memory. */
    sigset_t all, saved;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &saved);
    pid_t middle = clone(detached_middle, stack + STACK, CLONE_VM | CLONE_VFORK | SIGCHLD, &start);
    int rc = middle < 0 ? -errno : 0;
    int status = 0;
    while (middle > 0 && waitpid(middle, &status, 0) < 0) {
        /* ECHILD: the caller ignores SIGCHLD, so the middle child was reaped for us; a
         * failed clone still shows in start.error (vfork: it is set before we resume). */
        if (errno == ECHILD) { status = 0; break; }
        if (errno != EINTR) { rc = -errno; break; }
    }
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    free(stack);
    if (rc == 0 && start.error != 0) rc = -start.error;
    if (rc == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) rc = -ECHILD;
    return rc;
}

/* Closes every descriptor from 3 up but those in keep[0..count). */
static void close_all_but(const int *keep, int count) {
    int highest = 2;
    for (int i = 0; i < count; i++) if (keep[i] > highest) highest = keep[i];
    for (int fd = 3; fd <= highest; fd++) {
        int kept = 0;
        for (int i = 0; i < count; i++) kept |= keep[i] == fd;
        if (!kept) close(fd);
    }
    syscall(SYS_close_range, (unsigned)highest + 1, ~0U, 0U);
}

/* A netlink request (a deletion), sent from the helper in the namespace of `socket_fd`.
 * Batching: one such helper per network namespace (an exclusive flock on a file of that
 * namespace's inode in `lock_directory`, root's) repeats the request every 100 ms until the
 * kernel answers ENODEV, so a burst of detaches costs the kernel one unregister batch (one
 * RCU barrier) per round instead of one each, and holds the RTNL lock less while the burst
 * runs. A helper that finds the lock taken leaves its work to the holder, which sends once
 * more after letting the lock go: nothing requested before that is missed. */
struct detached_send { int socket_fd; const void *datagram; size_t length; char lock_path[4096]; };

/* Sends the request and returns the kernel's errno for it (0 = done), or -1. */
static int detached_request(int fd, const struct detached_send *d) {
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
    if (sendto(fd, d->datagram, d->length, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) return -1;
    union { struct nlmsghdr header; char bytes[1024]; } reply;
    ssize_t n = recv(fd, &reply, sizeof(reply), 0);
    if (n < (ssize_t)(sizeof(struct nlmsghdr) + sizeof(struct nlmsgerr)) || reply.header.nlmsg_type != NLMSG_ERROR) return -1;
    return -((struct nlmsgerr *)NLMSG_DATA(&reply.header))->error;
}

static void send_worker(void *p) {
    const struct detached_send *d = p;
    int ns = ioctl(d->socket_fd, SIOCGSKNS);
    if (ns < 0 || setns(ns, CLONE_NEWNET) != 0) _exit(2);
    int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    int lock = open(d->lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (s < 0) _exit(3);
    int keep[] = { s, lock };
    close_all_but(keep, lock >= 0 ? 2 : 1);
    if (lock >= 0 && flock(lock, LOCK_EX | LOCK_NB) != 0) _exit(0);  /* the holder will do it */
    struct timeval timeout = { .tv_sec = 30 };
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    for (int round = 0; round < 600; round++) {  /* at most a minute */
        struct timespec pause = { .tv_nsec = 100 * 1000 * 1000 };
        nanosleep(&pause, NULL);
        if (detached_request(s, d) != 0) break;  /* ENODEV: nothing left to delete */
    }
    if (lock >= 0) close(lock);
    detached_request(s, d);
}

int cdetached_send(int socket_fd, const void *datagram, size_t length, const char *lock_directory) {
    struct detached_send d = { socket_fd, datagram, length, "" };
    /* The lock is per network namespace: named by the namespace's inode. */
    int ns = ioctl(socket_fd, SIOCGSKNS);
    struct stat st;
    if (ns < 0 || fstat(ns, &st) != 0) { int code = errno; if (ns >= 0) close(ns); return -code; }
    close(ns);
    int n = snprintf(d.lock_path, sizeof(d.lock_path), "%s/.detached-deletions-%llu.lock", lock_directory,
                     (unsigned long long)st.st_ino);
    if (n < 0 || n >= (int)sizeof(d.lock_path)) return -ENAMETOOLONG;
    return spawn_detached(send_worker, &d);
}

/* Holding descriptors until the caller has exited: the helper waits for end-of-file on a
 * pipe whose only writer is the caller, then exits, and its copies are the last ones. */
struct detached_hold { const int *fds; int count; int exited; };

static void hold_worker(void *p) {
    const struct detached_hold *h = p;
    int keep[64];
    int count = h->count < 63 ? h->count : 63;
    for (int i = 0; i < count; i++) keep[i] = h->fds[i];
    keep[count] = h->exited;
    close_all_but(keep, count + 1);
    char byte;
    while (read(h->exited, &byte, 1) != 0) {
        if (errno != EINTR) break;
    }
}

int cdetached_hold_until_exit(const int *fds, int count) {
    int ends[2];
    if (pipe2(ends, O_CLOEXEC) != 0) return -errno;
    struct detached_hold h = { fds, count, ends[0] };
    int rc = spawn_detached(hold_worker, &h);
    close(ends[0]);
    if (rc != 0) close(ends[1]);
    /* ends[1] stays open until this process exits: that is the helper's signal. */
    return rc;
}
