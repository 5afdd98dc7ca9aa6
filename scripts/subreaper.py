#!/usr/bin/env python3
"""Run a command (libvirtd in the foreground) as the child of a process that reaps every orphan.

    subreaper.py [--setsid] [--child-pidfile PATH] COMMAND [ARG...]

On machines where PID 1 is not an init, orphaned QEMU processes are reaped late, and virDomainDestroy waits
for that: about 2 s per domain. As a child subreaper (PR_SET_CHILD_SUBREAPER) this process inherits those
orphans and reaps them at once (about 0.2 s). SIGTERM and SIGINT are passed on to the command; the exit
status is the command's.

When the command exits while adopted processes are still running (guests outlive a libvirtd restart), this
process stays to reap them, then exits with the command's status: their destroy stays fast after the
restart too. SIGTERM or SIGINT at that point makes it exit at once (the guests go on, adopted by PID 1).

--setsid: start a new session first, so that signals to the caller's process group (Ctrl-C in a terminal,
a job control group ended) do not reach the daemon or its guests. --child-pidfile: write the command's pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    pidfile = None
    while argv[:1] in (["--setsid"], ["--child-pidfile"]):
        if argv[0] == "--setsid":
            with contextlib.suppress(PermissionError):  # already a process group leader: keep its session
                os.setsid()
            argv = argv[1:]
        elif len(argv) >= 2:
            pidfile, argv = argv[1], argv[2:]
        else:
            argv = []
    if not argv:
        print("usage: subreaper.py [--setsid] [--child-pidfile PATH] COMMAND [ARG...]", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"subreaper: prctl failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)

    child = 0  # the command's pid; 0 before the fork and once it has exited
    pending: list[int] = []  # signals received before the fork

    def forward(signum: int, _frame: object) -> None:
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)
        elif status is None:
            pending.append(signum)
        else:
            sys.exit(status)

    status: int | None = None
    # Handlers first, so that a signal during start-up is not lost; exec gives the command default handlers.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as error:
            print(f"subreaper: cannot run {argv[0]}: {error}", file=sys.stderr)
            os._exit(127)
    child = pid
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(f"{child}\n")
    for signum in pending:
        os.kill(child, signum)

    while True:
        try:
            reaped, raw = os.wait()  # any child: the command or an adopted orphan
        except ChildProcessError:
            break
        if reaped == child:
            code = os.waitstatus_to_exitcode(raw)
            status = 128 - code if code < 0 else code
            child = 0
    return 1 if status is None else status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
