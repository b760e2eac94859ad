// Namespaces, threads, processes and signals: the calls Swift cannot make itself. Never
// define _GNU_SOURCE in a header Swift imports (it breaks SwiftGlibc; see the platform notes):
// the .c file defines it.
#ifndef NETCTL_CPROCESS_H
#define NETCTL_CPROCESS_H

#include <pthread.h>
#include <spawn.h>
#include <sys/types.h>

enum {
    CPROC_CLONE_NEWNET = 0x40000000,
    /// POSIX_SPAWN_SETSID (a GNU flag, hidden without _GNU_SOURCE).
    CPROC_POSIX_SPAWN_SETSID = 0x80,
};

/// setns(2); returns 0 or -errno.
int cproc_setns(int fd, int nstype);
/// unshare(2); returns 0 or -errno.
int cproc_unshare(int flags);
/// 1 if fd refers to a network namespace, 0 if it is another kind of file, -errno on error.
int cproc_is_netns(int fd);

/// Runs fn(ctx) on a new, dedicated OS thread and waits for it. Namespace switches (setns)
/// happen only on such threads, never on a Swift concurrency thread. Returns 0 or -errno.
int cproc_run_on_new_thread(void (*fn)(void *), void *ctx);
/// Starts fn(ctx) on a new joinable thread; 0 or -errno.
int cproc_thread_start(pthread_t *thread, void (*fn)(void *), void *ctx);
/// The CPUs a thread may run on (the calling thread's: pthread_self()), lowest first,
/// into cpus (up to max); returns how many, or -errno.
int cproc_thread_cpus(pthread_t thread, int *cpus, int max);
/// Lets a thread run only on the given CPUs; 0 or -errno.
int cproc_set_thread_cpus(pthread_t thread, const int *cpus, int count);
/// Gives the pages malloc holds free back to the system (malloc_trim).
void cproc_release_free_memory(void);

/// Makes the caller a child subreaper: orphans below it are reparented to it; 0 or -errno.
int cproc_set_child_subreaper(void);
/// Closes every descriptor from `low` up in the spawned child (glibc 2.34+); 0 or -errno.
int cproc_spawn_close_from(posix_spawn_file_actions_t *actions, int low);
/// Forwards `signal` to `cproc_set_signal_target`'s process, from a handler that only reads
/// a sig_atomic_t (async-signal-safe). 0 or -errno.
int cproc_forward_signal(int signal);
void cproc_set_signal_target(pid_t pid);

#endif
