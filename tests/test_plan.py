"""The planner as a table: each case in tests/plan_cases/*.yaml gives desired and observed state and the
actions (with their steps, changes and notes) or problems expected.

Case format (defaults keep cases short: owner "alice", stack "s"):

    - name: what the case shows
      desired: {vms: [...], networks: [...], things: [...], stacks: [[owner, stack], ...]}
      observed: {vms: [...], networks: [...], volumes: [...], things: [...], usb: [...], vm_addresses: {...}}
      options: {force: true, keep_disks: true, prune: false}
      usb: [[owner, vm, selector index, nodedev or null], ...]      # how claims resolved
      seed_digests: {alice.vm1: sha256:...}
      deletion: true                                                # plan_deletion instead of make_plan
      rules: {asker: alice, tenants: [alice, bob], network_ranges: [10.128.0.0/16], quotas: {alice: {vms: 2}}}
      expect: [{vm: alice/vm1, verb: update, steps: [SetVcpus, DefineVm], changes: {vcpu: live}, notes: [...],
                step_args: {SetVcpus.count: 2}, unchanged: [memory_mib], reason: substring}]
      problems: [substring, ...]
      hidden: [bob, ...]                                            # in no problem, reason or note (another tenant's)
      then: [{network: old, verb: destroy}]                         # what a second apply still does

Desired objects take the field names of the model's dataclasses (max_vcpu defaults to vcpu, max_memory_mib
to memory_mib). An observed VM's ownership matches the desired VM of that name (same spec hash) unless the
case says `ownership: null` (unmanaged), `stack: other`, or `spec_hash: <anything else>`; its definition
defaults to the desired one and its running instance to its definition. A MAC (a VM's `mac`, a network's
`dhcp_hosts` entries) may be written as the name of the VM epfiot gives it to ("vm1", "bob.vm1"). Every action
that changes something must be listed in `expect`; no-ops may be listed to check their reason.

Every case without problems is also applied to its observed state by a small simulator of the host and
planned again: that second plan must change nothing (only no-ops and waits), beyond the case's `then:`, and
leave each VM it does not touch in its declared power state.
"""

from __future__ import annotations

import ipaddress
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from epfiot.addressing import dhcp_range
from epfiot.hostconfig import Quotas
from epfiot.model import (
    AttachedUsb,
    Credentials,
    Desired,
    HostUsbDevice,
    NetworkMode,
    NetworkSpec,
    Observed,
    ObservedNetwork,
    ObservedThing,
    ObservedVm,
    ObservedVolume,
    Ownership,
    PowerState,
    ResourceWriteSpec,
    StackSpec,
    ThingSpec,
    UsbId,
    UsbSelector,
    VmSpec,
    libvirt_name,
    overlay_volume_name,
    seed_volume_name,
)
from epfiot.plan import Action, HostRules, Kind, Options, Plan, UsbResolution, Verb, make_plan, plan_deletion
from epfiot.plan import steps as s

CASES = Path(__file__).parent / "plan_cases"
OWNER, STACK = "alice", "s"


CASE_KEYS = {"name", "desired", "observed", "options", "usb", "seed_digests", "deletion", "rules", "hidden", "expect", "problems", "then"}
EXPECT_KEYS = {*Kind, "verb", "steps", "changes", "unchanged", "notes", "reason", "step_args"}


def load_cases() -> list[tuple[str, dict[str, Any]]]:
    """Every case of every file; a misspelt key fails here rather than making a case check nothing."""
    cases = []
    for path in sorted(CASES.glob("*.yaml")):
        for case in yaml.safe_load(path.read_text()):
            case_id = f"{path.stem}: {case['name']}"
            assert set(case) <= CASE_KEYS, f"{case_id}: unknown keys {sorted(set(case) - CASE_KEYS)}"
            for e in case.get("expect", []) + case.get("then", []):
                assert set(e) <= EXPECT_KEYS, f"{case_id}: unknown expectation keys {sorted(set(e) - EXPECT_KEYS)}"
            assert "expect" in case, f"{case_id}: no expect (write expect: [] for a plan without changes)"
            cases.append((case_id, case))
    return cases


# --- building the model from case data ---------------------------------------------------------------------


