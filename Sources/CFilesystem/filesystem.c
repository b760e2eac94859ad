#define _GNU_SOURCE
#include "cfilesystem.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <linux/openat2.h>

int cfs_bind_mount(const char *src, const char *dst) {
    return mount(src, dst, "none", MS_BIND, NULL) == 0 ? 0 : -errno;
}

int cfs_umount_detach(const char *path) {
    return umount2(path, MNT_DETACH) == 0 ? 0 : -errno;
}

int cfs_open_beneath(int dirfd, const char *path, int flags, unsigned int mode) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (unsigned long long)(flags | O_CLOEXEC | O_NOFOLLOW);
    how.mode = (flags & O_CREAT) ? mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    return fd < 0 ? -errno : (int)fd;
}

int cfs_mknod_whiteout(int dirfd, const char *name) {
    return mknodat(dirfd, name, S_IFCHR | 0000, makedev(0, 0)) == 0 ? 0 : -errno;
}

int cfs_is_whiteout(unsigned int mode, unsigned long rdev) {
    return S_ISCHR(mode) && major(rdev) == 0 && minor(rdev) == 0;
}

int cfs_mount_overlay(const char *target, const char *options) {
    return mount("overlay", target, "overlay", 0, options) == 0 ? 0 : -errno;
}

int cfs_set_opaque(int fd) {
    return fsetxattr(fd, "trusted.overlay.opaque", "y", 1, 0) == 0 ? 0 : -errno;
}

int cfs_is_opaque(int fd) {
    char value[4];
    ssize_t n = fgetxattr(fd, "trusted.overlay.opaque", value, sizeof value);
    if (n < 0) return (errno == ENODATA || errno == ENOTSUP) ? 0 : -errno;
    return n == 1 && value[0] == 'y';
}
