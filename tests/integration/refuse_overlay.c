/* refuse_overlay ERRNO COMMAND [ARG...]: run COMMAND where the kernel refuses every overlay
 * mount with ERRNO (EPERM or EINVAL), as a kernel without overlay in user namespaces
 * (Linux < 5.11) does; every other filesystem mounts as usual (fuse-overlayfs's FUSE mount
 * too). For the fuse-overlayfs fallback's tests (tests/integration/test_rootless.py).
 *
 * A seccomp filter (x86_64) hands fsopen(2) and mount(2) to this program's supervisor
 * (SECCOMP_RET_USER_NOTIF, Linux >= 5.0): a filter alone cannot read the filesystem type, a
 * string in the caller's memory. The supervisor reads it from /proc/PID/mem and answers ERRNO
 * for "overlay", and lets any other call go on unchanged (SECCOMP_USER_NOTIF_FLAG_CONTINUE,
 * Linux >= 5.5). Run as root: the filter is loaded without no_new_privs (CAP_SYS_ADMIN), so
 * COMMAND may run setuid programs (runuser's user maps its ids with newuidmap). The
 * supervisor is the parent: it exits with COMMAND's status once COMMAND has exited.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOTIFY BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF)

static int load_filter(void) {
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_fsopen, 0, 1),
        NOTIFY,
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mount, 0, 1),
        NOTIFY,
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof(code) / sizeof(code[0]), code};
    return (int)syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER,
                        &prog);
}

/* Whether the string at `address` in process `pid` is "overlay". */
static int names_overlay(pid_t pid, unsigned long long address) {
    char path[64], text[16] = {0};
    if (address == 0)
        return 0; /* mount(2) without a type: a bind, a move, a propagation change */
    snprintf(path, sizeof path, "/proc/%d/mem", pid);
    int mem = open(path, O_RDONLY | O_CLOEXEC);
    if (mem < 0)
        return 0;
    ssize_t got = pread(mem, text, sizeof text - 1, (off_t)address);
    close(mem);
    return got >= 8 && memcmp(text, "overlay", 8) == 0;
}

static int answer(int listener, int refusal) {
    struct seccomp_notif req;
    struct seccomp_notif_resp resp;
    memset(&req, 0, sizeof req);
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &req) != 0)
        return errno == EINTR || errno == ENOENT ? 0 : -1;
    int arg = req.data.nr == __NR_fsopen ? 0 : 2; /* fsopen(name, ..), mount(.., .., type, ..) */
    int overlay = names_overlay((pid_t)req.pid, req.data.args[arg]);
    memset(&resp, 0, sizeof resp);
    resp.id = req.id;
    if (overlay)
        resp.error = -refusal;
    else
        resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) != 0 && errno != ENOENT)
        return -1; /* ENOENT: the caller was killed meanwhile */
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3 || (strcmp(argv[1], "EPERM") != 0 && strcmp(argv[1], "EINVAL") != 0)) {
        fprintf(stderr, "usage: %s EPERM|EINVAL COMMAND [ARG...]\n", argv[0]);
        return 2;
    }
    int refusal = strcmp(argv[1], "EPERM") == 0 ? EPERM : EINVAL;
    int listener = load_filter();
    if (listener < 0) {
        perror("refuse_overlay: seccomp");
        return 126;
    }
    pid_t child = fork();
    if (child == 0) {
        close(listener);
        execvp(argv[2], argv + 2);
        perror("refuse_overlay: exec");
        _exit(127);
    }
    int pidfd = (int)syscall(SYS_pidfd_open, child, 0);
    if (child < 0 || pidfd < 0) {
        perror("refuse_overlay: fork");
        return 126;
    }
    struct pollfd fds[2] = {{listener, POLLIN, 0}, {pidfd, POLLIN, 0}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("refuse_overlay: poll");
            return 126;
        }
        if (fds[1].revents & POLLIN)
            break;
        if ((fds[0].revents & POLLIN) && answer(listener, refusal) != 0) {
            perror("refuse_overlay: notification");
            return 126;
        }
    }
    int status;
    waitpid(child, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
