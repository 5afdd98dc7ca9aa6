"""A plain VM that matches its definition and runs as declared is a no-op, and any single difference in its
definition, running instance or metadata is seen (a change, a wait or a problem), in every power state."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from epfiot.model import Desired, Observed, ObservedVm, Ownership, PowerState, StackSpec, VmSpec
from epfiot.plan import Verb, make_plan

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


AS_DEFINED: list[dict[str, object]] = [  # the VM as its definition says, in each power state
    {},
    {"state": PowerState.SHUTOFF, "live_vcpu": None, "live_memory_mib": None, "live_max_memory_mib": None, "live_max_vcpu": None},
    {"state": PowerState.PAUSED},
]
VARIANTS: list[dict[str, object]] = [
    *AS_DEFINED,
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
def test_only_an_identical_vm_is_a_no_op(variant: int, state: PowerState) -> None:
    spec = replace(SPEC, state=state)
    vm = observed_for(SPEC, **VARIANTS[variant])
    if vm.ownership is not None and vm.ownership.spec_hash == SPEC.spec_hash():
        vm = replace(vm, ownership=replace(vm.ownership, spec_hash=spec.spec_hash()))
    desired = Desired(stacks=(StackSpec("alice", "s"),), vms=(spec,))
    plan = make_plan(desired, Observed(vms=(vm,)))

    identical = VARIANTS[variant] in AS_DEFINED and vm.state is state
    if identical:
        assert plan.problems == () and [a.verb for a in plan.actions] == [Verb.NOOP], plan
        assert plan.actions[0].reason == f"vm1 is {state.value}"
    else:
        assert plan.problems or plan.has_changes, f"{VARIANTS[variant]} with {state} planned as a no-op"
