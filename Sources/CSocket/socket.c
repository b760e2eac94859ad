#define _GNU_SOURCE
#include "csocket.h"
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <string.h>
#include <linux/filter.h>

int csock_pipe2(int fds[2], int flags) { return pipe2(fds, flags) == 0 ? 0 : -errno; }

ssize_t csock_splice(int fd_in, int fd_out, size_t len, unsigned int flags) {
    ssize_t n = splice(fd_in, NULL, fd_out, NULL, len, flags);
    return n >= 0 ? n : -errno;
}

int csock_accept_nonblocking(int fd, struct sockaddr_storage *peer) {
    socklen_t length = sizeof(*peer);
    int client = accept4(fd, (struct sockaddr *)peer, peer ? &length : NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    return client >= 0 ? client : -errno;
}

int csock_set_pipe_size(int fd, int size) {
    int rc = fcntl(fd, F_SETPIPE_SZ, size);
    return rc >= 0 ? rc : -errno;
}

int csock_recvmmsg(int fd, struct csock_mmsghdr *messages, unsigned int count, int flags) {
    int n = recvmmsg(fd, (struct mmsghdr *)messages, count, flags, NULL);
    return n >= 0 ? n : -errno;
}

int csock_sendmmsg(int fd, struct csock_mmsghdr *messages, unsigned int count, int flags) {
    int n = sendmmsg(fd, (struct mmsghdr *)messages, count, flags);
    return n >= 0 ? n : -errno;
}

int csock_enable_pktinfo(int fd, int ipv6) {
    int one = 1;
    int rc = ipv6 ? setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one))
                  : setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
    return rc == 0 ? 0 : -errno;
}

int csock_pktinfo_destination(struct msghdr *message, struct sockaddr_storage *destination) {
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

void csock_set_pktinfo_source(struct msghdr *message, void *control, const struct sockaddr_storage *source) {
    memset(control, 0, CSOCK_PKTINFO_SPACE);
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

int csock_reuseport_by_cpu(int fd, const int *cpus, int count) {
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

void csock_set_udp_segment(struct msghdr *message, void *control, uint16_t size) {
    memset(control, 0, CMSG_SPACE(sizeof(uint16_t)));
    message->msg_control = control;
    message->msg_controllen = CMSG_SPACE(sizeof(uint16_t));
    struct cmsghdr *c = CMSG_FIRSTHDR(message);
    c->cmsg_level = IPPROTO_UDP;
    c->cmsg_type = UDP_SEGMENT;
    c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    memcpy(CMSG_DATA(c), &size, sizeof(size));
}

int csock_path_mtu(int fd, int ipv6) {
    int mtu = 0;
    socklen_t length = sizeof(mtu);
    int rc = ipv6 ? getsockopt(fd, IPPROTO_IPV6, IPV6_MTU, &mtu, &length) : getsockopt(fd, IPPROTO_IP, IP_MTU, &mtu, &length);
    return rc == 0 ? mtu : -errno;
}

int csock_recv_fd(int sock) {
    char data[256];
    struct iovec iov = { .iov_base = data, .iov_len = sizeof data };
    union { struct cmsghdr header; char space[CMSG_SPACE(sizeof(int))]; } control;
    struct msghdr message = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control, .msg_controllen = sizeof control };
    ssize_t n;
    do { n = recvmsg(sock, &message, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&message); c; c = CMSG_NXTHDR(&message, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int fd;
            memcpy(&fd, CMSG_DATA(c), sizeof fd);
            return fd;
        }
    }
    return -EBADMSG;
}
