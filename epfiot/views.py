"""Rows for `epfiot get`: what users ask about, computed from observed state. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from epfiot.model import HostUsbDevice, Observed, ObservedVm

if TYPE_CHECKING:
    from epfiot.registry import ThingRecord

VM_COLUMNS = ("name", "owner", "stack", "state", "vcpu", "memory_mib", "address")
VM_WIDE_COLUMNS = (*VM_COLUMNS, "network", "disk", "devices", "pending_restart", "libvirt_name")
USB_COLUMNS = ("vendor_id", "product_id", "vendor", "product", "bus", "device", "port", "serial", "held_by")
THING_COLUMNS = ("name", "owner", "vm", "server_uri", "status")
THING_WIDE_COLUMNS = (*THING_COLUMNS, "stack", "bootstrapped_at", "client_address", "error")
NETWORK_COLUMNS = ("name", "owner", "stack", "mode", "cidr", "active", "bridge")
IMAGE_COLUMNS = ("name", "pool", "capacity_mib")


def pending_restart(vm: ObservedVm) -> bool:
    """The running VM differs from its definition in what only a restart changes."""
    if not vm.active:
        return False
    return (
        (vm.live_vcpu is not None and vm.live_vcpu != vm.vcpu)
        or (vm.live_max_vcpu is not None and vm.live_max_vcpu != vm.max_vcpu)
        or (vm.live_max_memory_mib is not None and vm.live_max_memory_mib != vm.max_memory_mib)
    )


def vm_rows(observed: Observed, *, owner: str | None = None) -> list[dict[str, object]]:
    present = {(d.id, d.bus, d.device) for d in observed.usb}
    present_ids = {d.id for d in observed.usb}
    rows: list[dict[str, object]] = []
    for vm in sorted(observed.vms, key=lambda v: v.libvirt_name):
        if vm.ownership is None or (owner is not None and vm.ownership.owner != owner):
            continue
        devices = []
        for d in vm.devices:
            here = (d.id, d.bus, d.device) in present if d.bus is not None else d.id in present_ids
            devices.append(f"{d.id}{'' if here else ' (absent)'}")
        rows.append(
            {
                "name": vm.ownership.name,
                "owner": vm.ownership.owner,
                "stack": vm.ownership.stack,
                "state": vm.condition,
                "vcpu": vm.live_vcpu if vm.active and vm.live_vcpu is not None else vm.vcpu,
                "memory_mib": vm.memory_mib,
                "memory": f"{vm.memory_mib}MiB",  # as manifests write it: --fields name,state,memory,vcpu
                "address": ",".join(observed.vm_addresses.get(vm.libvirt_name, ())) or None,
                "network": vm.network.split(".", 1)[-1] if vm.network else None,
                "disk": vm.disk_volume,
                "devices": devices,
                "pending_restart": pending_restart(vm),
                "libvirt_name": vm.libvirt_name,
                "uuid": vm.uuid,
                "max_vcpu": vm.max_vcpu,
                "max_memory_mib": vm.max_memory_mib,
            }
        )
    return rows


def usb_rows(devices: tuple[HostUsbDevice, ...], held_by: Mapping[str, str]) -> list[dict[str, object]]:
    return [
        {
            "vendor_id": d.id.vendor,
            "product_id": d.id.product,
            "vendor": d.vendor_name,
            "product": d.product_name,
            "bus": d.bus,
            "device": d.device,
            "port": d.port,
            "serial": d.serial,
            "held_by": held_by.get(d.nodedev),
            "nodedev": d.nodedev,
            "hub": d.is_hub,
        }
        for d in devices
    ]


def thing_rows(records: list[ThingRecord], *, owner: str | None = None) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for r in records:
        if owner is not None and r.config.owner != owner:
            continue
        rows.append(
            {
                "name": r.config.name,
                "owner": r.config.owner,
                "stack": r.config.stack,
                "vm": r.config.vm,
                "server_uri": r.config.server_uri,
                "status": r.status,
                "bootstrapped_at": r.bootstrapped_at,
                "client_address": r.client_address,
                "error": r.error,
            }
        )
    return rows


def network_rows(observed: Observed, *, owner: str | None = None) -> list[dict[str, object]]:
    return [
        {
            "name": n.ownership.name,
            "owner": n.ownership.owner,
            "stack": n.ownership.stack,
            "mode": n.mode.value if n.mode else None,
            "cidr": n.cidr,
            "active": n.active,
            "bridge": n.bridge,
            "reservations": [f"{ip}={mac}" for mac, ip in n.dhcp_hosts],
        }
        for n in sorted(observed.networks, key=lambda n: n.libvirt_name)
        if n.ownership is not None and (owner is None or n.ownership.owner == owner)
    ]
