"""The planner as a table: each case in tests/plan_cases/*.yaml gives desired and observed state and the
actions (with their steps, changes and notes) or problems expected.

Case format (defaults keep cases short: owner "alice", stack "s"):

    - name: what the case shows
      desired: {vms: [...], networks: [...], things: [...], stacks: [[owner, stack], ...]}
      observed: {vms: [...], networks: [...], volumes: [...], things: [...], usb: [...], vm_addresses: {...}}
      options: {force: true, keep_disks: true, prune: false}
      usb: [[owner, vm, selector index, nodedev or null], ...]      # how claims resolved
      seed_digests: {alice.vm1: sha256:...}
      expect: [{vm: alice/vm1, verb: update, steps: [SetVcpus, DefineVm], changes: {vcpu: live}, notes: [...]}]
      problems: [substring, ...]

An observed VM's ownership matches the desired VM of that name (same spec hash) unless the case says
`ownership: null` (unmanaged), `stack: other`, or `spec_hash: stale`. Every action that changes something
must be listed in `expect`; no-ops may be listed to check their reason.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

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
)
from epfiot.plan import Action, Options, Plan, UsbResolution, Verb, make_plan, plan_deletion

CASES = Path(__file__).parent / "plan_cases"
OWNER, STACK = "alice", "s"


def load_cases() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for path in sorted(CASES.glob("*.yaml")):
        for case in yaml.safe_load(path.read_text()):
            cases.append((f"{path.stem}: {case['name']}", case))
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
        d["credentials"] = Credentials(**d["credentials"])
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
    scopes = {(OWNER, STACK)} | {(x.owner, x.stack) for x in (*vms, *networks, *things)}
    scopes |= {tuple(s) for s in data.get("stacks", ())}
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
        ownership = Ownership(owner, stack, name, recorded, seed_digest)
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
        mac=d.pop("mac", base.mac if base.network else None),
        disk_volume=d.pop("disk_volume", None),
        seed_volume=d.pop("seed_volume", None),
        devices=devices,
        live_vcpu=d.pop("live_vcpu", vcpu if active else None),
        live_memory_mib=d.pop("live_memory_mib", memory if active else None),
        live_max_memory_mib=d.pop("live_max_memory_mib", max_memory if active else None),
        live_max_vcpu=d.pop("live_max_vcpu", max_vcpu if active else None),
        live_devices=tuple(attached(a) for a in live_devices) if live_devices is not None else None,
    )
    assert not d, f"unknown observed vm fields {sorted(d)}"
    return vm


def observed_network(data: dict[str, Any], desired: Desired) -> ObservedNetwork:
    d = dict(data)
    owner, name = d.pop("owner", OWNER), d.pop("name")
    spec = next((n for n in desired.networks if (n.owner, n.name) == (owner, name)), None)
    ownership_data = d.pop("ownership", "match")
    ownership = None if ownership_data is None else Ownership(owner, d.pop("stack", STACK), name)
    from epfiot.plan import dhcp_range

    start, end = dhcp_range(spec) if spec else (None, None)
    return ObservedNetwork(
        libvirt_name=libvirt_name(owner, name),
        ownership=ownership,
        active=d.pop("active", True),
        mode=NetworkMode(d.pop("mode", spec.mode.value if spec else "route")),
        cidr=d.pop("cidr", spec.cidr if spec else "10.9.0.0/24"),
        dhcp_start=d.pop("dhcp_start", start),
        dhcp_end=d.pop("dhcp_end", end),
        dhcp_hosts=tuple(tuple(h) for h in d.pop("dhcp_hosts", ())),  # type: ignore[misc]
    )


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
    things = tuple(
        ObservedThing(
            **{
                "owner": OWNER,
                "stack": STACK,
                "vm": None,
                "server_uri": None,
                "lifetime": 300,
                "binding": "U",
                "deletes": ("/0", "/1"),
                "writes": (),
                **{k: tuple(v) if k == "deletes" else v for k, v in t.items()},
            }
        )
        for t in data.get("things", ())
    )
    return Observed(
        vms=tuple(observed_vm(v, desired) for v in data.get("vms", ())),
        networks=tuple(observed_network(n, desired) for n in data.get("networks", ())),
        usb=usb,
        volumes=tuple(ObservedVolume("images", v) for v in data.get("volumes", ())),
        things=things,
        vm_addresses={k: tuple(v) for k, v in data.get("vm_addresses", {}).items()},
        image_pool=data.get("image_pool", "images"),
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
    return make_plan(desired, observed, options, usb=usb, seed_digests=case.get("seed_digests", {}))


@pytest.mark.parametrize(("case_id", "case"), load_cases(), ids=[c[0] for c in load_cases()])
def test_plan_case(case_id: str, case: dict[str, Any]) -> None:
    plan = run_case(case)
    problems = case.get("problems", [])
    for text in problems:
        assert any(text in p for p in plan.problems), f"no problem with {text!r} in {plan.problems}"
    if not problems:
        assert plan.problems == (), plan.problems
    expected = {_key(e): e for e in case.get("expect", [])}
    actual = {f"{a.kind}:{a.owner}/{a.name}": a for a in plan.actions}
    for key, e in expected.items():
        assert key in actual, f"no action for {key}; actions: {sorted(actual)}"
        check_action(actual[key], e)
    unexpected = [k for k, a in actual.items() if a.verb is not Verb.NOOP and k not in expected]
    assert unexpected == [], f"actions not in the case: {unexpected}"


def _key(expected: dict[str, Any]) -> str:
    for kind in ("vm", "network", "thing"):
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