def selector(data: dict[str, Any]) -> UsbSelector:
    return UsbSelector(
        id=UsbId.parse(data["id"]),
        aliases=tuple(UsbId.parse(a) for a in data.get("aliases", ())),
        serial=data.get("serial"),
        port=data.get("port"),
        required=data.get("required", True),
    )


def vm_spec(data: dict[str, Any]) -> VmSpec:
    d = {"owner": OWNER, "stack": STACK, "memory_mib": 64, "vcpu": 1, **data}
    d.setdefault("max_vcpu", d["vcpu"])
    d.setdefault("max_memory_mib", d["memory_mib"])
    d["state"] = PowerState(d.get("state", "running"))
    if "credentials" in d:
        credentials = dict(d["credentials"])
        credentials["ssh_authorized_keys"] = tuple(credentials.get("ssh_authorized_keys", ()))
        d["credentials"] = Credentials(**credentials)
    d["devices"] = tuple(selector(s) for s in d.get("devices", ()))
    return VmSpec(**d)


def network_spec(data: dict[str, Any]) -> NetworkSpec:
    d = {"owner": OWNER, "stack": STACK, "mode": "route", **data}
    d["mode"] = NetworkMode(d["mode"])
    return NetworkSpec(**d)


def thing_spec(data: dict[str, Any]) -> ThingSpec:
    d = {"owner": OWNER, "stack": STACK, **data}
    d["deletes"] = tuple(d.get("deletes", ("/0", "/1")))
    d["writes"] = tuple(ResourceWriteSpec(**w) for w in d.get("writes", ()))
    return ThingSpec(**d)


def desired_state(data: dict[str, Any]) -> Desired:
    vms = tuple(vm_spec(v) for v in data.get("vms", ()))
    networks = tuple(network_spec(n) for n in data.get("networks", ()))
    things = tuple(thing_spec(t) for t in data.get("things", ()))
    declared: tuple[VmSpec | NetworkSpec | ThingSpec, ...] = (*vms, *networks, *things)
    scopes = {(OWNER, STACK)} | {(x.owner, x.stack) for x in declared}
    scopes |= {(o, n) for o, n in data.get("stacks", ())}
    return Desired(tuple(StackSpec(o, n) for o, n in sorted(scopes)), vms, networks, things)


def attached(data: dict[str, Any]) -> AttachedUsb:
    return AttachedUsb(UsbId.parse(data["id"]), data.get("bus"), data.get("device"), data.get("required", True))


def observed_vm(data: dict[str, Any], desired: Desired) -> ObservedVm:
    d = dict(data)
    owner = d.pop("owner", OWNER)
    name = d.pop("name")
    spec = next((v for v in desired.vms if (v.owner, v.name) == (owner, name)), None)
    state = PowerState(d.pop("state", "running"))
    ownership_data = d.pop("ownership", "match")
    stack = d.pop("stack", spec.stack if spec else STACK)
    spec_hash = d.pop("spec_hash", "match")
    seed_digest = d.pop("seed_digest", "")
    if ownership_data is None:
        ownership = None
    else:
        recorded = spec.spec_hash() if spec is not None and spec_hash == "match" else str(spec_hash)
        timeout = d.pop("shutdown_timeout", spec.shutdown_timeout if spec is not None else None)
        # meta_owner / meta_name: metadata that names another object (a domain copied by hand)
        ownership = Ownership(d.pop("meta_owner", owner), stack, d.pop("meta_name", name), recorded, seed_digest, timeout)
    base = spec or vm_spec({"owner": owner, "name": name})
    vcpu = d.pop("vcpu", base.vcpu)
    max_vcpu = d.pop("max_vcpu", max(vcpu, base.max_vcpu))
    memory = d.pop("memory_mib", base.memory_mib)
    max_memory = d.pop("max_memory_mib", max(memory, base.max_memory_mib))
    active = state is not PowerState.SHUTOFF
    devices = tuple(attached(a) for a in d.pop("devices", ()))
    live_devices = d.pop("live_devices", None)
    vm = ObservedVm(
        libvirt_name=libvirt_name(owner, name),
        uuid="uuid-" + name,
        ownership=ownership,
        state=state,
        vcpu=vcpu,
        max_vcpu=max_vcpu,
        memory_mib=memory,
        max_memory_mib=max_memory,
        network=d.pop("network", libvirt_name(owner, base.network) if base.network else None),
        mac=mac_of(d.pop("mac")) if "mac" in d else (base.mac if base.network else None),
        disk_volume=d.pop("disk_volume", None),
        seed_volume=d.pop("seed_volume", None),
        devices=devices,
        live_vcpu=d.pop("live_vcpu", vcpu if active else None),
        live_memory_mib=d.pop("live_memory_mib", memory if active else None),
        live_max_memory_mib=d.pop("live_max_memory_mib", max_memory if active else None),
        live_max_vcpu=d.pop("live_max_vcpu", max_vcpu if active else None),
        live_devices=tuple(attached(a) for a in live_devices) if live_devices is not None else None,
        fault=d.pop("fault", None),
    )
    assert not d, f"unknown observed vm fields {sorted(d)}"
    return vm


