"""{file: PATH} secrets in manifests sent to the service: read by the service, which runs as root, so a
tenant could otherwise name a file it may not read (/etc/shadow) and have it become its VM's password.

For a tenant, every such file must be one the caller may read itself: over the Unix socket, the peer's uid
and groups are checked against the mode of the file and of every directory above it (ACLs are not asked:
they could only allow more); over HTTP there is no local user, so file secrets are refused (a token's
tenant sends {env: NAME} with the request, or {hash: ...}). The answer is the same whether the file exists
or not. The administrator's manifests are read as the CLI reads them.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from epfiot.api.secret_refs import secret_refs
from epfiot.desired.sources import SourceText
from epfiot.errors import ManifestProblem
from epfiot.hostconfig import Caller


def foreign_files(sources: tuple[SourceText, ...], caller: Caller, uid: int | None) -> list[ManifestProblem]:
    """A problem for each {file: PATH} secret of `sources` that `caller` (peer `uid`) may not read."""
    if caller.is_admin:
        return []
    problems = []
    for source in sources:
        for line, ref in secret_refs(source.text, "file"):
            path = Path(ref).expanduser()
            path = path if path.is_absolute() else source.directory / path
            if uid is None:
                message = f"{{file: {ref}}}: files are read on the service's host; through HTTP give {{env: NAME}} (sent with the request) or {{hash: ...}}"
            elif not readable_by(path, uid):
                message = f"cannot read secret file {path} as your user"
            else:
                continue
            problems.append(ManifestProblem(source.name, line, "", message))
    return problems


def readable_by(path: Path, uid: int) -> bool:
    """Whether user `uid` may read the file `path`: search permission on every directory above it, read
    permission on the file (its mode bits, for the user, its groups, or others)."""
    try:
        user = pwd.getpwuid(uid)
        groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    except KeyError:
        return False
    groups |= {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    real = Path(os.path.realpath(path))
    try:
        for directory in reversed(real.parents):
            if not _allowed(directory.stat(), uid, groups, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
                return False
        st = real.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and _allowed(st, uid, groups, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)


def _allowed(st: os.stat_result, uid: int, groups: set[int], user_bit: int, group_bit: int, other_bit: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & user_bit)
    if st.st_gid in groups:
        return bool(st.st_mode & group_bit)
    return bool(st.st_mode & other_bit)
