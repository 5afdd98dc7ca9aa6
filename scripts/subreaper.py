#!/usr/bin/env python3
"""Run a command (libvirtd in the foreground) as the child of a process that reaps every orphan.

On machines where PID 1 is not an init, orphaned QEMU processes are reaped late, and virDomainDestroy waits
for that: about 2 s per domain. As a child subreaper (PR_SET_CHILD_SUBREAPER) this process inherits those
orphans and reaps them at once (about 0.2 s). SIGTERM and SIGINT are passed on to the command; the exit
status is the command's.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: subreaper.py COMMAND [ARG...]", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"subreaper: prctl failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
    child = os.fork()
    if child == 0:
        os.execvp(sys.argv[1], sys.argv[1:])

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            return 1
        except InterruptedError:
            continue
        if pid == child:
            # Guests outlive a daemon restart: their QEMU processes go on, adopted by PID 1.
            code = os.waitstatus_to_exitcode(raw)
            return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