def mac_of(text: str) -> str:
    """A MAC as written, or the MAC epfiot gives a VM named so ("vm1", or "bob.vm1" for another owner)."""
    if ":" in text:
        return text
    owner, _, name = text.rpartition(".")
    return vm_spec({"owner": owner or OWNER, "name": name}).mac


def observed_network(data: dict[str, Any], desired: Desired) -> ObservedNetwork:
    d = dict(data)
    owner, name = d.pop("owner", OWNER), d.pop("name")
    spec = next((n for n in desired.networks if (n.owner, n.name) == (owner, name)), None)
    ownership_data = d.pop("ownership", "match")
    ownership = None if ownership_data is None else Ownership(owner, d.pop("stack", STACK), name)
    start, end = dhcp_range(spec) if spec else (None, None)
    return ObservedNetwork(
        libvirt_name=d.pop("libvirt_name", libvirt_name(owner, name)),  # another for a network epfiot does not manage
        ownership=ownership,
        active=d.pop("active", True),
        mode=NetworkMode(d.pop("mode", spec.mode.value if spec else "route")),
        cidr=d.pop("cidr", spec.cidr if spec else "10.9.0.0/24"),
        dhcp_start=d.pop("dhcp_start", start),
        dhcp_end=d.pop("dhcp_end", end),
        dhcp_hosts=tuple((mac_of(mac), ip) for mac, ip in d.pop("dhcp_hosts", ())),
        subnets=tuple(d.pop("subnets", ())),
    )


def observed_thing(data: dict[str, Any]) -> ObservedThing:
    d: dict[str, Any] = {
        "owner": OWNER,
        "stack": STACK,
        "vm": None,
        "server_uri": None,
        "lifetime": 300,
        "binding": "U",
        **data,
    }
    d["deletes"] = tuple(d.get("deletes", ("/0", "/1")))
    d["writes"] = tuple(ResourceWriteSpec(**w) for w in d.get("writes", ()))
    return ObservedThing(**d)


def observed_volume(data: str | dict[str, Any]) -> ObservedVolume:
    """A volume of the image pool: its name, or {name, backing, capacity_gib} (backing: its base image's path)."""
    if isinstance(data, str):
        return ObservedVolume("images", data)
    capacity = int(data.get("capacity_gib", 0) * 1024**3)
    return ObservedVolume("images", data["name"], capacity, backing=data.get("backing"))


def observed_state(data: dict[str, Any], desired: Desired) -> Observed:
    usb = tuple(
        HostUsbDevice(
            nodedev=u["nodedev"],
            id=UsbId.parse(u["id"]),
            bus=u.get("bus", 1),
            device=u.get("device", 2),
            serial=u.get("serial"),
        )
        for u in data.get("usb", ())
    )
    things = tuple(observed_thing(t) for t in data.get("things", ()))
    return Observed(
        vms=tuple(observed_vm(v, desired) for v in data.get("vms", ())),
        networks=tuple(observed_network(n, desired) for n in data.get("networks", ())),
        usb=usb,
        volumes=tuple(observed_volume(v) for v in data.get("volumes", ())),
        things=things,
        vm_addresses={k: tuple(v) for k, v in data.get("vm_addresses", {}).items()},
        image_pool=data.get("image_pool", "images"),
    )


