"""Desired and observed state, as frozen data.

Desired objects come from manifests (epfiot.desired); observed objects come from the live host
(epfiot.libvirt) and the bootstrap registry (epfiot.lwm2m.registry). The planner (epfiot.plan) compares the
two and is the only place that decides anything. Nothing here imports libvirt or aiocoap.
"""

from __future__ import annotations

import hashlib
import operator
import re
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum

from epfiot.psk import PskCredential

# Names of owners, stacks, VMs, networks and things: a DNS label. No dots, so that the libvirt name
# "<owner>.<name>" is unambiguous and two tenants can both have a VM called "example1".
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
LIBVIRT_NAME_SEPARATOR = "."


def libvirt_name(owner: str, name: str) -> str:
    """The libvirt object name of an epfiot resource: owner "charlie", VM "example1" -> "charlie.example1"."""
    return f"{owner}{LIBVIRT_NAME_SEPARATOR}{name}"


# epfiot's own volumes in the image pool: "<owner>.<name>.epfiot-disk.qcow2" and "<owner>.<name>.epfiot-seed.iso".
# Base images share the pool and are named by people ("debian-12.qcow2", "alpine-3.19.qcow2": dots too), so
# the owner.name prefix alone cannot tell them apart; the ".epfiot-" marker can. Names of that exact form are
# reserved; every other volume of the pool is a base image.
OVERLAY_VOLUME_SUFFIX = ".epfiot-disk.qcow2"
SEED_VOLUME_SUFFIX = ".epfiot-seed.iso"
_LABEL = NAME_PATTERN[1:-1]
_EPFIOT_VOLUME = re.compile(rf"{_LABEL}\.{_LABEL}(?:{re.escape(OVERLAY_VOLUME_SUFFIX)}|{re.escape(SEED_VOLUME_SUFFIX)})")


