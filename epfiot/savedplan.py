"""Saved plans: `epfiot plan -out FILE` writes what `epfiot apply FILE` applies, exactly, or refuses to.

A plan's steps carry the desired specs whole, secrets included (a password hash, a thing's keys, the seed's
content), so the file does not keep them. It keeps what proves that a new plan is the same plan:

- the manifests: the paths given (absolute) and a SHA-256 of every file read. apply FILE reads them again,
  from the same paths, and refuses when a file changed, appeared or went: secrets and seed contents are
  derived again from the manifests at apply time, as at plan time, and never written anywhere;
- the host it was planned against: its URI, image pool and domain type, and a fingerprint of the observed
  facts the plan was computed from: the domains, networks and volumes of the manifests' owners (their
  libvirt names start with "<owner>."), the domains on those networks, the base images the VMs name, the
  registry rows of the owners' things (their bootstrap status aside: a device bootstrapping changes no
  plan), the host's USB devices when a VM claims one, and the addresses of those domains. Each fact has its
  own digest, so a refusal names what changed;
- a digest of the plan itself (every action that changes something or waits, with its changes and steps,
  and the problems), checked against the plan made again at apply time: it also catches what no file
  shows, such as a password read from the environment or a {file:} key that changed since;
- the plan as `plan -o json` prints it, for people and tools that read the file. It holds no secret: plans
  show credentials only as digests.

Nothing here reads the host: the CLI hands in the manifests' Desired and the Observed the run saw (under the
host lock, before anything changes).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from epfiot import __version__
from epfiot.errors import EpfiotError
from epfiot.model import Desired, Observed
from epfiot.plan import Plan, Verb

FORMAT = "epfiot-plan"
VERSION = 1


class SavedPlanError(EpfiotError):
    """A saved plan cannot be read, or no longer applies: nothing was changed."""


@dataclass(frozen=True)
class HostSettings:
    """The host a plan was made for: apply FILE connects to the same."""

    uri: str
    image_pool: str
    image_dir: str
    virt_type: str | None


@dataclass(frozen=True)
class SavedPlan:
    host: HostSettings
    paths: tuple[str, ...]  # the manifests given to plan (-f), absolute
    manifests: Mapping[str, str]  # every file read (absolute) -> its SHA-256
    force: bool
    keep_disks: bool
    prune: bool
    targets: tuple[str, ...]
    facts: Mapping[str, str]  # observed fact -> its digest (fingerprint)
    plan_digest: str
    plan: Mapping[str, Any]  # as plan -o json prints it
    created: str = ""
    epfiot: str = __version__

    @property
    def destroys(self) -> bool:
        return any(a.get("action") == Verb.DESTROY.value for a in self.plan.get("actions", ()))


# --- digests -------------------------------------------------------------------------------------------


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def file_digests(files: Iterable[str]) -> dict[str, str]:
    """SHA-256 of each file; a file that cannot be read has none ("")."""
    digests = {}
    for name in sorted(files):
        try:
            digests[name] = "sha256:" + hashlib.sha256(Path(name).read_bytes()).hexdigest()
        except OSError:
            digests[name] = ""
    return digests


def observed_facts(desired: Desired, observed: Observed) -> dict[str, str]:
    """The observed facts a plan of `desired` depends on, each with its digest (module docstring)."""
    owners = {owner for owner, _stack in desired.scopes()}
    mine = tuple(f"{owner}." for owner in owners)
    facts: dict[str, str] = {}
    networks = {n.libvirt_name for n in observed.networks if n.libvirt_name.startswith(mine)}
    for net in observed.networks:
        if net.libvirt_name in networks:
            facts[f"network {net.libvirt_name}"] = _digest(repr(net))
    for vm in observed.vms:
        if vm.libvirt_name.startswith(mine) or vm.network in networks:
            addresses = observed.vm_addresses.get(vm.libvirt_name, ())
            facts[f"domain {vm.libvirt_name}"] = _digest(repr((vm, addresses)))
    images = {vm.image for vm in desired.vms if vm.image}
    for volume in observed.volumes:
        if volume.name.startswith(mine) or volume.name in images:
            facts[f"volume {volume.name}"] = _digest(repr(volume))
    facts["image pool"] = _digest(repr(observed.image_pool))
    names = {t.name for t in desired.things}
    for thing in observed.things:
        if thing.owner in owners or thing.name in names:
            facts[f"thing {thing.name}"] = _digest(repr(replace(thing, status="")))
    if any(vm.devices for vm in desired.vms):
        facts["usb devices"] = _digest(repr(sorted(observed.usb, key=repr)))
    return dict(sorted(facts.items()))


def plan_digest(plan: Plan, pool: tuple[str, str] | None) -> str:
    """What makes two plans the same plan: everything they would do (the unchanged resources aside)."""
    actions = [
        [a.kind.value, a.owner, a.stack, a.name, a.verb.value, a.reason, [[c.field, c.before, c.after, c.how] for c in a.changes],
         [step.describe() for step in a.steps], list(a.deleted_volumes), list(a.notes)]
        for a in plan.actions
        if a.verb is not Verb.NOOP
    ]  # fmt: skip
    data = {"actions": actions, "problems": list(plan.problems), "targets": list(plan.targets), "pool": pool}
    return _digest(json.dumps(data, sort_keys=True, default=str))


# --- the file --------------------------------------------------------------------------------------------


def write(path: Path, saved: SavedPlan) -> None:
    """Write `saved` to `path` (mode 0600, replaced whole: a reader never sees half a plan)."""
    data = {"format": FORMAT, "version": VERSION, "epfiot": saved.epfiot, "created": saved.created or _now(),
            "host": vars(saved.host), "manifests": {"paths": list(saved.paths), "files": dict(saved.manifests)},
            "options": {"force": saved.force, "keep_disks": saved.keep_disks, "prune": saved.prune, "targets": list(saved.targets)},
            "observed": dict(saved.facts), "plan_digest": saved.plan_digest, "plan": saved.plan}  # fmt: skip
    text = json.dumps(data, indent=2, default=str) + "\n"
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    except OSError as error:
        raise SavedPlanError(f"cannot write the plan to {path}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read(path: Path) -> SavedPlan:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SavedPlanError(f"{path}: no such file (save a plan with: epfiot plan -f PATH -out {path})") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise SavedPlanError(f"{path}: not a saved epfiot plan ({error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SavedPlanError(f"{path}: not a saved epfiot plan (epfiot plan -out writes them)")
    if data.get("version") != VERSION:
        raise SavedPlanError(f"{path}: a saved plan of format version {data.get('version')}; this epfiot reads version {VERSION}")
    if data.get("epfiot") != __version__:
        raise SavedPlanError(f"{path}: saved by epfiot {data.get('epfiot')}, this is {__version__}: make the plan again with this one")
    try:
        host, manifests, options = data["host"], data["manifests"], data["options"]
        return SavedPlan(
            host=HostSettings(str(host["uri"]), str(host["image_pool"]), str(host["image_dir"]), host.get("virt_type")),
            paths=tuple(str(p) for p in manifests["paths"]),
            manifests={str(k): str(v) for k, v in manifests["files"].items()},
            force=bool(options["force"]),
            keep_disks=bool(options["keep_disks"]),
            prune=bool(options["prune"]),
            targets=tuple(str(t) for t in options["targets"]),
            facts={str(k): str(v) for k, v in data["observed"].items()},
            plan_digest=str(data["plan_digest"]),
            plan=data["plan"],
            created=str(data.get("created", "")),
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise SavedPlanError(f"{path}: a saved plan with a missing or malformed part ({error})") from None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# --- checks ------------------------------------------------------------------------------------------


def check_manifests(path: Path, saved: SavedPlan, files_read: Iterable[str]) -> None:
    """Raises SavedPlanError unless the manifests read now are those the plan was made from."""
    now = file_digests(files_read)
    changed = sorted(f for f in saved.manifests.keys() & now.keys() if saved.manifests[f] != now[f])
    gone = sorted(saved.manifests.keys() - now.keys())
    new = sorted(now.keys() - saved.manifests.keys())
    what = [f"changed: {f}" for f in changed] + [f"gone: {f}" for f in gone] + [f"not there then: {f}" for f in new]
    if what:
        raise SavedPlanError(_stale(path, "the manifests changed since the plan was made", what))


def check_host(path: Path, saved: SavedPlan, desired: Desired, observed: Observed, plan: Plan, pool: tuple[str, str] | None) -> None:
    """Raises SavedPlanError unless the host is as it was when the plan was made and the plan made now is
    the saved one."""
    now = observed_facts(desired, observed)
    then = saved.facts
    what = [f"changed: {k}" for k in sorted(then.keys() & now.keys()) if then[k] != now[k]]
    what += [f"gone: {k}" for k in sorted(then.keys() - now.keys())]
    what += [f"new: {k}" for k in sorted(now.keys() - then.keys())]
    if what:
        raise SavedPlanError(_stale(path, "the host changed since the plan was made", what))
    if plan_digest(plan, pool) != saved.plan_digest:
        reason = ("the plan made now differs from the saved one, with the same manifests and host: a secret read "
                  "from the environment or a file, or the host's USB policy, changed since")  # fmt: skip
        raise SavedPlanError(_stale(path, reason, []))


def _stale(path: Path, reason: str, what: list[str]) -> str:
    lines = [f"{path}: {reason}; nothing was applied. Make a new plan (epfiot plan -out {path}) and review it."]
    shown = what[:20]
    lines += [f"  {line}" for line in shown]
    if len(what) > len(shown):
        lines.append(f"  ... and {len(what) - len(shown)} more")
    return "\n".join(lines)
