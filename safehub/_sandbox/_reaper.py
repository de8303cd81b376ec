"""A tiny supervisor for backends without a pid namespace (landlock, process).

Run by the host as ``python -I -S -B _reaper.py CONFINE_JSON RUNNER_DIR OPTIONS_JSON COMMAND...``
(OPTIONS: "pidns": a pid namespace for the command; "cgroup_procs": the
cgroup.procs file of a pids cgroup the command joins before anything else)
(host code, never repo code). Its child applies CONFINE_JSON to itself with
RUNNER_DIR/_confine.py (rlimits, Landlock, no_new_privs...) and only then execs
COMMAND, so the confinement holds whatever COMMAND is. It makes itself a child subreaper, so every process the command
starts, daemons included, stays its descendant. When the command exits, or the
host sends SIGTERM, or the host dies, it SIGKILLs everything below it and exits
only once nothing is left: when the host sees it gone, the tree is gone.

Under Landlock ABI >= 6 the sandbox cannot signal this process (signal scoping);
in its own pid namespace (root only) it cannot even name it.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWPID = 0x20000000


def _children() -> list:
    pids = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids += [int(p) for p in f.read().split()]
        return pids
    except OSError:
        pass
    me = str(os.getpid())
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        pids.append(int(name))
            except (OSError, IndexError):
                pass
    return pids


def _kill_all() -> None:
    while True:
        for pid in _children():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return


def _on_signal(signum, frame):  # noqa: ARG001
    _kill_all()
    os._exit(128 + signal.SIGKILL)


def main() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("safehub reaper: prctl(PR_SET_CHILD_SUBREAPER) failed", file=sys.stderr)
        return 125
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the host died before we got here
        return 125
    import json

    config = json.loads(sys.argv[1])
    sys.path.insert(0, sys.argv[2])
    import _confine

    options = json.loads(sys.argv[3])
    argv = sys.argv[4:]
    if options.get("pidns"):
        # The command becomes pid 1 of a new pid namespace: host pids are neither
        # visible nor signalable from inside, and when it exits the kernel kills
        # everything else in the namespace. Needs CAP_SYS_ADMIN (root), not a
        # user namespace.
        if libc.unshare(CLONE_NEWPID) != 0:
            print(f"safehub reaper: unshare(CLONE_NEWPID) failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
            return 125
    pid = os.fork()
    if pid == 0:
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            if options.get("cgroup_procs"):
                # Join the job's pids cgroup ("0": the writing process) before
                # Landlock hides /sys: every descendant is counted and capped.
                with open(options["cgroup_procs"], "w") as f:
                    f.write("0")
            os.setsid()
            _confine.apply(config)
            os.execv(argv[0], argv)
        except BaseException as exc:  # noqa: BLE001
            os.write(2, f"safehub reaper: could not start the sandboxed command: {exc}\n".encode())
        finally:
            os._exit(126)
    status = 0
    while True:
        try:
            done, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if done == pid:
            status = st
            break
    _kill_all()
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    os._exit(main())
