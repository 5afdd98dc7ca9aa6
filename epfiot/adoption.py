"""Adopting an unmanaged domain (epfiot adopt vm): the manifest entry that describes it as it is, and the
ownership that makes it epfiot's. Pure: the CLI reads the host (epfiot.libvirt.adopt) and hands in what it saw.

The entry is made from what the planner compares (sizes, state, network, address, disk), and the spec hash
recorded in the ownership is the hash of that very entry, loaded as a manifest would be: a plan of a manifest
that holds the entry finds the domain as declared and changes nothing.

The naming rule is not bent: a domain is adopted under the name it has, which must be `<owner>.<name>`. One
named otherwise is not renamed behind anyone's back (a rename changes how other tools and people find it);
the error says how to rename it (virsh domrename, while it is shut off) and adopt it then.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from epfiot.errors import EpfiotError
from epfiot.model import NAME_PATTERN, Observed, ObservedVm, Ownership, PowerState, overlay_volume_name
from epfiot.units import format_mib

_NAME = re.compile(NAME_PATTERN)


class NotAdoptable(EpfiotError):
    """The domain cannot be taken under management as it is: nothing was changed."""


@dataclass(frozen=True)
class Adoption:
    domain: str  # the libvirt name, unchanged
    owner: str
    stack: str
    name: str
    entry: dict[str, Any]  # the manifest entry under vms:
    ownership: Ownership
    network_entry: dict[str, Any] | None = None  # the network it is on, as the loader needs it declared

    def describe(self) -> list[str]:
        """What epfiot will manage, in words."""
        e = self.entry
        lines = [
            f"domain {self.domain} becomes vm {self.owner}/{self.name} of stack {self.stack}; epfiot will manage:",
            f"  memory {e['memory']} (max {e.get('max_memory', e['memory'])}), vcpu {e['vcpu']} (max {e.get('max_vcpu', e['vcpu'])}), state {e['state']}",
            f"  network: {e.get('network', 'none')}" + (f", address {e['address']}" if "address" in e else ""),
            f"  disk: {'an overlay of ' + e['image'] if 'image' in e else 'none'}",
            f"From now on an apply of stack {self.stack} that does not declare it destroys it (once confirmed).",
        ]  # fmt: skip
        return lines


def resolve_name(given: str, owner: str, domains: set[str]) -> tuple[str, str]:
    """The domain `given` names (NAME, or OWNER.NAME) and its epfiot name; NotAdoptable when it does not
    follow the naming rule."""
    for label, value in (("owner", owner),):
        if not _NAME.match(value):
            raise NotAdoptable(f"{label} {value!r} is not a name (lower-case letters, digits and '-')")
    domain = given if given in domains or f"{owner}.{given}" not in domains else f"{owner}.{given}"
    if domain not in domains:
        raise NotAdoptable(f"no domain {given!r} on this host")
    prefix, dot, name = domain.partition(".")
    if dot and prefix == owner and _NAME.match(name):
        return domain, name
    suggestion = name if dot and _NAME.match(name) else _label(domain)
    raise NotAdoptable(
        f"domain {domain!r} does not follow epfiot's naming rule: the libvirt name of a VM is <owner>.<name> "
        f"({owner}.<name> here, <name> a DNS label). epfiot does not rename it for you; rename it while it is "
        f"shut off, then adopt it: virsh domrename {domain} {owner}.{suggestion} && epfiot adopt vm {owner}.{suggestion} --owner {owner} --stack STACK"
    )


def _label(text: str) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:40].strip("-")
    return label or "vm"


def adopt(vm: ObservedVm, name: str, owner: str, stack: str, observed: Observed, foreign: tuple[str, ...]) -> Adoption:
    """The adoption of the unmanaged domain `vm` as vm `owner`/`name` of `stack`; NotAdoptable (naming
    what stands in the way) when epfiot could not manage it as it is."""
    from epfiot.desired import load_manifest_text

    if not _NAME.match(stack):
        raise NotAdoptable(f"stack {stack!r} is not a name (lower-case letters, digits and '-')")
    if vm.ownership is not None:
        o = vm.ownership
        raise NotAdoptable(f"domain {vm.libvirt_name} is already managed by epfiot (vm {o.owner}/{o.name} of stack {o.stack})")
    problems = list(foreign)
    running = vm.state is not PowerState.SHUTOFF
    if running and (vm.live_vcpu, vm.live_max_vcpu or vm.max_vcpu) != (vm.vcpu, vm.max_vcpu):
        problems.append(f"its running instance has {vm.live_vcpu} vCPUs (max {vm.live_max_vcpu}), its definition {vm.vcpu} (max {vm.max_vcpu}): restart it first")
    if running and vm.live_max_memory_mib not in (None, vm.max_memory_mib):
        problems.append("its running instance's memory maximum differs from its definition's: restart it first")
    if vm.fault:
        problems.append(f"it is {vm.condition}: it cannot run as it is")
    entry: dict[str, Any] = {"name": name, "memory": format_mib(vm.memory_mib), "vcpu": vm.vcpu}
    if vm.max_memory_mib != vm.memory_mib:
        entry["max_memory"] = format_mib(vm.max_memory_mib)
    if vm.max_vcpu != vm.vcpu:
        entry["max_vcpu"] = vm.max_vcpu
    entry["state"] = vm.state.value
    network_entry = None
    if vm.network:
        net = next((n for n in observed.networks if n.libvirt_name == vm.network), None)
        if net is None or net.ownership is None or net.ownership.owner != owner or net.mode is None or not net.cidr:
            problems.append(f"its network {vm.network} is not one of {owner}'s epfiot networks")
        else:
            entry["network"] = net.ownership.name
            network_entry = {"name": net.ownership.name, "mode": net.mode.value, "cidr": net.cidr}
            reserved = [ip for mac, ip in net.dhcp_hosts if mac == vm.mac]
            if reserved:
                entry["address"] = reserved[0]
    if vm.disk_volume:
        backing = next((v.backing for v in observed.volumes if v.name == overlay_volume_name(owner, name)), None)
        if not backing:
            problems.append(f"its disk {vm.disk_volume} has no base image in the image pool")
        else:
            entry["image"] = backing.rsplit("/", 1)[-1]
    if problems:
        lines = [f"domain {vm.libvirt_name} cannot be adopted as it is: epfiot renders a VM's definition whole "
                 "from its template when it changes it, and would drop or change these parts:"]  # fmt: skip
        lines += [f"  {p}" for p in problems]
        lines.append("Remove them (virsh edit) or re-create the VM under epfiot; nothing was changed.")
        raise NotAdoptable("\n".join(lines))
    document: dict[str, Any] = {"version": 1, "stack": stack, "owner": owner, "vms": [entry]}
    if network_entry is not None:
        document["networks"] = [network_entry]
    spec = load_manifest_text(yaml.safe_dump(document, sort_keys=False), f"<adopt {vm.libvirt_name}>").vms[0]
    ownership = Ownership(owner, stack, name, spec_hash=spec.spec_hash(), shutdown_timeout=spec.shutdown_timeout)
    return Adoption(vm.libvirt_name, owner, stack, name, entry, ownership, network_entry)


def entry_yaml(adoption: Adoption) -> str:
    """The entry to add under `vms:` of the stack's manifest, with what it needs said in comments."""
    a = adoption
    lines = [f"# vm {a.owner}/{a.name}, adopted from domain {a.domain}: add it under vms: of stack {a.stack} (owner {a.owner})"]
    if a.network_entry is not None:
        lines.append(f"# it is on network {a.network_entry['name']}: give that network's manifest to plan and apply with this one")
    return "\n".join(lines) + "\n" + yaml.safe_dump([a.entry], sort_keys=False)
