"""A VM's power state: the steps from its current state to the declared one, restarts for changes that
cannot be made live, and the graceful (or forced) stop of a VM being removed."""

from __future__ import annotations

from epfiot.model import ObservedVm, PowerState, VmSpec
from epfiot.plan import steps as s
from epfiot.plan.actions import Change
from epfiot.plan.vm_update import VmUpdate

DEFAULT_SHUTDOWN_TIMEOUT = 60.0  # for a VM whose definition does not record its own


def compare(u: VmUpdate, steps: list[s.Step], *, devices_missing: bool, force: bool) -> bool:
    """Adds the restart or power steps to `steps`; True when the VM waits: for its required devices
    (`devices_missing`), or for a restart it may not do itself."""
    spec, vm = u.spec, u.vm
    if vm.fault is not None:
        return _recover(u, steps, force=force)
    restarting = False  # the restart steps bring the VM to its declared state as well
    if u.needs_restart and u.running and spec.state is not PowerState.SHUTOFF:
        if spec.allow_restart:
            steps += restart_steps(spec, vm, force=force)
            restarting = True
            u.notes.append("restarts to apply changes that cannot be made live")
        else:
            u.notes.append("restart pending: set allow_restart: true, or restart the VM, to apply all changes")
    blocked = devices_missing and not vm.active and spec.state is not PowerState.SHUTOFF
    if blocked:
        u.notes.append(f"not started until its required devices are plugged in and free (wants {spec.state})")
    elif not restarting:
        power = power_steps(vm.libvirt_name, vm.state, spec.state, timeout=spec.shutdown_timeout, force=force)
        if power:
            u.changes.append(Change("state", vm.state.value, spec.state.value))
            steps += power
    steps += address_wait(spec, steps)
    return blocked or (u.needs_restart and not spec.allow_restart)


def _recover(u: VmUpdate, steps: list[s.Step], *, force: bool) -> bool:
    """A VM paused by a fault (vm.fault) cannot be resumed: a resume fails every time ("Resetting the Virtual
    Machine is required"). Stopping it ends its process; running it again is a restart, which it may do
    only with allow_restart (a restart also applies changes that wait for one). True when it waits."""
    spec, vm = u.spec, u.vm
    if spec.state is PowerState.SHUTOFF:
        steps += stop_steps(vm, timeout=spec.shutdown_timeout, force=force)
        u.changes.append(Change("state", vm.condition, spec.state.value))
        return False
    if not spec.allow_restart:
        u.notes.append(f"{vm.condition}: it cannot be resumed; set allow_restart: true, or restart the VM")
        return True
    steps += restart_steps(spec, vm, force=force)
    u.changes.append(Change("state", vm.condition, spec.state.value, "restart"))
    steps += address_wait(spec, steps)
    return False


def stop_steps(vm: ObservedVm, *, timeout: float, force: bool = False) -> list[s.Step]:
    """From the VM's state to shutoff. A faulted VM cannot run to act on ACPI: its process is ended."""
    if vm.fault is not None:
        return [s.DestroyVm(vm.libvirt_name)]
    return power_steps(vm.libvirt_name, vm.state, PowerState.SHUTOFF, timeout=timeout, force=force)


def power_steps(name: str, current: PowerState, want: PowerState, *, timeout: float, force: bool = False) -> list[s.Step]:
    """From one power state to another; a shutdown is graceful for up to `timeout` seconds, then forced."""
    if current is want:
        return []
    if want is PowerState.RUNNING:
        return [s.ResumeVm(name)] if current is PowerState.PAUSED else [s.StartVm(name)]
    if want is PowerState.PAUSED:
        return [s.SuspendVm(name)] if current is PowerState.RUNNING else [s.StartVm(name, paused=True)]
    # want shutoff. A paused guest cannot react to ACPI: resume it first so that it can shut down cleanly.
    if force:
        return [s.DestroyVm(name)]
    resume: list[s.Step] = [s.ResumeVm(name)] if current is PowerState.PAUSED else []
    return [*resume, s.ShutdownVm(name, timeout)]


def restart_steps(spec: VmSpec, vm: ObservedVm, *, force: bool) -> list[s.Step]:
    name, timeout = spec.libvirt_name, spec.shutdown_timeout
    stop = stop_steps(vm, timeout=timeout, force=force)
    return [*stop, *power_steps(name, PowerState.SHUTOFF, spec.state, timeout=timeout)]


def address_wait(spec: VmSpec, steps: list[s.Step]) -> list[s.Step]:
    """A VM that asks for it is waited for until it has an address, whenever this apply starts it."""
    if not spec.wait_for_address or spec.state is not PowerState.RUNNING:
        return []
    started = any(isinstance(step, s.StartVm) and not step.paused for step in steps)
    return [s.WaitForAddress(spec.libvirt_name, spec.wait_for_address)] if started else []
