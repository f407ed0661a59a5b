/* syscall_probe NAME [ARG]: make one system call a RUN step should or should not be allowed,
 * print "NAME ERRNO" (0: it worked) and exit 0. Built static at test time
 * (tests/integration/test_seccomp.py), so it runs in the busybox image. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define KEY_SPEC_USER_KEYRING -4
#define KEY_SPEC_SESSION_KEYRING -3
#define KEYCTL_READ 11
#define KEYCTL_INVALIDATE 21

static long child_of(long pid) {
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid((pid_t)pid, NULL, 0);
    return pid;
}

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "";
    long arg = argc > 2 ? atol(argv[2]) : 0;
    char buf[256] = {0};
    long attr[32] = {0}; /* zeroed bpf_attr, perf_event_attr, io_uring_params, clone_args */
    long r;
    errno = 0;
    if (!strcmp(name, "add_key")) /* into the session keyring: the step's own */
        r = syscall(SYS_add_key, "user", "stepbuild-probe", "x", 1, KEY_SPEC_SESSION_KEYRING);
    else if (!strcmp(name, "host_key")) /* on the host: a secret in root's user keyring */
        r = syscall(SYS_add_key, "user", "stepbuild-probe", "hostsecret", 10,
                    KEY_SPEC_USER_KEYRING);
    else if (!strcmp(name, "keyctl_read"))
        r = syscall(SYS_keyctl, KEYCTL_READ, arg, buf, sizeof buf - 1, 0);
    else if (!strcmp(name, "keyctl_invalidate"))
        r = syscall(SYS_keyctl, KEYCTL_INVALIDATE, arg, 0, 0, 0);
    else if (!strcmp(name, "unshare_user"))
        r = unshare(CLONE_NEWUSER);
    else if (!strcmp(name, "unshare_files")) /* allowed: only CLONE_NEWUSER is refused */
        r = unshare(CLONE_FILES);
    else if (!strcmp(name, "clone_user"))
        r = child_of(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
    else if (!strcmp(name, "clone3"))
        r = child_of(syscall(SYS_clone3, attr, 88));
    else if (!strcmp(name, "fork"))
        r = child_of(fork());
    else if (!strcmp(name, "io_uring_setup"))
        r = syscall(SYS_io_uring_setup, 1, attr);
    else if (!strcmp(name, "bpf"))
        r = syscall(SYS_bpf, 0, attr, 72); /* BPF_MAP_CREATE */
    else if (!strcmp(name, "perf_event_open")) {
        ((unsigned *)attr)[1] = 128; /* attr.size; type 0 = PERF_TYPE_HARDWARE */
        r = syscall(SYS_perf_event_open, attr, 0, -1, -1, 0);
    } else if (!strcmp(name, "kexec_load"))
        r = syscall(SYS_kexec_load, 0, 0, 0, 0);
    else {
        fprintf(stderr, "syscall_probe: unknown call %s\n", name);
        return 2;
    }
    if (r >= 0 && !strcmp(name, "host_key"))
        printf("%ld\n", r);
    else if (r >= 0 && !strcmp(name, "keyctl_read"))
        printf("%s %d %s\n", name, 0, buf);
    else
        printf("%s %d\n", name, r < 0 ? errno : 0);
    return 0;
}
