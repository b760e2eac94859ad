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
#include <fcntl.h>
#include <string.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <linux/openat2.h>
#include <sys/xattr.h>
#include <signal.h>
#include <malloc.h>
#include <linux/filter.h>
#include <sys/socket.h>
#include <spawn.h>
#include <sys/wait.h>
#include <linux/sockios.h>
#include <sys/un.h>
#include <sys/file.h>
#include <stdio.h>
#include <stddef.h>
#include <time.h>

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

static void *owned_call_main(void *arg) {
    struct thread_call call = *(struct thread_call *)arg;
    free(arg);
    call.fn(call.ctx);
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

ssize_t cshim_splice(int fd_in, int fd_out, size_t len, unsigned int flags) {
    ssize_t n = splice(fd_in, NULL, fd_out, NULL, len, flags);
    return n >= 0 ? n : -errno;
}

int cshim_accept_nonblocking(int fd, struct sockaddr_storage *peer) {
    socklen_t length = sizeof(*peer);
    int client = accept4(fd, (struct sockaddr *)peer, peer ? &length : NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    return client >= 0 ? client : -errno;
}

int cshim_set_pipe_size(int fd, int size) {
    int rc = fcntl(fd, F_SETPIPE_SZ, size);
    return rc >= 0 ? rc : -errno;
}

int cshim_recvmmsg(int fd, struct cshim_mmsghdr *messages, unsigned int count, int flags) {
    int n = recvmmsg(fd, (struct mmsghdr *)messages, count, flags, NULL);
    return n >= 0 ? n : -errno;
}

int cshim_sendmmsg(int fd, struct cshim_mmsghdr *messages, unsigned int count, int flags) {
    int n = sendmmsg(fd, (struct mmsghdr *)messages, count, flags);
    return n >= 0 ? n : -errno;
}

int cshim_enable_pktinfo(int fd, int ipv6) {
    int one = 1;
    int rc = ipv6 ? setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one))
                  : setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
    return rc == 0 ? 0 : -errno;
}

int cshim_pktinfo_destination(struct msghdr *message, struct sockaddr_storage *destination) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(message); c; c = CMSG_NXTHDR(message, c)) {
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
            struct in_pktinfo info;
            memcpy(&info, CMSG_DATA(c), sizeof(info));
            struct sockaddr_in *sin = (struct sockaddr_in *)destination;
            memset(destination, 0, sizeof(*destination));
            sin->sin_family = AF_INET;
            sin->sin_addr = info.ipi_addr;
            return 1;
        }
        if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
            struct in6_pktinfo info;
            memcpy(&info, CMSG_DATA(c), sizeof(info));
            struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)destination;
            memset(destination, 0, sizeof(*destination));
            sin6->sin6_family = AF_INET6;
            sin6->sin6_addr = info.ipi6_addr;
            return 1;
        }
    }
    return 0;
}

void cshim_set_pktinfo_source(struct msghdr *message, void *control, const struct sockaddr_storage *source) {
    memset(control, 0, CSHIM_PKTINFO_SPACE);
    message->msg_control = control;
    if (source->ss_family == AF_INET) {
        message->msg_controllen = CMSG_SPACE(sizeof(struct in_pktinfo));
        struct cmsghdr *c = CMSG_FIRSTHDR(message);
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
        struct in_pktinfo info;
        memset(&info, 0, sizeof(info));
        info.ipi_spec_dst = ((const struct sockaddr_in *)source)->sin_addr;
        memcpy(CMSG_DATA(c), &info, sizeof(info));
    } else {
        message->msg_controllen = CMSG_SPACE(sizeof(struct in6_pktinfo));
        struct cmsghdr *c = CMSG_FIRSTHDR(message);
        c->cmsg_level = IPPROTO_IPV6;
        c->cmsg_type = IPV6_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(struct in6_pktinfo));
        struct in6_pktinfo info;
        memset(&info, 0, sizeof(info));
        info.ipi6_addr = ((const struct sockaddr_in6 *)source)->sin6_addr;
        memcpy(CMSG_DATA(c), &info, sizeof(info));
    }
}

int cshim_thread_start(pthread_t *thread, void (*fn)(void *), void *ctx) {
    struct thread_call *call = malloc(sizeof(*call));
    if (!call) return -ENOMEM;
    call->fn = fn;
    call->ctx = ctx;
    int rc = pthread_create(thread, NULL, owned_call_main, call);
    if (rc != 0) { free(call); return -rc; }
    return 0;
}

