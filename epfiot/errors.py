"""One error root. Expected errors are shown as one clear line; anything else is a bug and keeps its traceback.

Exit codes: 2 for usage and manifest errors, 1 for failures while planning or applying.
"""

from __future__ import annotations

from dataclasses import dataclass


class EpfiotError(Exception):
    """An expected error: the CLI prints it as is, without a traceback."""

    exit_code = 1


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
        count = len(self.problems)
        lines = [f"{count} problem{'s' if count != 1 else ''} in the manifests; nothing was changed:"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class UsageError(EpfiotError):
    exit_code = 2


class HostError(EpfiotError):
    """A libvirt call failed. `temporary` errors are worth retrying (daemon restarting, lock contention)."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class ConnectionFailed(HostError):
    def __init__(self, uri: str, detail: str) -> None:
        hint = "start one with: scripts/libvirtd.sh start" if uri.startswith("qemu:///") else ""
        message = f"cannot connect to libvirt at {uri}: {detail}"
        super().__init__(f"{message}; {hint}" if hint else message, temporary=True)
        self.uri = uri


class PlanError(EpfiotError):
    """The plan cannot be applied as a whole (conflicts, missing images, unmanaged name clashes)."""
