"""One schema-valid entry of a document -> its frozen spec (NetworkSpec, VmSpec, ThingSpec), with the rules
that need only that entry: sizes and durations converted (and held to the schema's maxima), memory and vcpu
not above their maxima, fields that need another field, a network's CIDR and DHCP range, passwords resolved
and hashed (by epfiot.secrets: no plain password is kept or shown), extra user-data of an accepted form, USB
selectors, LwM2M bootstrap paths and values.

An entry with any problem gives no spec (None): the rules across entries (epfiot.desired.semantics) then
leave it out rather than report what follows from the first mistake.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from epfiot import secrets, units
from epfiot.desired.nodes import ExpansionBudget, Where
from epfiot.desired.schema import limit
from epfiot.desired.userdata import read_extra_user_data
from epfiot.errors import ManifestProblem
from epfiot.model import (
    Credentials,
    NetworkMode,
    NetworkSpec,
    PowerState,
    ResourceWriteSpec,
    Source,
    ThingSpec,
    UsbId,
    UsbSelector,
    VmSpec,
)
from epfiot.psk import InvalidKey, PskCredential, ThingKeys, parse_psk_key

if TYPE_CHECKING:
    from epfiot.salts import SaltStore

MIN_PREFIX, MAX_PREFIX = 8, 30  # a network needs room for the host, a dynamic range and reservations
T = TypeVar("T")


def reserved_addresses(net: ipaddress.IPv4Network) -> dict[ipaddress.IPv4Address, str]:
    """The addresses of a network that no DHCP range or VM may take, and what each one is."""
    return {net.network_address: "the network address", net.broadcast_address: "the broadcast address",
            net.network_address + 1: "the host's address"}  # fmt: skip


@dataclass(frozen=True)
class SecretAccess:
    """Where a load finds secrets (passwords, keys of things), and whether it reads them at all."""

    env: Mapping[str, str]  # where {env: NAME} secrets are looked up
    secrets_dirs: tuple[Path, ...] = ()  # where {file: PATH} may point besides the manifest's directory
    salts: SaltStore | None = None  # the recorded salts of passwords; None: a new random salt at every load
    read: bool = True  # False: identities only (epfiot delete), no secret read, every credential left out
    # For manifests read on behalf of a tenant by a process that can read more than the tenant (watch, the
    # API): the directories {file: PATH} must also lie in. None: no such bound.
    within: tuple[Path, ...] | None = None


@dataclass
class Entries:
    access: SecretAccess
    budget: ExpansionBudget  # the load's, for the #cloud-config of user_data
    problems: list[ManifestProblem] = field(default_factory=list)

    def fail(self, where: tuple[str, int, str], message: str) -> None:
        self.problems.append(ManifestProblem(*where, message))

    def parse(self, where: Where, key: str, parser: Callable[[Any], T], value: Any) -> T | None:
        try:
            return parser(value)
        except ValueError as e:
            self.fail(where.at(key), str(e))
            return None

    def size(self, where: Where, key: str, parser: Callable[[Any], int], definition: str, value: Any) -> int | None:
        """A size, held to the schema's maximum for its definition (which numbers meet in the schema itself)."""
        size = self.parse(where, key, parser, value)
        bound = limit(definition)
        if size is not None and size > bound.maximum:
            self.fail(where.at(key), f"{value!r} is {bound.message}")
            return None
        return size

    def network(self, item: dict[str, Any], owner: str, stack: str, where: Where) -> NetworkSpec | None:
        ok = True
        try:
            net = ipaddress.IPv4Network(item["cidr"])
        except ValueError:
            net = ipaddress.IPv4Network(item["cidr"], strict=False)
            self.fail(where.at("cidr"), f"{item['cidr']!r} has host bits set: the network is {net}")
            ok = False
        if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
            self.fail(where.at("cidr"), f"{item['cidr']!r}: the prefix must be /{MIN_PREFIX} to /{MAX_PREFIX}")
            return None
        start = end = None
        dhcp = item.get("dhcp")
        if dhcp is not None:
            start, end = dhcp["start"], dhcp["end"]
            reserved = reserved_addresses(net)
            for key in ("start", "end"):
                address = ipaddress.IPv4Address(dhcp[key])
                if address not in net:
                    self.fail(where.at("dhcp", key), f"{dhcp[key]} is outside the network {net}")
                    ok = False
                elif address in reserved:
                    self.fail(where.at("dhcp", key), f"{dhcp[key]} is {reserved[address]} of {net}")
                    ok = False
            if ok and ipaddress.IPv4Address(start) > ipaddress.IPv4Address(end):
                self.fail(where.at("dhcp"), f"the range {start} - {end} is empty: start must not come after end")
                ok = False
        if not ok:
            return None
        return NetworkSpec(
            owner=owner,
            stack=stack,
            name=item["name"],
            mode=NetworkMode(item.get("mode", NetworkMode.ROUTE.value)),
            cidr=str(net),
            dhcp_start=start,
            dhcp_end=end,
            source=where.source,
        )

    def vm(self, item: dict[str, Any], owner: str, stack: str, where: Where) -> VmSpec | None:
        problems_before = len(self.problems)
        memory = self.size(where, "memory", units.parse_memory_mib, "memorySize", item["memory"])
        max_memory = memory
        if "max_memory" in item:
            max_memory = self.size(where, "max_memory", units.parse_memory_mib, "memorySize", item["max_memory"])
        vcpu = int(item["vcpu"])  # the schema's integers include 1.0
        max_vcpu = int(item.get("max_vcpu", vcpu))
        if memory is not None and max_memory is not None and memory > max_memory:
            self.fail(
                where.at("memory"),
                f"memory ({units.format_mib(memory)}) is more than max_memory ({units.format_mib(max_memory)})",
            )
        if vcpu > max_vcpu:
            self.fail(where.at("vcpu"), f"vcpu ({vcpu}) is more than max_vcpu ({max_vcpu})")
        timeout = self.parse(where, "shutdown_timeout", units.parse_duration, item.get("shutdown_timeout", 60))
        wait = None
        if "wait_for_address" in item:
            wait = self.parse(where, "wait_for_address", units.parse_duration, item["wait_for_address"])
            if wait == 0:
                self.fail(where.at("wait_for_address"), "must be more than 0 (leave it out not to wait)")
        disk = None
        if "disk_size" in item:
            disk = self.size(where, "disk_size", units.parse_disk_gib, "diskSize", item["disk_size"])
            if "image" not in item:
                self.fail(where.at("disk_size"), "a disk size needs an image: the disk is an overlay of that base image")
        for key in ("address", "wait_for_address"):
            if key in item and "network" not in item:
                self.fail(where.at(key), f"{key} needs network: (without one the VM has no network interface)")
        credentials = None
        if "credentials" in item:
            credentials = self.credentials(item["credentials"], owner, stack, item["name"], where)
        devices = self.devices(item.get("devices") or [], where)
        if len(self.problems) > problems_before:
            return None
        assert memory is not None and max_memory is not None and timeout is not None and devices is not None
        return VmSpec(
            owner=owner,
            stack=stack,
            name=item["name"],
            memory_mib=memory,
            vcpu=vcpu,
            max_memory_mib=max_memory,
            max_vcpu=max_vcpu,
            state=PowerState(item.get("state", PowerState.RUNNING.value)),
            allow_restart=item.get("allow_restart", False),
            shutdown_timeout=timeout,
            image=item.get("image"),
            disk_size_gib=disk,
            network=item.get("network"),
            address=item.get("address"),
            credentials=credentials,
            devices=devices,
            wait_for_address=wait,
            source=where.source,
        )

    def credentials(self, block: dict[str, Any], owner: str, stack: str, vm: str, where: Where) -> Credentials | None:
        ok = True
        password_hash = None
        if "password" in block and self.access.read:
            salts, user = self.access.salts, block["user"]
            try:
                password_hash = secrets.resolve_password(
                    block["password"],
                    base_dir=where.doc.directory,
                    env=self.access.env,
                    allow_literal=block.get("allow_literal_password", False),
                    hasher=secrets.hash_password if salts is None else (
                        lambda password: salts.hash(f"{owner}/{stack}/{vm}", user, password)
                    ),
                    secrets_dirs=self.access.secrets_dirs,
                    within=self.access.within,
                )
            except secrets.SecretError as e:
                self.fail(where.at("credentials", "password"), str(e))
                ok = False
        user_data = block.get("user_data")
        try:
            read_extra_user_data(user_data, self.budget)
        except ValueError as e:
            self.fail(where.at("credentials", "user_data"), str(e))
            ok = False
        if not ok:
            return None
        return Credentials(
            user=block["user"],
            password_hash=password_hash,
            ssh_authorized_keys=tuple(block.get("ssh_authorized_keys", ())),
            hostname=block.get("hostname"),
            user_data=user_data,
        )

    def devices(self, items: list[dict[str, Any]], where: Where) -> tuple[UsbSelector, ...] | None:
        selectors: list[UsbSelector] = []
        seen: dict[tuple[frozenset[UsbId], str | None, str | None], int] = {}
        ok = True
        for index, item in enumerate(items):
            usb = item["usb"]
            at = ("devices", index, "usb")
            main = UsbId.parse(usb["id"]) if "id" in usb else UsbId(usb["vendor"].lower(), usb["product"].lower())
            aliases: list[UsbId] = []
            for number, text in enumerate(usb.get("aliases", ())):
                alias = UsbId.parse(text)
                if alias == main or alias in aliases:
                    self.fail(where.at(*at, "aliases", number), f"{alias} is already one of this device's ids")
                    ok = False
                else:
                    aliases.append(alias)
            for usb_id in (main, *aliases):
                if usb_id.vendor == "0000":
                    self.fail(where.at(*at), f"{usb_id}: vendor id 0000 is not a USB vendor")
                    ok = False
            selector = UsbSelector(
                id=main,
                aliases=tuple(aliases),
                serial=usb.get("serial"),
                port=usb.get("port"),
                required=usb.get("required", True),
                source=Source(where.doc.file, where.doc.line((*where.path, "devices", index))),
            )
            identity = (frozenset(selector.ids), selector.serial, selector.port)
            if identity in seen:
                self.fail(where.at("devices", index), f"the same device as devices[{seen[identity]}] ({selector})")
                ok = False
            seen.setdefault(identity, index)
            selectors.append(selector)
        return tuple(selectors) if ok else None

    def thing(self, item: dict[str, Any], owner: str, stack: str, where: Where) -> ThingSpec | None:
        ok = True
        if "vm" in item and "server" in item:
            self.fail(where.at("server"), "give either vm: or server:, not both")
            ok = False
        if "port" in item and "vm" not in item:
            self.fail(where.at("port"), "port applies to vm: only (a server: URI carries its own port)")
            ok = False
        server = item.get("server")
        if server is not None:
            try:
                port = urlsplit(server).port
            except ValueError:
                port = 0
            if port == 0:
                self.fail(where.at("server"), f"{server!r} has an invalid port (1 to 65535)")
                ok = False
        security = self.psk(item.get("security"), where, "security")
        server_security = (
            security if item.get("server_security") == "same"
            else self.psk(item.get("server_security"), where, "server_security")
        )  # fmt: skip
        unread = ("security" in item and security is None) or ("server_security" in item and server_security is None)
        if unread and self.access.read:  # without reading (identities only), no key is there to be had
            ok = False
        if item.get("server_security") == "same" and "security" not in item:
            self.fail(where.at("server_security"), '"same" needs the bootstrap credentials (security:)')
            ok = False
        if server is not None and server.startswith("coaps://") != ("server_security" in item):
            self.fail(where.at("server"), "a coaps:// server goes with server_security:, a coap:// one without")
            ok = False
        bootstrap = item.get("bootstrap") or {}
        deletes = tuple(bootstrap.get("delete", ("/0", "/1")))
        seen_deletes: set[str] = set()
        for index, path in enumerate(deletes):
            ids = _lwm2m_ids(path)
            at = where.at("bootstrap", "delete", index)
            if ids is None:
                self.fail(at, f"{path!r}: object and instance ids are at most 65535")
                ok = False
            elif ids == (0, 0):
                self.fail(at, "/0/0 holds the device's own bootstrap account and is never deleted")
                ok = False
            elif path in seen_deletes:
                self.fail(at, f"{path} is deleted twice")
                ok = False
            seen_deletes.add(path)
        writes: list[ResourceWriteSpec] = []
        written: dict[tuple[int, ...], int] = {}
        for index, write in enumerate(bootstrap.get("write", ())):
            problem = _write_problem(write, written, index)
            if problem:
                self.fail(where.at("bootstrap", "write", index, "path"), problem)
                ok = False
            writes.append(ResourceWriteSpec(write["path"], write["value"]))
        if not ok:
            return None
        return ThingSpec(
            owner=owner,
            stack=stack,
            name=item["name"],
            vm=item.get("vm"),
            server=server,
            port=int(item.get("port", 5684 if "server_security" in item else 5683)),
            lifetime=int(item.get("lifetime", 300)),
            binding=item.get("binding", "U"),
            deletes=deletes,
            writes=tuple(writes),
            security=security,
            server_security=server_security,
            source=where.source,
        )

    def psk(self, block: dict[str, Any] | None, where: Where, name: str) -> PskCredential | None:
        """A schema-valid ``{mode: psk, identity:, key:}`` -> its credential (the key read and checked
        here; messages name its variable or file, never its text); None and a problem when it is wrong."""
        if block is None or not self.access.read:
            return None
        try:
            text, origin = secrets.read_secret(
                block["key"], base_dir=where.doc.directory, env=self.access.env, what="key",
                secrets_dirs=self.access.secrets_dirs, within=self.access.within,
            )
        except secrets.SecretError as e:
            self.fail(where.at(name, "key"), str(e))
            return None
        try:
            credential = PskCredential(block["identity"], parse_psk_key(text))
            if name == "security":
                ThingKeys(bootstrap=credential)
        except InvalidKey as e:
            self.fail(where.at(name, "key"), f"{origin}: {e}")
            return None
        return credential


