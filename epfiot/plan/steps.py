"""The steps an action is made of: typed data that the planner produces and apply executes.

Each step maps to one Host (or registry) call. Steps carry everything their call needs, so executing a plan
never re-reads desired state, and a plan printed with --dry-run is exactly what apply would do.
"""

from __future__ import annotations

from dataclasses import dataclass

from epfiot.model import AttachedUsb, HostUsbDevice, NetworkSpec, ThingSpec, VmSpec


@dataclass(frozen=True)
class DefineVm:
    """Define the domain of `spec` (a new one when uuid is None, else that domain's new definition)."""

    spec: VmSpec
    usb: tuple[tuple[HostUsbDevice, bool], ...]  # (device, required)
    uuid: str | None
    seed_digest: str

    def describe(self) -> str:
        return "define" if self.uuid is None else "update definition"


@dataclass(frozen=True)
class StartVm:
    """Start the domain (paused: started with its vCPUs stopped)."""

    name: str
    paused: bool = False

    def describe(self) -> str:
        return "start paused" if self.paused else "start"


@dataclass(frozen=True)
class ShutdownVm:
    """Ask the guest to shut down; power it off after `timeout` seconds."""

    name: str
    timeout: float

    def describe(self) -> str:
        return f"shut down (graceful, forced after {self.timeout:g}s)"


@dataclass(frozen=True)
class DestroyVm:
    """Power the domain off at once."""

    name: str

    def describe(self) -> str:
        return "power off (forced)"


@dataclass(frozen=True)
class SuspendVm:
    """Pause the running domain."""

    name: str

    def describe(self) -> str:
        return "pause"


@dataclass(frozen=True)
class ResumeVm:
    """Resume the paused domain."""

    name: str

    def describe(self) -> str:
        return "resume"


@dataclass(frozen=True)
class UndefineVm:
    """Remove the domain's definition."""

    name: str

    def describe(self) -> str:
        return "undefine"


@dataclass(frozen=True)
class SetVcpus:
    """Set the vCPU count of the definition, or of the running instance (live)."""

    name: str
    count: int
    live: bool

    def describe(self) -> str:
        return f"set vcpus to {self.count} ({'live' if self.live else 'definition'})"


@dataclass(frozen=True)
class SetMemory:
    """Set the memory of the definition, or of the running instance (live)."""

    name: str
    mib: int
    live: bool

    def describe(self) -> str:
        return f"set memory to {self.mib} MiB ({'live' if self.live else 'definition'})"


@dataclass(frozen=True)
class AttachUsb:
    """Pass a host USB device through to the domain."""

    name: str
    device: HostUsbDevice
    required: bool
    live: bool

    def describe(self) -> str:
        return f"attach USB {self.device.id} at {self.device.bus}/{self.device.device}" + (
            " (live)" if self.live else ""
        )


@dataclass(frozen=True)
class DetachUsb:
    """Take a passed-through USB device from the domain."""

    name: str
    device: AttachedUsb
    live: bool

    def describe(self) -> str:
        return f"detach USB {self.device.id}" + (" (live)" if self.live else "")


@dataclass(frozen=True)
class WaitForAddress:
    """Wait until the VM has an IPv4 address, for `timeout` seconds at most."""

    name: str
    timeout: float

    def describe(self) -> str:
        return f"wait for an address (up to {self.timeout:g}s)"


@dataclass(frozen=True)
class CreateOverlay:
    """Create the VM's disk: a qcow2 overlay backed by its image."""

    spec: VmSpec

    def describe(self) -> str:
        return f"create disk backed by image {self.spec.image}"


@dataclass(frozen=True)
class WriteSeed:
    """Write the VM's cloud-init seed volume."""

    spec: VmSpec

    def describe(self) -> str:
        return "write cloud-init seed"


@dataclass(frozen=True)
class DeleteVolume:
    """Delete a volume (a VM's disk or seed)."""

    volume: str

    def describe(self) -> str:
        return f"delete volume {self.volume}"


@dataclass(frozen=True)
class DefineNetwork:
    """Define the network of `spec` and start it."""

    spec: NetworkSpec

    def describe(self) -> str:
        return "define and start network"


@dataclass(frozen=True)
class StartNetwork:
    """Start the defined network."""

    name: str

    def describe(self) -> str:
        return "start network"


@dataclass(frozen=True)
class RemoveNetwork:
    """Stop the network and remove its definition."""

    name: str

    def describe(self) -> str:
        return "stop and undefine network"


@dataclass(frozen=True)
class SetDhcpHost:
    """Reserve an address for a MAC in the network's DHCP."""

    network: str
    mac: str
    ip: str
    hostname: str

    def describe(self) -> str:
        return f"reserve {self.ip} for {self.mac}"


@dataclass(frozen=True)
class RemoveDhcpHost:
    """Release a DHCP reservation of the network."""

    network: str
    mac: str
    ip: str

    def describe(self) -> str:
        return f"release reservation {self.ip}"


@dataclass(frozen=True)
class UpsertThing:
    """Register the thing's endpoint in the registry, or update it."""

    spec: ThingSpec
    server_uri: str | None

    def describe(self) -> str:
        target = self.server_uri or "no server yet"
        return f"register endpoint ({target})"


@dataclass(frozen=True)
class DeleteThing:
    """Remove the thing's endpoint from the registry."""

    name: str

    def describe(self) -> str:
        return "unregister endpoint"


@dataclass(frozen=True)
class SyncFirewall:
    """Make the table `inet epfiot` say which bridge is whose: the host's managed networks read afresh, and
    the bridges of the networks the plan defines next (`adding`: bridge, owner)."""

    adding: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        return "write the nftables table inet epfiot"


Step = (
    DefineVm
    | StartVm
    | ShutdownVm
    | DestroyVm
    | SuspendVm
    | ResumeVm
    | UndefineVm
    | SetVcpus
    | SetMemory
    | AttachUsb
    | DetachUsb
    | WaitForAddress
    | CreateOverlay
    | WriteSeed
    | DeleteVolume
    | DefineNetwork
    | StartNetwork
    | RemoveNetwork
    | SetDhcpHost
    | RemoveDhcpHost
    | UpsertThing
    | DeleteThing
    | SyncFirewall
)
