"""The planner's fast path for unchanged plain VMs answers exactly as the full comparison does."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from epfiot import plan as planner
from epfiot.model import Desired, Observed, ObservedVm, Ownership, PowerState, StackSpec, VmSpec

SPEC = VmSpec(owner="alice", stack="s", name="vm1", memory_mib=64, vcpu=1, max_memory_mib=128, max_vcpu=2)


def observed_for(spec: VmSpec, **changes: object) -> ObservedVm:
    vm = ObservedVm(
        libvirt_name=spec.libvirt_name,
        uuid="00000000-0000-0000-0000-000000000001",
        ownership=Ownership(spec.owner, spec.stack, spec.name, spec.spec_hash()),
        state=PowerState.RUNNING,
        vcpu=spec.vcpu,
        max_vcpu=spec.max_vcpu,
        memory_mib=spec.memory_mib,
        max_memory_mib=spec.max_memory_mib,
        live_vcpu=spec.vcpu,
        live_memory_mib=spec.memory_mib,
        live_max_memory_mib=spec.max_memory_mib,
        live_max_vcpu=spec.max_vcpu,
    )
    return replace(vm, **changes)  # type: ignore[arg-type]


VARIANTS: list[dict[str, object]] = [
    {},
    {"state": PowerState.SHUTOFF, "live_vcpu": None, "live_memory_mib": None, "live_max_memory_mib": None, "live_max_vcpu": None},
    {"state": PowerState.PAUSED},
    {"vcpu": 2},
    {"live_vcpu": 2},
    {"max_vcpu": 3},
    {"live_max_vcpu": 3},
    {"memory_mib": 96},
    {"max_memory_mib": 256},
    {"live_max_memory_mib": 256},
    {"ownership": Ownership("alice", "s", "vm1", "sha256:stale")},
    {"ownership": Ownership("alice", "other", "vm1", SPEC.spec_hash())},
    {"ownership": None},
    {"network": "alice.lan", "mac": SPEC.mac},
    {"disk_volume": "alice.vm1.epfiot-disk.qcow2"},
]


@pytest.mark.parametrize(("variant", "state"), list(itertools.product(range(len(VARIANTS)), list(PowerState))))
def test_fast_path_agrees_with_the_full_comparison(variant: int, state: PowerState, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = replace(SPEC, state=state)
    vm = observed_for(SPEC, **VARIANTS[variant])
    if vm.ownership is not None and vm.ownership.spec_hash == SPEC.spec_hash():
        vm = replace(vm, ownership=replace(vm.ownership, spec_hash=spec.spec_hash()))
    desired = Desired(stacks=(StackSpec("alice", "s"),), vms=(spec,))
    observed = Observed(vms=(vm,))

    fast = planner.make_plan(desired, observed)
    monkeypatch.setattr(planner, "_plainly_unchanged", lambda spec, vm: False)
    full = planner.make_plan(desired, observed)
    assert fast == full


def test_the_fast_path_is_taken_for_an_unchanged_plain_vm() -> None:
    assert planner._plainly_unchanged(SPEC, observed_for(SPEC))
    assert not planner._plainly_unchanged(SPEC, observed_for(SPEC, live_vcpu=2))
