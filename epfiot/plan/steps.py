"""The steps an action is made of: typed data that the planner produces and apply executes.

Each step maps to one Host (or registry) call. Steps carry everything their call needs, so executing a plan
never re-reads desired state, and a plan printed with --dry-run is exactly what apply would do.
"""

from __future__ import annotations

from dataclasses import dataclass

from epfiot.model import AttachedUsb, HostUsbDevice, NetworkSpec, ThingSpec, VmSpec


@dataclass(frozen=True)
class DefineVm:
    spec: VmSpec
    usb: tuple[tuple[HostUsbDevice, bool], ...]  # (device, required)
    uuid: str | None
    seed_digest: str

    def describe(self) -> str:
        return "define" if self.uuid is None else "update definition"


@dataclass(frozen=True)
class StartVm:
    name: str
    paused: bool = False

    def describe(self) -> str:
        return "start paused" if self.paused else "start"


@dataclass(frozen=True)
class ShutdownVm:
    name: str
    timeout: float

    def describe(self) -> str:
        return f"shut down (graceful, forced after {self.timeout:g}s)"


@dataclass(frozen=True)
class DestroyVm:
    name: str

    def describe(self) -> str:
        return "power off (forced)"


@dataclass(frozen=True)
class SuspendVm:
    name: str

    def describe(self) -> str:
        return "pause"


@dataclass(frozen=True)
class ResumeVm:
    name: str

    def describe(self) -> str:
        return "resume"


@dataclass(frozen=True)
class UndefineVm:
    name: str

    def describe(self) -> str:
        return "undefine"


@dataclass(frozen=True)
class SetVcpus:
    name: str
    count: int
    live: bool

    def describe(self) -> str:
        return f"set vcpus to {self.count} ({'live' if self.live else 'definition'})"


@dataclass(frozen=True)
class SetMemory:
    name: str
    mib: int
    live: bool

    def describe(self) -> str:
        return f"set memory to {self.mib} MiB ({'live' if self.live else 'definition'})"


@dataclass(frozen=True)
class AttachUsb:
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
    name: str
    device: AttachedUsb
    live: bool

    def describe(self) -> str:
        return f"detach USB {self.device.id}" + (" (live)" if self.live else "")


@dataclass(frozen=True)
class WaitForAddress:
    name: str
    timeout: float

    def describe(self) -> str:
        return f"wait for an address (up to {self.timeout:g}s)"


@dataclass(frozen=True)
class CreateOverlay:
    spec: VmSpec

    def describe(self) -> str:
        return f"create disk backed by image {self.spec.image}"


@dataclass(frozen=True)
class WriteSeed:
    spec: VmSpec

    def describe(self) -> str:
        return "write cloud-init seed"


@dataclass(frozen=True)
class DeleteVolume:
    volume: str

    def describe(self) -> str:
        return f"delete volume {self.volume}"


@dataclass(frozen=True)
class DefineNetwork:
    spec: NetworkSpec

    def describe(self) -> str:
        return "define and start network"


@dataclass(frozen=True)
class StartNetwork:
    name: str

    def describe(self) -> str:
        return "start network"


@dataclass(frozen=True)
class RemoveNetwork:
    name: str

    def describe(self) -> str:
        return "stop and undefine network"


@dataclass(frozen=True)
class SetDhcpHost:
    network: str
    mac: str
    ip: str
    hostname: str

    def describe(self) -> str:
        return f"reserve {self.ip} for {self.mac}"


@dataclass(frozen=True)
class RemoveDhcpHost:
    network: str
    mac: str
    ip: str

    def describe(self) -> str:
        return f"release reservation {self.ip}"


@dataclass(frozen=True)
class UpsertThing:
    spec: ThingSpec
    server_uri: str | None

    def describe(self) -> str:
        target = self.server_uri or "no server yet"
        return f"register endpoint ({target})"


@dataclass(frozen=True)
class DeleteThing:
    name: str

    def describe(self) -> str:
        return "unregister endpoint"


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
)
