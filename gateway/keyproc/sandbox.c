/*
 * What the key process gives up once its keys are loaded:
 *   - every file descriptor but its channels and stdin/stdout/stderr
 *     (closed by keyproc_start before the keys are read);
 *   - being dumped or ptraced by its own user (PR_SET_DUMPABLE 0), which
 *     also closes /proc/PID/mem to that user;
 *   - gaining privileges (PR_SET_NO_NEW_PRIVS) and every capability, so
 *     even when isgd starts as root the key process can only read and
 *     write what root owns, as any owner could;
 *   - the network and other programs: a seccomp filter makes socket(2),
 *     connect(2), bind(2), listen(2), accept(2), execve(2), ptrace(2), the
 *     process_vm_* calls, pidfd_getfd(2) and io_uring (whose operations
 *     reach sockets unseen by seccomp) fail with EPERM.
 * A denylist rather than an allowlist: the calls libc, the sanitizers and
 * valgrind make vary, the ones the key process must never make do not.
 */
#include <errno.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "keyproc/internal.h"

#if defined(__x86_64__)
#define SANDBOX_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define SANDBOX_ARCH AUDIT_ARCH_AARCH64
#endif

#ifdef SANDBOX_ARCH
#define DENY(nr)                                                                                   \
	BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1),                                           \
	    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA))

static int install_filter(void)
{
	struct sock_filter filter[] = {
	    /* Another architecture's calls (32-bit compat) are not what this filter names. */
	    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
	    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SANDBOX_ARCH, 1, 0),
	    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
	    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
#ifdef __x86_64__
	    /* x32 calls alias the x86-64 ones with this bit set. */
	    BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 0, 1),
	    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
#endif
	    DENY(__NR_socket),
	    DENY(__NR_socketpair),
	    DENY(__NR_connect),
	    DENY(__NR_bind),
	    DENY(__NR_listen),
	    DENY(__NR_accept),
	    DENY(__NR_accept4),
	    DENY(__NR_execve),
	    DENY(__NR_execveat),
	    DENY(__NR_ptrace),
	    DENY(__NR_process_vm_readv),
	    DENY(__NR_process_vm_writev),
	    /* Another process's descriptors (isgd's sockets) by pidfd. */
	    DENY(__NR_pidfd_getfd),
	    /* io_uring's operations (IORING_OP_SOCKET, CONNECT, ...) are not
	     * system calls: seccomp never sees them, so the ring itself is denied. */
	    DENY(__NR_io_uring_setup),
	    DENY(__NR_io_uring_enter),
	    DENY(__NR_io_uring_register),
	    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = (unsigned short)(sizeof(filter) / sizeof(filter[0])),
	                          .filter = filter};
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}
#else
static int install_filter(void)
{
	errno = ENOSYS; /* no filter for this architecture: refuse to run without one */
	return -1;
}
#endif

static int drop_capabilities(void)
{
	/* The bounding set first (needs CAP_SETPCAP, so only while we still have it). */
	for (int cap = 0; cap <= 63; cap++)
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL && errno != EPERM)
			return -1;
	struct __user_cap_header_struct head = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct data[2] = {{0}};
	return (int)syscall(SYS_capset, &head, data);
}

int keyproc_sandbox(const char **what)
{
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
		*what = "make itself undumpable";
		return -1;
	}
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
		*what = "forbid new privileges";
		return -1;
	}
	if (drop_capabilities() != 0) {
		*what = "drop its capabilities";
		return -1;
	}
	if (install_filter() != 0) {
		*what = "install its seccomp filter";
		return -1;
	}
	return 0;
}
