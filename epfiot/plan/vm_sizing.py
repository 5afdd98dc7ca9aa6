"""A VM's vCPUs and memory: changed live where libvirt can, else in the definition (a restart applies it)."""

from __future__ import annotations

from epfiot.plan import steps as s
from epfiot.plan.actions import Change
from epfiot.plan.vm_update import VmUpdate


def compare(u: VmUpdate) -> None:
    spec, vm, running = u.spec, u.vm, u.running
    # vCPUs are added live up to the running maximum; removing vCPUs needs the guest's cooperation, and a
    # new maximum needs a new QEMU process: both take a restart.
    running_max_vcpu = vm.live_max_vcpu or vm.max_vcpu
    if spec.max_vcpu != vm.max_vcpu:
        u.config("max_vcpu", vm.max_vcpu, spec.max_vcpu, restart=True)
    elif running and running_max_vcpu != spec.max_vcpu:
        u.restart_pending("max_vcpu", running_max_vcpu, spec.max_vcpu)
    if running and vm.live_vcpu is not None and spec.vcpu != vm.live_vcpu:
        if vm.live_vcpu < spec.vcpu <= running_max_vcpu:
            u.live.append(s.SetVcpus(spec.libvirt_name, spec.vcpu, live=True))
            u.changes.append(Change("vcpu", vm.live_vcpu, spec.vcpu, "live"))
            u.redefine |= spec.vcpu != vm.vcpu  # the live step leaves the definition as it is
        elif spec.vcpu != vm.vcpu:
            u.config("vcpu", vm.live_vcpu, spec.vcpu, restart=True)
        else:
            u.restart_pending("vcpu", vm.live_vcpu, spec.vcpu)
    elif spec.vcpu != vm.vcpu:
        u.config("vcpu", vm.vcpu, spec.vcpu, restart=False)

    # Memory changes live through the balloon up to the running maximum; a new maximum takes a restart.
    running_max_memory = vm.live_max_memory_mib or vm.max_memory_mib
    if spec.max_memory_mib != vm.max_memory_mib:
        u.config("max_memory_mib", vm.max_memory_mib, spec.max_memory_mib, restart=True)
    elif running and running_max_memory != spec.max_memory_mib:
        u.restart_pending("max_memory_mib", running_max_memory, spec.max_memory_mib)
    if spec.memory_mib != vm.memory_mib:
        if running and spec.memory_mib <= running_max_memory:
            u.live.append(s.SetMemory(spec.libvirt_name, spec.memory_mib, live=True))
            u.changes.append(Change("memory_mib", vm.memory_mib, spec.memory_mib, "live"))
            u.redefine = True  # the live step leaves the definition as it is
        else:
            u.config("memory_mib", vm.memory_mib, spec.memory_mib, restart=True)