def host_rules(data: dict[str, Any] | None) -> HostRules | None:
    """The case's host rules: asker (a tenant; absent: the administrator), tenants, network_ranges, quotas."""
    if data is None:
        return None
    return HostRules(
        asker=data.get("asker"),
        tenants=frozenset(data.get("tenants", ())),
        network_ranges=tuple(ipaddress.ip_network(r) for r in data.get("network_ranges", ())),
        quotas={tenant: Quotas(**q) for tenant, q in data.get("quotas", {}).items()},
    )


def usb_resolution(data: list[list[Any]], desired: Desired, observed: Observed) -> UsbResolution:
    devices = {d.nodedev: d for d in observed.usb}
    assignments: dict[tuple[str, str, UsbSelector], HostUsbDevice | None] = {}
    for owner, vm_name, index, nodedev in data:
        spec = next(v for v in desired.vms if (v.owner, v.name) == (owner, vm_name))
        assignments[(owner, vm_name, spec.devices[index])] = devices[nodedev] if nodedev else None
    return UsbResolution(assignments)


# --- comparing -----------------------------------------------------------------------------------------------


def step_text(step: object) -> str:
    return type(step).__name__


def check_action(action: Action, expected: dict[str, Any]) -> None:
    where = f"{action.kind} {action.owner}/{action.name}"
    assert action.verb.value == expected["verb"], f"{where}: {action.verb} ({action.reason})"
    if "steps" in expected:
        actual = [step_text(s) for s in action.steps]
        assert actual == expected["steps"], f"{where}: steps {actual}"
    for field_name, how in expected.get("changes", {}).items():
        found = [c for c in action.changes if c.field == field_name]
        assert found, f"{where}: no change of {field_name} in {action.changes}"
        if how is not None:
            assert any(c.how == how for c in found), f"{where}: {field_name} changes {found}"
    for field_name in expected.get("unchanged", ()):
        assert not [c for c in action.changes if c.field == field_name], f"{where}: {field_name} changed"
    for note in expected.get("notes", ()):
        assert any(note in n for n in action.notes), f"{where}: no note with {note!r} in {action.notes}"
    if "reason" in expected:
        assert expected["reason"] in action.reason, f"{where}: reason {action.reason!r}"
    for key, value in expected.get("step_args", {}).items():
        step_name, _, attribute = key.partition(".")
        step = next(s for s in action.steps if type(s).__name__ == step_name)
        assert getattr(step, attribute) == value, f"{where}: {key} = {getattr(step, attribute)!r}"


def run_case(case: dict[str, Any]) -> Plan:
    desired = desired_state(case.get("desired", {}))
    observed = observed_state(case.get("observed", {}), desired)
    options = Options(**case.get("options", {}))
    if case.get("deletion"):
        return plan_deletion(desired, observed, options)
    usb = usb_resolution(case.get("usb", []), desired, observed)
    rules = host_rules(case.get("rules"))
    return make_plan(desired, observed, options, usb=usb, seed_digests=case.get("seed_digests", {}), rules=rules)


@pytest.mark.parametrize(("case_id", "case"), load_cases(), ids=[c[0] for c in load_cases()])
def test_plan_case(case_id: str, case: dict[str, Any]) -> None:
    plan = run_case(case)
    problems = case.get("problems", [])
    for text in problems:
        assert any(text in p for p in plan.problems), f"no problem with {text!r} in {plan.problems}"
    if not problems:
        assert plan.problems == (), plan.problems
    told = [*plan.problems, *(a.reason for a in plan.actions), *(n for a in plan.actions for n in a.notes)]
    for secret in case.get("hidden", []):
        assert not [t for t in told if secret in t], f"{secret!r} is told: {[t for t in told if secret in t]}"
    expected = {_key(e): e for e in case.get("expect", [])}
    actual = {f"{a.kind}:{a.owner}/{a.name}": a for a in plan.actions}
    assert len(actual) == len(plan.actions), f"two actions for one resource: {[a.address for a in plan.actions]}"
    for key, e in expected.items():
        assert key in actual, f"no action for {key}; actions: {sorted(actual)}"
        check_action(actual[key], e)
    unexpected = [k for k, a in actual.items() if a.verb is not Verb.NOOP and k not in expected]
    assert unexpected == [], f"actions not in the case: {unexpected}"