def _write_problem(write: dict[str, Any], written: dict[tuple[int, ...], int], index: int) -> str | None:
    """What is wrong with one bootstrap write (recording its path in `written`), or None."""
    from epfiot.registry.things import set_from_server_settings  # the registry's own rule, checked early

    ids = _lwm2m_ids(write["path"])
    problem = None
    if ids is None:
        problem = f"{write['path']!r}: ids are at most 65535"
    elif ids[:2] == (0, 0):
        problem = "instance /0/0 (the device's own bootstrap account) is never written"
    elif set_from_server_settings(ids):
        problem = f"{write['path']} is set from the thing's server settings (vm:/server:, lifetime, binding)"
    else:
        clash = next(
            (i for other, i in written.items()
             if other[:3] == ids[:3] and (len(other) == 3 or len(ids) == 3 or other == ids)),
            None,
        )  # fmt: skip
        if clash is not None:
            problem = f"{write['path']} is already written by bootstrap.write[{clash}]"
        written[ids] = index
    value = write["value"]  # a number is finite: the schema's validator takes inf and nan for no number
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        problem = problem or "the value does not fit in a 64-bit integer"
    return problem


def _lwm2m_ids(path: str) -> tuple[int, ...] | None:
    """The ids of a path the schema's pattern accepted, or None when one is above 65535."""
    from epfiot.registry.paths import PathError, parse_path  # imported only for things with bootstrap paths

    try:
        return parse_path(path)
    except PathError:
        return None
