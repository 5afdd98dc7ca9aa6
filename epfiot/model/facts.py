"""The observed state, as frozen data: what the live host (epfiot.libvirt) and the bootstrap registry hold."""

from __future__ import annotations

from dataclasses import dataclass, field

from epfiot.model.specs import NetworkMode, PowerState, ResourceWriteSpec, UsbId


@dataclass(frozen=True)
class Ownership:
    """epfiot's element in a libvirt object's <metadata>. An object without it is never touched."""

    owner: str
    stack: str
    name: str
    spec_hash: str = ""
    seed_digest: str = ""  # digest of the cloud-init seed: detects credential changes without secrets
    shutdown_timeout: float | None = None  # kept so that pruning a VM, whose manifest is gone, honours it
    manifest: str = ""  # the declaring file, relative to its root ("": stdin, or applied before it was recorded)


@dataclass(frozen=True)
class HostUsbDevice:
    """A USB device on the host, from libvirt's node devices."""

    nodedev: str  # libvirt node device name, e.g. "usb_1_4"
    id: UsbId
    vendor_name: str = ""
    product_name: str = ""
    bus: int = 0
    device: int = 0
    port: str | None = None  # port path like "1-2.3", stable across re-enumeration
    serial: str | None = None
    is_hub: bool = False


@dataclass(frozen=True)
class AttachedUsb:
    """A USB hostdev in a domain definition, as libvirt reads it back."""

    id: UsbId
    bus: int | None = None
    device: int | None = None
    required: bool = True


@dataclass(frozen=True)
class ObservedVm:
    """A libvirt domain as read from the host, epfiot's or not."""

    libvirt_name: str
    uuid: str
    ownership: Ownership | None  # None: not managed by epfiot
    state: PowerState
    # the persistent definition (what the VM boots with next time)
    vcpu: int
    max_vcpu: int
    memory_mib: int
    max_memory_mib: int
    network: str | None = None  # libvirt network name
    mac: str | None = None
    disk_volume: str | None = None  # overlay volume name
    seed_volume: str | None = None
    devices: tuple[AttachedUsb, ...] = ()
    # the running instance, when there is one (differs from the definition while a restart is pending)
    live_vcpu: int | None = None
    live_memory_mib: int | None = None
    live_max_memory_mib: int | None = None
    live_max_vcpu: int | None = None  # the running instance's maximum: a new maximum waits for a restart
    live_devices: tuple[AttachedUsb, ...] | None = None
    # Why a paused VM cannot be resumed, when it cannot: "internal-error" (QEMU stopped it, a broken KVM for
    # one: only a reset runs it again) or "crashed" (the guest panicked). None for every other state.
    fault: str | None = None

    @property
    def condition(self) -> str:
        """The state as shown to people: "running", or "paused (internal-error)" for a faulted VM."""
        return f"{self.state.value} ({self.fault})" if self.fault else self.state.value

    @property
    def managed(self) -> bool:
        return self.ownership is not None

    @property
    def active(self) -> bool:
        return self.state is not PowerState.SHUTOFF


@dataclass(frozen=True)
class ObservedNetwork:
    """A libvirt network as read from the host."""

    libvirt_name: str
    ownership: Ownership | None
    active: bool
    mode: NetworkMode | None
    cidr: str | None
    dhcp_start: str | None = None
    dhcp_end: str | None = None
    dhcp_hosts: tuple[tuple[str, str], ...] = ()  # (mac, ip) reservations
    bridge: str | None = None
    # Every address range the network serves, IPv4 and IPv6 ("10.9.0.0/24", "fd00::/64"), epfiot's or not:
    # a new network must overlap none of them. `cidr` is the first IPv4 one, the one epfiot manages.
    subnets: tuple[str, ...] = ()

    @property
    def address_ranges(self) -> tuple[str, ...]:
        """What the network occupies: its subnets, or its cidr when it was built without them."""
        if self.subnets:
            return self.subnets
        return (self.cidr,) if self.cidr else ()


@dataclass(frozen=True)
class ObservedVolume:
    """A volume of the image pool as read from the host."""

    pool: str
    name: str
    capacity_bytes: int = 0
    backing: str | None = None  # path of the backing file (base image), if any


@dataclass(frozen=True)
class ObservedThing:
    """A registry entry, as the planner needs it (the registry module has the full record)."""

    name: str
    owner: str
    stack: str
    vm: str | None
    server_uri: str | None
    lifetime: int
    binding: str
    deletes: tuple[str, ...]
    writes: tuple[ResourceWriteSpec, ...]
    status: str = "pending"
    credentials_digest: str | None = None  # of the keys in the registry's key file
    manifest: str = ""  # as Ownership.manifest


@dataclass(frozen=True)
class Observed:
    """Everything read from the host in one observation."""

    vms: tuple[ObservedVm, ...] = ()
    networks: tuple[ObservedNetwork, ...] = ()
    usb: tuple[HostUsbDevice, ...] = ()
    volumes: tuple[ObservedVolume, ...] = ()  # the image pool: base images and epfiot's overlays and seeds
    things: tuple[ObservedThing, ...] = ()
    vm_addresses: dict[str, tuple[str, ...]] = field(default_factory=dict)  # libvirt name -> IPv4 addresses
    image_pool: str | None = None  # None: no image pool on this host
