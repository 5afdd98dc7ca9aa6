"""The desired state, as frozen data: what the manifests declare (built by epfiot.desired)."""

from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum

from epfiot.model.naming import libvirt_name, vm_mac
from epfiot.psk import PskCredential


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
