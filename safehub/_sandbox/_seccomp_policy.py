"""The seccomp policy every sandboxed job runs under: which system calls it may
make, and what the others answer. Data only; ``_seccomp.py`` compiles it.

Where it comes from
-------------------
* **Docker's default profile** (moby/profiles, ``seccomp/default.json``, read at
  commit cd3bed8 of 2026-06-30): an allowlist. :data:`DOCKER_ALLOW` is its
  unconditional allow set, the syscalls any unprivileged container may make, plus
  the arch-specific entries for x86_64 (``arch_prctl``) and arm64. The
  capability-gated entries (``CAP_SYS_ADMIN`` and friends) are left out: a
  safehub job holds no capability.
* **Flatpak's blocklist** (flatpak/flatpak, ``common/flatpak-run.c``,
  ``setup_seccomp``, read at 55ec5bd of 2026-08-21): the keyring, the NUMA
  calls, new namespaces and the mount family, ``clone3``, ``perf_event_open``,
  ``ptrace``, personality changes, ``modify_ldt``.

How it deviates, and why
------------------------
1. Syscalls on no list answer ``ENOSYS``, not Docker's ``EPERM``: a kernel that
   lacks a call answers ENOSYS, so libc falls back to an older call (glibc does
   this for ``fchmodat2``, ``clone3``, ``faccessat2``...) instead of failing;
   libseccomp 2.5.4 cannot name the newest syscalls, so they land here too.
   Every call this policy refuses *on purpose* is in :data:`DENY` with ``EPERM``
   (or the errno given there), whether Docker lists it or not.
2. Removed from Docker's allow set: ``ptrace``, ``process_vm_readv``/``writev``
   (Docker allows them on kernels >= 4.8; nothing in a model load needs to
   inspect another process, and ``kcmp``/``pidfd_getfd`` are already cap-gated),
   ``modify_ldt`` (Flatpak: a history of information leaks), ``listmount`` and
   ``statmount`` (the mount family; under Landlock they would show the host's
   mount table), and ``personality`` beyond querying or setting ``PER_LINUX``
   (Docker also allows ``PER_LINUX32`` and ``UNAME26``; Flatpak allows only the
   one personality, as here: ``ADDR_NO_RANDOMIZE`` and ``READ_IMPLIES_EXEC``
   would weaken the job's own hardening).
3. ``clone`` with any namespace flag, ``unshare`` and ``setns`` are refused
   (Docker: cap-gated; Flatpak: refused). Every backend has finished its own
   namespace setup before the filter is installed (bubblewrap installs it just
   before it execs the job; the Landlock/process supervisor after its
   ``unshare(CLONE_NEWPID)``).
4. ``io_uring_*`` are refused with EPERM (Docker leaves them out since 2023):
   io_uring runs file and socket operations from kernel workers, outside the
   checks above, and has been a steady source of kernel bugs.
5. Added to Flatpak's list: ``bpf``, ``userfaultfd``, ``kexec_*``, module
   loading, ``io_uring_*``, ``process_vm_*`` (Flatpak leaves these to the
   kernel's capability checks; Docker leaves them off its allowlist). ``mbind``,
   ``set_mempolicy``, ``get_mempolicy``, ``move_pages``, ``migrate_pages`` are
   refused as in Flatpak (Docker: ``CAP_SYS_NICE`` only).
6. No rule for the TIOCSTI/TIOCLINUX ioctls (Flatpak has one): under a
   default-deny policy libseccomp cannot refuse one ioctl request while
   allowing the rest (an unconditional allow absorbs it), and every backend
   starts the job in a new session without a controlling terminal
   (bubblewrap's ``--new-session``, the supervisor's ``setsid``): TIOCSTI
   needs one (CVE-2017-5226 was fixed the same way).
7. Per backend: under Landlock (no network or IPC namespace) ``socket()``
   answers ``EACCES`` (Landlock does not cover UDP or pathname unix sockets;
   ``socketpair`` still works), and System V IPC and POSIX message queues answer
   EPERM (those objects are per IPC namespace, so the host's would be reachable).
   Under bubblewrap the namespaces already cut both off. Elsewhere ``socket``
   takes Flatpak's families only (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK;
   others EAFNOSUPPORT), where Docker refuses just AF_ALG and AF_VSOCK: a model
   load needs no packet, crypto-API, vsock or bluetooth sockets, and each
   family is kernel code of its own. Allowed families match all 64 bits of the
   register (anything else is refused), so high bits cannot slip a family past
   the kernel's truncation to int, as they could past a bare ``> 40`` allow.
   ``socketpair`` takes AF_UNIX only, under every backend: the kernel creates a
   socket of the family before the pair fails, so it would reach the same code.

A foreign architecture (i386 or arm32 compat calls, the x32 ABI on x86_64)
kills the process: the filter only knows the native numbers.
"""

from __future__ import annotations

import errno

__all__ = ["DOCKER_ALLOW", "DENY", "LANDLOCK_DENY", "CLONE_NAMESPACE_FLAGS", "PER_LINUX", "PERSONALITY_QUERY"]

