"""One error root. Expected errors are shown as one clear line; anything else is a bug and keeps its traceback.

Exit codes: 2 for usage and manifest errors, 1 for failures while planning or applying.

A failed action is retried according to its error, as kopf and controller-runtime do: a temporary error
(TemporaryError, or a HostError marked temporary: the daemon restarting, a lock held by another job) soon;
a permanent one (PermanentError) not until the action itself changes; any other error with a growing delay.
`retry_class` tells which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from epfiot.wording import counted

RetryClass = Literal["temporary", "permanent", "failed"]


class EpfiotError(Exception):
    """An expected error: the CLI prints it as is, without a traceback."""

    exit_code = 1
    temporary = False  # worth retrying soon, as it is
    permanent = False  # retrying the same action cannot succeed


class TemporaryError(EpfiotError):
    """Worth retrying soon, as it is (kopf's TemporaryError): `retry_after` seconds, when the error knows."""

    temporary = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(EpfiotError):
    """Retrying cannot help until what was asked changes (kopf's PermanentError, controller-runtime's
    TerminalError): watch holds the action until the manifests or the host make it a different one."""

    permanent = True


def retry_class(error: BaseException) -> RetryClass:
    if getattr(error, "permanent", False):
        return "permanent"
    if getattr(error, "temporary", False):
        return "temporary"
    return "failed"


@dataclass(frozen=True)
class ManifestProblem:
    """One problem in a manifest: where, which field, what."""

    file: str
    line: int
    path: str  # field path like "vms[0].memory"; "" for the document itself
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ManifestError(EpfiotError):
    """The manifests are invalid. Carries every problem found, not only the first."""

    exit_code = 2

    def __init__(self, problems: list[ManifestProblem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.path))
        lines = [f"{counted(len(self.problems), 'problem')} in the manifests; nothing was changed:"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class UsageError(EpfiotError):
    exit_code = 2


class HostError(EpfiotError):
    """A libvirt call failed. `temporary` errors are worth retrying (daemon restarting, lock contention)."""

    def __init__(self, message: str, *, temporary: bool = False, permanent: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.permanent = permanent


class ConnectionFailed(HostError):
    def __init__(self, uri: str, detail: str) -> None:
        hint = "start one with: scripts/libvirtd.sh start" if uri.startswith("qemu:///") else ""
        message = f"cannot connect to libvirt at {uri}: {detail}"
        super().__init__(f"{message}; {hint}" if hint else message, temporary=True)
        self.uri = uri


class PlanError(EpfiotError):
    """The plan cannot be applied as a whole (conflicts, missing images, unmanaged name clashes)."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems
