// Detached helper processes, for work a short-lived caller (a CNI call, a CLI command)
// need not wait for: netlink deletions batched per network namespace, and descriptors whose
// last close waits on the kernel. Never define _GNU_SOURCE in a header Swift imports.
#ifndef NETCTL_CDETACHED_H
#define NETCTL_CDETACHED_H

#include <stddef.h>

/// Sends a netlink request from a detached process in `socket_fd`'s network namespace, and
/// waits for its kernel reply there, not here; that process repeats it every 100 ms until
/// the kernel says ENODEV (batching a burst: one per namespace, by a lock file in
/// `lock_directory`). 0 once it runs, or -errno.
int cdetached_send(int socket_fd, const void *datagram, size_t length, const char *lock_directory);
/// Gives copies of `fds` to a detached process that closes them once this process has
/// exited, so the last close (and any kernel work it waits for) happens there. 0 or -errno.
int cdetached_hold_until_exit(const int *fds, int count);

#endif