# moby/profiles seccomp/default.json, the unconditional SCMP_ACT_ALLOW names, plus
# its arch-gated entries for amd64 (arch_prctl) and arm64. 32-bit-only names are
# kept as Docker lists them: libseccomp skips what the target arch lacks.
DOCKER_ALLOW = frozenset("""
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod
chown chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64
clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64 close
close_range connect copy_file_range creat dup dup2 dup3 epoll_create epoll_create1
epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd
eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64
fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown
fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork
fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake
futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32
getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid
getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit
get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid
gettimeofday getuid getuid32 getxattr getxattrat inotify_add_watch inotify_init
inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents
io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit ipc
kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown
lchown32 lgetxattr link linkat listen listmount listxattr listxattrat llistxattr
_llseek lremovexattr lseek lsetxattr lstat lstat64 madvise map_shadow_stack
membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock
mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open
mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink
mremap mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause
pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll
ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease
pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink
readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages
removexattr removexattrat rename renameat renameat2 restart_syscall riscv_hwprobe
rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn
rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo
sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
sched_get_priority_min sched_getscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid
setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer
setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid
setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt
set_thread_area set_tid_address setuid setuid32 setxattr setxattrat shmat shmctl
shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn
socketcall socketpair splice stat stat64 statfs statfs64 statmount statx symlink
symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create
timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink
unlinkat uretprobe utime utimensat utimensat_time64 utimes vfork vmsplice wait4
waitid waitpid write writev
arch_prctl
arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls
""".split())

EPERM, ENOSYS = errno.EPERM, errno.ENOSYS

# Refused on purpose, under every backend: name -> (errno, why). These override
# DOCKER_ALLOW. ENOSYS where Flatpak and Docker use it so that libc falls back.
DENY: dict[str, tuple[int, str]] = {
    # The kernel keyring: the host's session and user keyrings (Kerberos tickets,
    # tokens) are reachable from any process that inherited them.
    "keyctl": (EPERM, "keyring"),
    "add_key": (EPERM, "keyring"),
    "request_key": (EPERM, "keyring"),
    # Kernel attack surface no model load needs.
    "io_uring_setup": (EPERM, "io_uring"),
    "io_uring_enter": (EPERM, "io_uring"),
    "io_uring_register": (EPERM, "io_uring"),
    "bpf": (EPERM, "bpf"),
    "perf_event_open": (EPERM, "perf"),
    "userfaultfd": (EPERM, "userfaultfd (kernel race widening)"),
    "lookup_dcookie": (EPERM, "profiling"),
    # Other processes' memory.
    "ptrace": (EPERM, "debugging other processes"),
    "process_vm_readv": (EPERM, "other processes' memory"),
    "process_vm_writev": (EPERM, "other processes' memory"),
    "kcmp": (EPERM, "other processes' state"),
    "pidfd_getfd": (EPERM, "other processes' descriptors"),
    "process_madvise": (EPERM, "other processes' memory"),
    # Namespaces (setup is done when the filter is installed).
    "unshare": (EPERM, "new namespaces"),
    "setns": (EPERM, "joining namespaces"),
    # The mount family.
    "mount": (EPERM, "mount"),
    "umount": (EPERM, "mount"),
    "umount2": (EPERM, "mount"),
    "pivot_root": (EPERM, "mount"),
    "chroot": (EPERM, "mount"),
    "open_tree": (ENOSYS, "mount"),
    "move_mount": (ENOSYS, "mount"),
    "fsopen": (ENOSYS, "mount"),
    "fsconfig": (ENOSYS, "mount"),
    "fsmount": (ENOSYS, "mount"),
    "fspick": (ENOSYS, "mount"),
    "mount_setattr": (ENOSYS, "mount"),
    "listmount": (EPERM, "mount table"),
    "statmount": (EPERM, "mount table"),
    # seccomp cannot look inside clone3's struct to check its flags (Docker, Flatpak).
    "clone3": (ENOSYS, "unfilterable namespace flags; libc falls back to clone"),
    # The kernel itself.
    "kexec_load": (EPERM, "kexec"),
    "kexec_file_load": (EPERM, "kexec"),
    "init_module": (EPERM, "kernel modules"),
    "finit_module": (EPERM, "kernel modules"),
    "delete_module": (EPERM, "kernel modules"),
    "create_module": (EPERM, "kernel modules"),
    "syslog": (EPERM, "kernel log"),
    "acct": (EPERM, "accounting"),
    "quotactl": (EPERM, "quota"),
    "quotactl_fd": (EPERM, "quota"),
    "uselib": (EPERM, "obsolete"),
    "modify_ldt": (EPERM, "information leaks (Flatpak)"),
    "vhangup": (EPERM, "terminals"),
    "swapon": (EPERM, "swap"),
    "swapoff": (EPERM, "swap"),
    "reboot": (EPERM, "reboot"),
    # NUMA calls Flatpak refuses ("scary VM/NUMA ops").
    "move_pages": (EPERM, "NUMA"),
    "migrate_pages": (EPERM, "NUMA"),
    "mbind": (EPERM, "NUMA"),
    "set_mempolicy": (EPERM, "NUMA"),
    "get_mempolicy": (EPERM, "NUMA"),
    "set_mempolicy_home_node": (EPERM, "NUMA"),
}

# Only under Landlock, which has no IPC or network namespace.
LANDLOCK_DENY: dict[str, tuple[int, str]] = {
    name: (EPERM, "System V IPC / POSIX message queues are per IPC namespace")
    for name in (
        "ipc", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop",
        "semtimedop_time64", "semctl", "shmget", "shmat", "shmdt", "shmctl", "mq_open",
        "mq_unlink", "mq_timedsend", "mq_timedsend_time64", "mq_timedreceive",
        "mq_timedreceive_time64", "mq_notify", "mq_getsetattr",
    )
}

# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
# CLONE_NEWPID | CLONE_NEWNET: Docker's mask. (CLONE_NEWTIME only works through clone3/unshare;
# in clone() that bit is part of the exit signal.)
CLONE_NAMESPACE_FLAGS = 0x7E020000
PER_LINUX = 0
PERSONALITY_QUERY = 0xFFFFFFFF
