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

/// Runs fn(ctx) on a new, dedicated OS thread and waits for it. Namespace switches (setns)
/// happen only on such threads, never on a Swift concurrency thread. Returns 0 or -errno.
int cshim_run_on_new_thread(void (*fn)(void *), void *ctx);

#endif
