// Filesystem calls Swift cannot make itself: mounts, openat2, overlay whiteouts and opaque
// directories. Never define _GNU_SOURCE in a header Swift imports: the .c file defines it.
#ifndef NETCTL_CFILESYSTEM_H
#define NETCTL_CFILESYSTEM_H

/// Bind-mounts src onto dst; 0 or -errno.
int cfs_bind_mount(const char *src, const char *dst);
/// Lazily unmounts path; 0 or -errno.
int cfs_umount_detach(const char *path);
/// Opens `path` below `dirfd` without following any symlink or leaving `dirfd`'s tree
/// (openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS): a layer entry can never write
/// outside the root it is unpacked into. The fd or -errno.
int cfs_open_beneath(int dirfd, const char *path, int flags, unsigned int mode);
/// An overlay whiteout (character device 0/0) named `name` in `dirfd`; 0 or -errno.
int cfs_mknod_whiteout(int dirfd, const char *name);
/// 1 if `mode`/`rdev` describe an overlay whiteout.
int cfs_is_whiteout(unsigned int mode, unsigned long rdev);
/// Sets the overlay "opaque" mark on a directory (trusted.overlay.opaque=y); 0 or -errno.
int cfs_set_opaque(int fd);
/// 1 if the directory carries the opaque mark, 0 if not, -errno on error.
int cfs_is_opaque(int fd);
/// Mounts an overlay at `target`; 0 or -errno.
int cfs_mount_overlay(const char *target, const char *options);

#endif
