// Small C forwarders for what Swift cannot call directly. Never define _GNU_SOURCE here:
// this header is imported by Swift, and _GNU_SOURCE breaks SwiftGlibc (see platform notes).
#ifndef NETCTL_CSHIM_H
#define NETCTL_CSHIM_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <pthread.h>
#include <spawn.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/if_link.h>
#include <linux/if_addr.h>
#include <linux/veth.h>

enum {
    CSHIM_CLONE_NEWNET = 0x40000000,
    CSHIM_CLONE_NEWNS = 0x00020000,
};

/// setns(2); returns 0 or -errno.
int cshim_setns(int fd, int nstype);
/// unshare(2); returns 0 or -errno.
int cshim_unshare(int flags);
/// 1 if fd refers to a network namespace, 0 if it is another kind of file, -errno on error.
int cshim_is_netns(int fd);
/// Bind-mounts src onto dst; 0 or -errno.
int cshim_bind_mount(const char *src, const char *dst);
/// Lazily unmounts path; 0 or -errno.
int cshim_umount_detach(const char *path);
pid_t cshim_gettid(void);
/// pipe2(2); 0 or -errno.
int cshim_pipe2(int fds[2], int flags);
/// Gives the pages malloc holds free back to the system (malloc_trim).
void cshim_release_free_memory(void);

/// Runs fn(ctx) on a new, dedicated OS thread and waits for it. Namespace switches (setns)
/// happen only on such threads, never on a Swift concurrency thread. Returns 0 or -errno.
int cshim_run_on_new_thread(void (*fn)(void *), void *ctx);

/// Sends a netlink request from a detached process in `socket_fd`'s network namespace, and
/// waits for its kernel reply there, not here; that process repeats it every 100 ms until
/// the kernel says ENODEV (batching a burst: one per namespace, by a lock file in
/// `lock_directory`). 0 once it runs, or -errno.
int cshim_send_detached(int socket_fd, const void *datagram, size_t length, const char *lock_directory);

/// Gives copies of `fds` to a detached process that closes them once this process has
/// exited, so the last close (and any kernel work it waits for) happens there. 0 or -errno.
int cshim_hold_until_exit(const int *fds, int count);

// MARK: Proxy: splice, accept4, batched UDP, packet info.

/// splice(2) between two descriptors (no offsets); bytes moved or -errno.
ssize_t cshim_splice(int fd_in, int fd_out, size_t len, unsigned int flags);
enum { CSHIM_SPLICE_F_MOVE = 1, CSHIM_SPLICE_F_NONBLOCK = 2, CSHIM_SPLICE_F_MORE = 4 };
/// accept4(2) with SOCK_NONBLOCK | SOCK_CLOEXEC; the new fd or -errno.
int cshim_accept_nonblocking(int fd, struct sockaddr_storage *peer);
/// F_SETPIPE_SZ; the pipe's new capacity or -errno.
int cshim_set_pipe_size(int fd, int size);

/// struct mmsghdr, declared here without _GNU_SOURCE (same layout).
struct cshim_mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};
/// recvmmsg(2)/sendmmsg(2) without a timeout; messages handled or -errno.
int cshim_recvmmsg(int fd, struct cshim_mmsghdr *messages, unsigned int count, int flags);
int cshim_sendmmsg(int fd, struct cshim_mmsghdr *messages, unsigned int count, int flags);

/// Asks for the destination address of each received datagram (IP_PKTINFO or
/// IPV6_RECVPKTINFO); 0 or -errno.
int cshim_enable_pktinfo(int fd, int ipv6);
/// The destination address a received message carried in its packet info (port 0);
/// 1 if found, 0 if not.
int cshim_pktinfo_destination(struct msghdr *message, struct sockaddr_storage *destination);
/// Fills `control` (capacity CSHIM_PKTINFO_SPACE) with packet info that makes the kernel
/// send from `source`, and points the message at it.
void cshim_set_pktinfo_source(struct msghdr *message, void *control, const struct sockaddr_storage *source);
enum { CSHIM_PKTINFO_SPACE = 64 };
/// Fills `control` (capacity CSHIM_PKTINFO_SPACE) with UDP_SEGMENT, which makes the kernel
/// send the message's bytes as datagrams of `size` bytes (the last may be shorter), and
/// points the message at it.
void cshim_set_udp_segment(struct msghdr *message, void *control, uint16_t size);
/// The path MTU of a connected socket (IP_MTU or IPV6_MTU), or -errno.
int cshim_path_mtu(int fd, int ipv6);

/// Starts fn(ctx) on a new joinable thread; 0 or -errno.
int cshim_thread_start(pthread_t *thread, void (*fn)(void *), void *ctx);
/// The CPUs a thread may run on (the calling thread's: pthread_self()), lowest first,
/// into cpus (up to max); returns how many, or -errno.
int cshim_thread_cpus(pthread_t thread, int *cpus, int max);
/// Lets a thread run only on the given CPUs; 0 or -errno.
int cshim_set_thread_cpus(pthread_t thread, const int *cpus, int count);
/// Attaches a classic BPF program to the SO_REUSEPORT group of a listening socket: the
/// group's i-th socket (in the order they started listening) takes the connections whose
/// SYN was processed on cpus[i]; any other goes by packet hash to one of the first `count`.
/// A socket that joins the group later is never chosen. 0 or -errno.
int cshim_reuseport_by_cpu(int fd, const int *cpus, int count);

// MARK: Images and containers.

/// Opens `path` below `dirfd` without following any symlink or leaving `dirfd`'s tree
/// (openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS): a layer entry can never write
/// outside the root it is unpacked into. The fd or -errno.
int cshim_open_beneath(int dirfd, const char *path, int flags, unsigned int mode);
/// An overlay whiteout (character device 0/0) named `name` in `dirfd`; 0 or -errno.
int cshim_mknod_whiteout(int dirfd, const char *name);
/// 1 if `mode`/`rdev` describe an overlay whiteout.
int cshim_is_whiteout(unsigned int mode, unsigned long rdev);
/// Sets the overlay "opaque" mark on a directory (trusted.overlay.opaque=y); 0 or -errno.
int cshim_set_opaque(int fd);
/// 1 if the directory carries the opaque mark, 0 if not, -errno on error.
int cshim_is_opaque(int fd);
/// Mounts an overlay at `target`; 0 or -errno.
int cshim_mount_overlay(const char *target, const char *options);
/// Makes the caller a child subreaper: orphans below it are reparented to it; 0 or -errno.
int cshim_set_child_subreaper(void);
/// Closes every descriptor from `low` up in the spawned child (glibc 2.34+); 0 or -errno.
int cshim_spawn_close_from(posix_spawn_file_actions_t *actions, int low);
/// Forwards `signal` to `cshim_set_signal_target`'s process, from a handler that only reads
/// a sig_atomic_t (async-signal-safe). 0 or -errno.
int cshim_forward_signal(int signal);
void cshim_set_signal_target(pid_t pid);
/// POSIX_SPAWN_SETSID (a GNU flag, hidden without _GNU_SOURCE).
enum { CSHIM_POSIX_SPAWN_SETSID = 0x80 };

#endif