def _key(expected: dict[str, Any]) -> str:
    for kind in Kind:
        if kind in expected:
            owner_name = expected[kind] if "/" in expected[kind] else f"{OWNER}/{expected[kind]}"
            return f"{kind}:{owner_name}"
    raise AssertionError(f"expectation without vm/network/thing: {expected}")


def test_cases_exist() -> None:
    assert len(load_cases()) >= 30


def test_field_names_used_by_the_loader_exist() -> None:
    names = {f.name for f in fields(VmSpec)}
    assert {"memory_mib", "max_memory_mib", "vcpu", "max_vcpu", "state", "devices"} <= names
    assert replace(vm_spec({"name": "x"}), vcpu=2).max_vcpu == 1


# --- idempotency: apply a plan to the observed state, then plan again -----------------------------------------


class Simulator:
    """A host that executes steps on an Observed the way epfiot.apply and the libvirt driver do, as far as the
    planner can see it. It fails loudly on a step whose precondition does not hold (a reservation on a network
    that does not exist, a VM undefined while running...), which also checks the order of the steps."""

    def __init__(self, observed: Observed) -> None:
        self.observed = observed
        self.vms = {v.libvirt_name: v for v in observed.vms}
        self.networks = {n.libvirt_name: n for n in observed.networks}
        self.volumes = {v.name: v for v in observed.volumes}
        self.things = {t.name: t for t in observed.things}

    def apply(self, plan: Plan) -> Observed:
        assert plan.problems == (), plan.problems
        for phase in plan.phases():
            for action in phase:
                for step in action.steps:
                    self.step(step)
        return replace(
            self.observed,
            vms=tuple(self.vms.values()),
            networks=tuple(self.networks.values()),
            volumes=tuple(self.volumes.values()),
            things=tuple(self.things.values()),
        )

    def vm(self, name: str) -> ObservedVm:
        assert name in self.vms, f"no domain {name}"
        return self.vms[name]

    def net(self, name: str) -> ObservedNetwork:
        assert name in self.networks, f"no network {name}"
        return self.networks[name]

    def step(self, step: s.Step) -> None:  # one branch per step type, as in epfiot.apply.run_step
        match step:
            case s.DefineVm(spec, usb, uuid, seed_digest):
                old = self.vms.get(spec.libvirt_name)
                assert (old is None) == (uuid is None), f"define {spec.libvirt_name} with uuid {uuid}, exists: {old}"
                network = libvirt_name(spec.owner, spec.network) if spec.network else None
                definition = dict(
                    ownership=Ownership(
                        spec.owner, spec.stack, spec.name, spec.spec_hash(), seed_digest, spec.shutdown_timeout
                    ),
                    vcpu=spec.vcpu,
                    max_vcpu=spec.max_vcpu,
                    memory_mib=spec.memory_mib,
                    max_memory_mib=spec.max_memory_mib,
                    network=network,
                    mac=spec.mac if network else None,
                    disk_volume=overlay_volume_name(spec.owner, spec.name) if spec.image else None,
                    seed_volume=seed_volume_name(spec.owner, spec.name) if spec.credentials else None,
                    devices=tuple(AttachedUsb(d.id, d.bus, d.device, required) for d, required in usb),
                )
                if old is None:
                    old = ObservedVm(spec.libvirt_name, "uuid-new", None, PowerState.SHUTOFF, 0, 0, 0, 0)
                self.vms[spec.libvirt_name] = replace(old, **definition)  # type: ignore[arg-type]
            case s.StartVm(name, paused):
                vm = self.vm(name)
                assert not vm.active, f"start {name}: already {vm.state}"
                # a definition may name volumes not made yet (it comes first); a start needs them
                assert vm.disk_volume is None or vm.disk_volume in self.volumes, f"start {name}: disk not created"
                assert vm.seed_volume is None or vm.seed_volume in self.volumes, f"start {name}: seed not written"
                if vm.network:
                    assert self.net(vm.network).active, f"start {name}: network {vm.network} is not active"
                self.vms[name] = replace(
                    vm,
                    state=PowerState.PAUSED if paused else PowerState.RUNNING,
                    live_vcpu=vm.vcpu,
                    live_max_vcpu=vm.max_vcpu,
                    live_memory_mib=vm.memory_mib,
                    live_max_memory_mib=vm.max_memory_mib,
                    live_devices=vm.devices,
                )
            case s.ShutdownVm(name) | s.DestroyVm(name):
                vm = self.vm(name)
                assert vm.active, f"stop {name}: already off"
                # a faulted guest cannot run to act on ACPI (libvirt would resume it first, and fail)
                assert vm.fault is None or isinstance(step, s.DestroyVm), f"shut down {name}: {vm.condition}"
                self.vms[name] = replace(
                    vm,
                    state=PowerState.SHUTOFF,
                    fault=None,
                    live_vcpu=None,
                    live_max_vcpu=None,
                    live_memory_mib=None,
                    live_max_memory_mib=None,
                    live_devices=None,
                )
            case s.SuspendVm(name):
                assert self.vm(name).state is PowerState.RUNNING, f"suspend {name}: {self.vm(name).state}"
                self.vms[name] = replace(self.vm(name), state=PowerState.PAUSED)
            case s.ResumeVm(name):
                assert self.vm(name).state is PowerState.PAUSED, f"resume {name}: {self.vm(name).state}"
                assert self.vm(name).fault is None, f"resume {name}: {self.vm(name).condition} cannot be resumed"
                self.vms[name] = replace(self.vm(name), state=PowerState.RUNNING)
            case s.UndefineVm(name):
                assert not self.vm(name).active, f"undefine {name} while {self.vm(name).state}"
                del self.vms[name]
            case s.SetVcpus(name, count, live):
                vm = self.vm(name)
                assert live and vm.active, f"set vcpus of {name}: only live steps are planned"
                assert count <= (vm.live_max_vcpu or vm.max_vcpu), f"{name}: {count} vcpus above the running maximum"
                self.vms[name] = replace(vm, live_vcpu=count)
            case s.SetMemory(name, mib, live):
                vm = self.vm(name)
                assert live and vm.active, f"set memory of {name}: only live steps are planned"
                assert mib <= (vm.live_max_memory_mib or vm.max_memory_mib), f"{name}: {mib} MiB above the maximum"
                self.vms[name] = replace(vm, live_memory_mib=mib)
            case s.AttachUsb(name, device, required, live):
                vm = self.vm(name)
                assert live and vm.active, f"attach to {name}: only live steps are planned"
                hostdev = AttachedUsb(device.id, device.bus, device.device, required)
                self.vms[name] = replace(vm, live_devices=(*(vm.live_devices or vm.devices), hostdev))
            case s.DetachUsb(name, attached_usb, live):
                vm = self.vm(name)
                assert live and vm.active, f"detach from {name}: only live steps are planned"
                current = vm.live_devices if vm.live_devices is not None else vm.devices
                assert attached_usb in current, f"detach {attached_usb} from {name}: not attached"
                self.vms[name] = replace(vm, live_devices=tuple(d for d in current if d != attached_usb))
            case s.WaitForAddress(name):
                assert self.vm(name).state is PowerState.RUNNING
            case s.CreateOverlay(spec):
                assert spec.image in self.volumes, f"no base image {spec.image}"
                volume = overlay_volume_name(spec.owner, spec.name)
                assert volume not in self.volumes, f"{volume} exists"
                self.volumes[volume] = ObservedVolume("images", volume)
            case s.WriteSeed(spec):
                volume = seed_volume_name(spec.owner, spec.name)
                self.volumes[volume] = ObservedVolume("images", volume)
            case s.DeleteVolume(volume):
                assert volume in self.volumes, f"delete {volume}: no such volume"
                assert not any(volume in (v.disk_volume, v.seed_volume) for v in self.vms.values()), f"{volume} in use"
                del self.volumes[volume]
            case s.DefineNetwork(spec):
                assert spec.libvirt_name not in self.networks, f"network {spec.libvirt_name} exists"
                start, end = dhcp_range(spec)
                self.networks[spec.libvirt_name] = ObservedNetwork(
                    spec.libvirt_name,
                    Ownership(spec.owner, spec.stack, spec.name, spec.spec_hash()),
                    True,
                    spec.mode,
                    spec.cidr,
                    start,
                    end,
                    (),
                    spec.bridge,
                )
            case s.StartNetwork(name):
                self.networks[name] = replace(self.net(name), active=True)
            case s.RemoveNetwork(name):
                self.net(name)
                del self.networks[name]
            case s.SetDhcpHost(network, mac, ip):
                net = self.net(network)
                # as epfiot.libvirt.network.set_dhcp_host: an entry for the same MAC or address is replaced
                kept = tuple(h for h in net.dhcp_hosts if h[0] != mac and h[1] != ip)
                self.networks[network] = replace(net, dhcp_hosts=(*kept, (mac, ip)))
            case s.RemoveDhcpHost(network, mac, ip):
                if network in self.networks:  # no error without the network, as the driver does
                    net = self.networks[network]
                    self.networks[network] = replace(net, dhcp_hosts=tuple(h for h in net.dhcp_hosts if h != (mac, ip)))
            case s.UpsertThing(spec, server_uri):
                self.things[spec.name] = ObservedThing(
                    spec.name, spec.owner, spec.stack, spec.vm, server_uri, spec.lifetime, spec.binding,
                    spec.deletes, spec.writes,
                )
            case s.DeleteThing(name):
                assert name in self.things, f"unregister {name}: not registered"
                del self.things[name]
            case _:
                raise AssertionError(f"the simulator does not know {step}")


