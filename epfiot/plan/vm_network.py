"""A VM's network and fixed address: the address is a DHCP host reservation of the VM's MAC on its network,
made after the definition (which names it) and released before the VM leaves the host."""

from __future__ import annotations

from epfiot.model import ObservedNetwork, ObservedVm, VmSpec, vm_mac
from epfiot.plan import steps as s
from epfiot.plan.actions import Change
from epfiot.plan.context import Context, network_of
from epfiot.plan.vm_update import VmUpdate

Reservation = tuple[str, str, str]  # (network, mac, ip): a DHCP host reservation

def reservations(ctx: Context, vm: ObservedVm) -> tuple[Reservation, ...]:
    """The reservations of the VM's MAC on the network of its definition."""
    net = ctx.networks.get(vm.network) if vm.network else None
    if net is None or not vm.mac:
        return ()
    return tuple((net.libvirt_name, mac, ip) for mac, ip in net.dhcp_hosts if mac == vm.mac)


def reservations_anywhere(ctx: Context, vm: ObservedVm) -> tuple[Reservation, ...]:
    """The reservations of the VM's MAC on every network of its owner, released when it is removed: also
    one made on the network it was moving to, by an apply killed before its new definition named it."""
    assert vm.ownership is not None
    macs = {vm_mac(vm.libvirt_name), vm.mac}
    return tuple(
        (net.libvirt_name, mac, ip)
        for net in sorted(ctx.observed.networks, key=lambda n: n.libvirt_name)
        if net.ownership is not None and net.ownership.owner == vm.ownership.owner
        for mac, ip in net.dhcp_hosts
        if mac in macs
    )


def reservation_steps(
    ctx: Context, spec: VmSpec, network: str | None, held: tuple[Reservation, ...], replaced_networks: set[str]
) -> list[s.Step] | None:
    """The reservations to release (of those `held` by the VM's domain) and to make on the VM's `network`;
    None (a problem recorded) when its address is reserved for another VM."""
    steps: list[s.Step] = []
    for held_on, mac, ip in held:
        if (held_on, mac) != (network, spec.mac) or not spec.address:
            steps.append(s.RemoveDhcpHost(held_on, mac, ip))  # it leaves that network, or its fixed address
    if spec.address and network:
        net = ctx.networks.get(network)
        if net is not None and (holder := _reservation_holder(ctx, net, spec)) is not None:
            ctx.problems.append(
                f"{spec.source}: vm {spec.name}: address {spec.address} is reserved on network "
                f"{spec.network} for {holder}; choose another address"
            )
            return None
        reserved = net is not None and (spec.mac, spec.address) in net.dhcp_hosts
        if not reserved or network in replaced_networks:
            steps.append(s.SetDhcpHost(network, spec.mac, spec.address, spec.name))
    return steps


def compare(u: VmUpdate, network: str | None, held: tuple[Reservation, ...]) -> None:
    """The network lives in the definition (a running VM moves at its restart); the address is the
    reservation, which a running VM takes at its next lease."""
    spec, vm = u.spec, u.vm
    if network != vm.network or (network is not None and spec.mac != vm.mac):
        u.config("network", _short(vm.network), spec.network, restart=True)
    reserved = held[0][2] if held else None
    if reserved != spec.address:
        u.changes.append(Change("address", reserved, spec.address, "at next lease" if u.running else ""))


def _reservation_holder(ctx: Context, net: ObservedNetwork, spec: VmSpec) -> str | None:
    """Which other VM holds `spec.address` on `net` (one not pruned by this plan), or None.

    A reservation whose MAC belongs to no domain is stale (made by hand, or by an earlier epfiot that
    reserved before defining, killed in between): it is taken over, so that the next apply converges."""
    for mac, ip in net.dhcp_hosts:
        if ip != spec.address or mac == spec.mac:
            continue
        for vm in ctx.observed.vms:
            if vm.mac == mac and vm.libvirt_name not in ctx.pruned and not _releases(ctx, vm, net, ip):
                return f"VM {vm.libvirt_name}"
    return None


def _releases(ctx: Context, vm: ObservedVm, net: ObservedNetwork, ip: str) -> bool:
    """Does this plan take `ip` on `net` from `vm`, a declared VM that no longer reserves it there?"""
    spec = ctx.desired_vms.get(vm.libvirt_name)
    return spec is not None and (network_of(spec), spec.address, spec.mac) != (net.libvirt_name, ip, vm.mac)


def _short(libvirt_network: str | None) -> str | None:
    return libvirt_network.split(".", 1)[1] if libvirt_network and "." in libvirt_network else libvirt_network