def vm_mac(libvirt_vm_name: str) -> str:
    """The MAC epfiot gives a VM: stable, locally administered, derived from its libvirt name (52:54:00 is
    QEMU's prefix)."""
    digest = hashlib.sha256(libvirt_vm_name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def overlay_volume_name(owner: str, name: str) -> str:
    """The VM's copy-on-write disk in the image pool."""
    return f"{libvirt_name(owner, name)}{OVERLAY_VOLUME_SUFFIX}"


def seed_volume_name(owner: str, name: str) -> str:
    """The VM's cloud-init NoCloud seed ISO in the image pool."""
    return f"{libvirt_name(owner, name)}{SEED_VOLUME_SUFFIX}"


def is_epfiot_volume(volume: str) -> bool:
    """Is this volume of the image pool a VM's overlay or seed (and not a base image)?"""
    return _EPFIOT_VOLUME.fullmatch(volume) is not None


class PowerState(StrEnum):
    RUNNING = "running"
    SHUTOFF = "shutoff"
    PAUSED = "paused"


class NetworkMode(StrEnum):
    ROUTE = "route"
    NAT = "nat"
    ISOLATED = "isolated"


@dataclass(frozen=True, order=True)
class Source:
    """Where something was declared: shown in every error and plan line that concerns it."""

    file: str
    line: int
    manifest: str = field(default="", compare=False)  # the file relative to its root (ManifestOrigin); "" for stdin

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


NO_SOURCE = Source("<none>", 0)


@dataclass(frozen=True)
class UsbId:
    """A USB vendor:product pair, lower-case hex without 0x: UsbId("18d1", "9302")."""

    vendor: str
    product: str

    def __str__(self) -> str:
        return f"{self.vendor}:{self.product}"

    @classmethod
    def parse(cls, text: str) -> UsbId:
        vendor, _, product = text.partition(":")
        return cls(vendor.lower(), product.lower())


@dataclass(frozen=True)
class UsbSelector:
    """A VM's claim on a host USB device.

    A device matches when its id is `id` or one of `aliases` (a Coral is 1a6e:089a until its first inference,
    then 18d1:9302), and, when given, its serial and port path match too.
    """

    id: UsbId
    aliases: tuple[UsbId, ...] = ()
    serial: str | None = None
    port: str | None = None
    required: bool = True
    source: Source = field(default=NO_SOURCE, compare=False, repr=False)

    @property
    def ids(self) -> tuple[UsbId, ...]:
        return (self.id, *self.aliases)

    def __str__(self) -> str:
        text = "|".join(str(i) for i in self.ids)
        if self.serial:
            text += f" serial={self.serial}"
        if self.port:
            text += f" port={self.port}"
        return text


@dataclass(frozen=True)
class Credentials:
    """First-boot login. Holds no plain secret: the password is already a SHA-512 crypt hash."""

    user: str
    password_hash: str | None = None
    ssh_authorized_keys: tuple[str, ...] = ()
    hostname: str | None = None
    user_data: str | None = None  # extra cloud-config, merged after epfiot's own


@dataclass(frozen=True)
class VmSpec:
    """A VM as a manifest declares it."""

    owner: str
    stack: str
    name: str
    memory_mib: int
    vcpu: int
    max_memory_mib: int  # headroom for live growth; equals memory_mib unless the manifest says more
    max_vcpu: int
    state: PowerState = PowerState.RUNNING
    allow_restart: bool = False  # may apply restart the VM for a change libvirt cannot make live?
    shutdown_timeout: float = 60.0  # graceful (ACPI) shutdown, then forced
    image: str | None = None  # base volume in the image pool; the VM gets a qcow2 overlay
    disk_size_gib: int | None = None
    network: str | None = None  # a network of the same owner
    address: str | None = None  # fixed IPv4 address: a DHCP host reservation
    credentials: Credentials | None = None
    devices: tuple[UsbSelector, ...] = ()
    wait_for_address: float | None = None  # seconds apply waits for the VM's address
    source: Source = field(default=NO_SOURCE, compare=False)

    @property
    def libvirt_name(self) -> str:
        return libvirt_name(self.owner, self.name)

    @property
    def mac(self) -> str:
        return vm_mac(self.libvirt_name)

    def spec_hash(self) -> str:
        """A digest of everything epfiot applies for this VM, recorded in the domain's metadata.

        The order of `devices` is not part of it: a reordered device list is no change. Computed once per
        spec: a plan over a thousand VMs asks for it a thousand times."""
        cached: str | None = self.__dict__.get("_spec_hash")
        if cached is None:
            spec = self
            if len(self.devices) > 1:
                spec = replace(self, devices=tuple(sorted(self.devices, key=lambda d: (str(d), d.required))))
            cached = spec_digest(spec)
            object.__setattr__(self, "_spec_hash", cached)
        return cached


@dataclass(frozen=True)
class NetworkSpec:
    """A libvirt network as a manifest declares it."""

    owner: str
    stack: str
    name: str
    mode: NetworkMode
    cidr: str  # IPv4 network, e.g. "10.128.0.0/24"; the host takes the first address
    dhcp_start: str | None = None  # default: the second half of the network
    dhcp_end: str | None = None
    source: Source = field(default=NO_SOURCE, compare=False)

    @property
    def libvirt_name(self) -> str:
        return libvirt_name(self.owner, self.name)

    @property
    def bridge(self) -> str:
        """Linux limits interface names to 15 characters: a short, stable name from the identity."""
        return "epf" + hashlib.sha256(self.libvirt_name.encode()).hexdigest()[:10]

    def spec_hash(self) -> str:
        return spec_digest(self)


@dataclass(frozen=True)
class ResourceWriteSpec:
    """An extra bootstrap write: a value for an LwM2M resource path like "/3/0/14"."""

    path: str
    value: str | int | float | bool


@dataclass(frozen=True)
class ThingSpec:
    """An LwM2M thing as a manifest declares it: its endpoint, its server (a VM's or a URI), its writes."""

    owner: str
    stack: str
    name: str  # the LwM2M endpoint name, unique on the host
    vm: str | None = None  # a VM of the same owner: its LwM2M server is coap://<address>:<port>
    server: str | None = None  # or an explicit LwM2M server URI
    port: int = 5683  # 5684 (coaps) by default with server_security
    lifetime: int = 300
    binding: str = "U"
    deletes: tuple[str, ...] = ("/0", "/1")
    writes: tuple[ResourceWriteSpec, ...] = ()
    security: PskCredential | None = None  # bootstrap over DTLS with this key (only)
    server_security: PskCredential | None = None  # sent for its LwM2M server, then coaps://
    source: Source = field(default=NO_SOURCE, compare=False)

    @property
    def credentials_digest(self) -> str | None:
        """What a plan shows of the thing's keys: a digest of both, nothing of either key."""
        if self.security is None and self.server_security is None:
            return None
        return credentials_digest(self.security, self.server_security)


def credentials_digest(bootstrap: PskCredential | None, server: PskCredential | None) -> str:
    parts = [cred.digest if cred is not None else "-" for cred in (bootstrap, server)]
    return "sha256:" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StackSpec:
    """One (owner, stack) scope. An apply creates, changes and prunes only inside the scopes it is given."""

    owner: str
    name: str
    source: Source = field(default=NO_SOURCE, compare=False)  # the `stack:` line
    owner_line: int = field(default=0, compare=False)  # the `owner:` line (authorization problems point there)


@dataclass(frozen=True)
class ManifestOrigin:
    """Where a load's manifests came from: the roots (a directory given, the directory of a file given, the base
    directory of stdin) and every file read. A resource records its declaring file relative to its root, so
    that `-f dir` and `-f dir/a.yaml` record a.yaml alike."""

    roots: tuple[str, ...] = ()  # absolute directories
    files: frozenset[str] = frozenset()  # absolute paths of the files read


@dataclass(frozen=True)
class Desired:
    """Everything the given manifests declare."""

    stacks: tuple[StackSpec, ...] = ()
    vms: tuple[VmSpec, ...] = ()
    networks: tuple[NetworkSpec, ...] = ()
    things: tuple[ThingSpec, ...] = ()
    origin: ManifestOrigin = field(default_factory=ManifestOrigin)

    def scopes(self) -> frozenset[tuple[str, str]]:
        return frozenset((s.owner, s.name) for s in self.stacks)


# --- observed --------------------------------------------------------------------------------------------


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


def spec_digest(spec: object) -> str:
    """A short, stable digest of a frozen dataclass's fields, its source position excluded.

    The repr of the field values: every value in a spec is a str, number, bool, None, enum, tuple or frozen
    dataclass, whose reprs are deterministic. Nested positions are left out of the repr (repr=False)."""
    values = _DIGEST_FIELDS.get(type(spec))
    if values is None:
        names = [f.name for f in fields(spec) if f.name != "source"]  # type: ignore[arg-type]
        values = _DIGEST_FIELDS[type(spec)] = operator.attrgetter(*names)
    blob = repr(values(spec)).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()[:16]


_DIGEST_FIELDS: dict[type, operator.attrgetter[object]] = {}  # the fields of each spec type, but its source