def second_plan(case: dict[str, Any]) -> tuple[Plan, Plan, Observed]:
    """The case's plan, the state that applying it leaves, and the plan made against that state."""
    desired = desired_state(case.get("desired", {}))
    observed = observed_state(case.get("observed", {}), desired)
    options = Options(**case.get("options", {}))
    first = run_case(case)
    after = Simulator(observed).apply(first)
    if case.get("deletion"):
        return first, plan_deletion(desired, after, options), after
    usb = usb_resolution(case.get("usb", []), desired, after)
    rules = host_rules(case.get("rules"))
    return first, make_plan(desired, after, options, usb=usb, seed_digests=case.get("seed_digests", {}), rules=rules), after


CONVERGING = [(i, c) for i, c in load_cases() if not c.get("problems")]


@pytest.mark.parametrize(("case_id", "case"), CONVERGING, ids=[c[0] for c in CONVERGING])
def test_applying_the_plan_converges(case_id: str, case: dict[str, Any]) -> None:
    """After the plan is applied, the next plan changes nothing (only no-ops and waits), unless the case says
    which actions a second apply still has (`then:`, e.g. a network freed by the first apply)."""
    _, second, after = second_plan(case)
    assert second.problems == (), second.problems
    # A VM the second plan leaves alone is in its declared power state.
    vms = {v.libvirt_name: v for v in after.vms}
    for spec in desired_state(case.get("desired", {})).vms:
        action = next((a for a in second.actions if (a.kind, a.owner, a.name) == ("vm", spec.owner, spec.name)), None)
        if action is not None and action.verb is Verb.NOOP and not case.get("deletion"):
            assert vms[spec.libvirt_name].state is spec.state, f"{spec.libvirt_name} is left {vms[spec.libvirt_name].state}"
    left = sorted(f"{a.kind}:{a.owner}/{a.name}:{a.verb}" for a in second.changes)
    expected = sorted(f"{_key(e)}:{e['verb']}" for e in case.get("then", []))
    assert left == expected, "second plan: " + "; ".join(
        f"{a.address} {a.verb} ({a.reason}) {[step_text(x) for x in a.steps]}" for a in second.changes
    )


def test_the_simulator_leaves_a_new_vm_as_the_loader_describes_an_unchanged_one() -> None:
    """The simulator and the case loader describe a VM the same way: what a create leaves is what a case
    writes as "observed, matching"."""
    case = {
        "desired": {
            "networks": [{"name": "lan", "cidr": "10.9.0.0/24"}],
            "vms": [{"name": "vm1", "vcpu": 2, "max_vcpu": 4, "network": "lan", "address": "10.9.0.10"}],
        }
    }
    _, second, after = second_plan(case)
    desired = desired_state(case["desired"])
    expected = observed_vm({"name": "vm1"}, desired)
    assert replace(after.vms[0], uuid=expected.uuid) == replace(expected, live_devices=())
    assert after.networks[0].dhcp_hosts == ((desired.vms[0].mac, "10.9.0.10"),)
    assert [a.verb for a in second.actions] == [Verb.NOOP, Verb.NOOP]