int cshim_open_beneath(int dirfd, const char *path, int flags, unsigned int mode) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (unsigned long long)(flags | O_CLOEXEC | O_NOFOLLOW);
    how.mode = (flags & O_CREAT) ? mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    return fd < 0 ? -errno : (int)fd;
}

int cshim_mknod_whiteout(int dirfd, const char *name) {
    return mknodat(dirfd, name, S_IFCHR | 0000, makedev(0, 0)) == 0 ? 0 : -errno;
}

int cshim_is_whiteout(unsigned int mode, unsigned long rdev) {
    return S_ISCHR(mode) && major(rdev) == 0 && minor(rdev) == 0;
}

int cshim_mount_overlay(const char *target, const char *options) {
    return mount("overlay", target, "overlay", 0, options) == 0 ? 0 : -errno;
}

int cshim_set_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 ? 0 : -errno;
}

int cshim_set_opaque(int fd) {
    return fsetxattr(fd, "trusted.overlay.opaque", "y", 1, 0) == 0 ? 0 : -errno;
}

int cshim_is_opaque(int fd) {
    char value[4];
    ssize_t n = fgetxattr(fd, "trusted.overlay.opaque", value, sizeof value);
    if (n < 0) return (errno == ENODATA || errno == ENOTSUP) ? 0 : -errno;
    return n == 1 && value[0] == 'y';
}

int cshim_spawn_close_from(posix_spawn_file_actions_t *actions, int low) {
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

void cshim_set_signal_target(pid_t pid) { signal_target = (sig_atomic_t)pid; }

int cshim_forward_signal(int signal) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = forward;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    return sigaction(signal, &action, NULL) == 0 ? 0 : -errno;
}

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

int cshim_send_detached(int socket_fd, const void *datagram, size_t length, const char *lock_directory) {
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

int cshim_hold_until_exit(const int *fds, int count) {
    int ends[2];
    if (pipe2(ends, O_CLOEXEC) != 0) return -errno;
    struct detached_hold h = { fds, count, ends[0] };
    int rc = spawn_detached(hold_worker, &h);
    close(ends[0]);
    if (rc != 0) close(ends[1]);
    /* ends[1] stays open until this process exits: that is the helper's signal. */
    return rc;
}

void cshim_release_free_memory(void) { malloc_trim(0); }

int cshim_thread_cpus(pthread_t thread, int *cpus, int max) {
    cpu_set_t set;
    int rc = pthread_getaffinity_np(thread, sizeof set, &set);
    if (rc != 0) return -rc;
    int n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && n < max; cpu++)
        if (CPU_ISSET(cpu, &set)) cpus[n++] = cpu;
    return n;
}

int cshim_set_thread_cpus(pthread_t thread, const int *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++) CPU_SET(cpus[i], &set);
    return -pthread_setaffinity_np(thread, sizeof set, &set);
}

int cshim_reuseport_by_cpu(int fd, const int *cpus, int count) {
    if (count < 1 || count > 1000) return -EINVAL;
    struct sock_filter code[2 * 1000 + 4];
    int k = 0;
    code[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_CPU);
    for (int i = 0; i < count; i++) {
        code[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)cpus[i], 0, 1);
        code[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, (unsigned)i);
    }
    code[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_RXHASH);
    code[k++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, (unsigned)count);
    code[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_A, 0);
    struct sock_fprog program = { .len = (unsigned short)k, .filter = code };
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &program, sizeof program) == 0 ? 0 : -errno;
}

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

void cshim_set_udp_segment(struct msghdr *message, void *control, uint16_t size) {
    memset(control, 0, CMSG_SPACE(sizeof(uint16_t)));
    message->msg_control = control;
    message->msg_controllen = CMSG_SPACE(sizeof(uint16_t));
    struct cmsghdr *c = CMSG_FIRSTHDR(message);
    c->cmsg_level = IPPROTO_UDP;
    c->cmsg_type = UDP_SEGMENT;
    c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    memcpy(CMSG_DATA(c), &size, sizeof(size));
}

int cshim_path_mtu(int fd, int ipv6) {
    int mtu = 0;
    socklen_t length = sizeof(mtu);
    int rc = ipv6 ? getsockopt(fd, IPPROTO_IPV6, IPV6_MTU, &mtu, &length) : getsockopt(fd, IPPROTO_IP, IP_MTU, &mtu, &length);
    return rc == 0 ? mtu : -errno;
}
