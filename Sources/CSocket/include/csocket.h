// Sockets and splice: what the proxy needs beyond Glibc (splice, accept4, pipe2 and
// recvmmsg/sendmmsg are _GNU_SOURCE calls; control messages are macros). Never define
// _GNU_SOURCE in a header Swift imports: the .c file defines it.
#ifndef NETCTL_CSOCKET_H
#define NETCTL_CSOCKET_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

/// pipe2(2); 0 or -errno.
int csock_pipe2(int fds[2], int flags);
/// splice(2) between two descriptors (no offsets); bytes moved or -errno.
ssize_t csock_splice(int fd_in, int fd_out, size_t len, unsigned int flags);
enum { CSOCK_SPLICE_F_MOVE = 1, CSOCK_SPLICE_F_NONBLOCK = 2, CSOCK_SPLICE_F_MORE = 4 };
/// F_SETPIPE_SZ; the pipe's new capacity or -errno.
int csock_set_pipe_size(int fd, int size);
/// accept4(2) with SOCK_NONBLOCK | SOCK_CLOEXEC; the new fd or -errno.
int csock_accept_nonblocking(int fd, struct sockaddr_storage *peer);

/// struct mmsghdr, declared here without _GNU_SOURCE (same layout).
struct csock_mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};
/// recvmmsg(2)/sendmmsg(2) without a timeout; messages handled or -errno.
int csock_recvmmsg(int fd, struct csock_mmsghdr *messages, unsigned int count, int flags);
int csock_sendmmsg(int fd, struct csock_mmsghdr *messages, unsigned int count, int flags);

/// Asks for the destination address of each received datagram (IP_PKTINFO or
/// IPV6_RECVPKTINFO); 0 or -errno.
int csock_enable_pktinfo(int fd, int ipv6);
/// The destination address a received message carried in its packet info (port 0);
/// 1 if found, 0 if not.
int csock_pktinfo_destination(struct msghdr *message, struct sockaddr_storage *destination);
/// Fills `control` (capacity CSOCK_PKTINFO_SPACE) with packet info that makes the kernel
/// send from `source`, and points the message at it.
void csock_set_pktinfo_source(struct msghdr *message, void *control, const struct sockaddr_storage *source);
enum { CSOCK_PKTINFO_SPACE = 64 };
/// Fills `control` (capacity CSOCK_PKTINFO_SPACE) with UDP_SEGMENT, which makes the kernel
/// send the message's bytes as datagrams of `size` bytes (the last may be shorter), and
/// points the message at it.
void csock_set_udp_segment(struct msghdr *message, void *control, uint16_t size);
/// The path MTU of a connected socket (IP_MTU or IPV6_MTU), or -errno.
int csock_path_mtu(int fd, int ipv6);

// Receives one descriptor sent with SCM_RIGHTS (runc's --console-socket hands over the
// terminal's master this way); the descriptor, or -errno.
int csock_recv_fd(int sock);

/// Attaches a classic BPF program to the SO_REUSEPORT group of a listening socket: the
/// group's i-th socket (in the order they started listening) takes the connections whose
/// SYN was processed on cpus[i]; any other goes by packet hash to one of the first `count`.
/// A socket that joins the group later is never chosen. 0 or -errno.
int csock_reuseport_by_cpu(int fd, const int *cpus, int count);

#endif
