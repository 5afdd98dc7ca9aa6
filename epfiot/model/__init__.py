"""Desired and observed state, as frozen data.

Desired objects come from manifests (epfiot.desired); observed objects come from the live host
(epfiot.libvirt) and the bootstrap registry (epfiot.registry). The planner (epfiot.plan) compares the two
and is the only place that decides anything. Nothing here imports libvirt or aiocoap.

    naming   names of resources, their libvirt objects and volumes, MACs
    specs    the desired state: VmSpec, NetworkSpec, ThingSpec, StackSpec, Desired
    facts    the observed state: ObservedVm, ObservedNetwork, ObservedVolume, ObservedThing, Observed

Everything is imported from here (`from epfiot.model import VmSpec`); the modules only keep it readable.
"""

from epfiot.model.facts import (
    AttachedUsb,
    HostUsbDevice,
    Observed,
    ObservedNetwork,
    ObservedThing,
    ObservedVm,
    ObservedVolume,
    Ownership,
)
from epfiot.model.naming import (
    LIBVIRT_NAME_SEPARATOR,
    NAME_PATTERN,
    OVERLAY_VOLUME_SUFFIX,
    SEED_VOLUME_SUFFIX,
    is_epfiot_volume,
    libvirt_name,
    overlay_volume_name,
    seed_volume_name,
    vm_mac,
)
from epfiot.model.specs import (
    NO_SOURCE,
    Credentials,
    Desired,
    ManifestOrigin,
    NetworkMode,
    NetworkSpec,
    PowerState,
    ResourceWriteSpec,
    Source,
    StackSpec,
    ThingSpec,
    UsbId,
    UsbSelector,
    VmSpec,
    credentials_digest,
    spec_digest,
)

__all__ = ["LIBVIRT_NAME_SEPARATOR", "NAME_PATTERN", "NO_SOURCE", "OVERLAY_VOLUME_SUFFIX", "SEED_VOLUME_SUFFIX", "AttachedUsb", "Credentials", "Desired", "HostUsbDevice", "ManifestOrigin", "NetworkMode", "NetworkSpec", "Observed", "ObservedNetwork", "ObservedThing", "ObservedVm", "ObservedVolume", "Ownership", "PowerState", "ResourceWriteSpec", "Source", "StackSpec", "ThingSpec", "UsbId", "UsbSelector", "VmSpec", "credentials_digest", "is_epfiot_volume", "libvirt_name", "overlay_volume_name", "seed_volume_name", "spec_digest", "vm_mac"]
