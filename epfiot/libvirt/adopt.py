"""Adopting a domain (epfiot adopt vm): what of its definition epfiot could not render again, and writing
epfiot's ownership element into it.

epfiot renders a managed VM's definition whole from templates/domain.xml.j2 whenever it changes one (a new
memory size, a network, a restart). A part of an adopted domain that the template does not render (a disk
that is not an overlay in the image pool, an interface with a MAC of its own, host devices, graphics ...)
would be dropped then, without a word. So adopt refuses a domain that has any and names them: they are the
foreign parts below. The devices libvirt adds to any domain (controllers, input devices, the balloon) and
those the template has (serial console, guest agent channel, RNG) are not foreign.
"""

from __future__ import annotations

from typing import Any

import libvirt

from epfiot.libvirt.connection import host_errors
from epfiot.libvirt.metadata import NAMESPACE
from epfiot.libvirt.xmlmodel import parse
from epfiot.model import Ownership, overlay_volume_name, vm_mac

# Devices of <devices> that losing loses nothing: libvirt's defaults, and what the template has.
_COMMON = frozenset({"emulator", "controller", "input", "memballoon", "serial", "console", "channel", "rng"})


def foreign_parts(xml: str, *, owner: str, name: str, image_pool: str) -> tuple[str, ...]:
    """The parts of the domain document `xml` that epfiot's template does not render, in words."""
    domain = parse(xml)
    libvirt_name = domain.findtext("name") or ""
    overlay = overlay_volume_name(owner, name)
    parts: list[str] = []
    for device in domain.iterfind("devices/*"):
        tag = str(device.tag)
        if tag in _COMMON or (tag == "audio" and device.get("type") == "none"):  # libvirt adds a silent one
            continue
        source = device.find("source")
        target = device.find("target")
        if tag == "disk":
            where = target.get("dev", "?") if target is not None else "?"
            if (device.get("type"), device.get("device", "disk")) == ("volume", "disk") and source is not None \
                    and (source.get("pool"), source.get("volume")) == (image_pool, overlay):  # fmt: skip
                continue  # epfiot's own kind of disk: an overlay of a base image in the image pool
            what = _source(source)
            if device.get("device") == "cdrom" and what.endswith(".epfiot-seed.iso"):
                parts.append(f"disk {where}: a cloud-init seed, whose credentials cannot be read back")
            else:
                parts.append(f"{device.get('device', 'disk')} {where}: {what} (epfiot's disks are overlays {overlay} in pool {image_pool})")
        elif tag == "interface":
            mac_element = device.find("mac")
            mac = (mac_element.get("address", "") if mac_element is not None else "").lower()
            network = source.get("network", "") if source is not None else ""
            expected = vm_mac(libvirt_name)
            if device.get("type") == "network" and network.startswith(f"{owner}.") and mac == expected:
                continue
            on = f"network {network}" if network else f"type {device.get('type')}"
            parts.append(f"interface {mac or '(no MAC)'} on {on} (epfiot's: MAC {expected} on one of {owner}'s networks)")
        elif tag == "hostdev":
            parts.append("a host device (declare USB devices in the manifest once adopted)")
        else:
            parts.append(f"{tag}" + (f" ({device.get('type')})" if device.get("type") else ""))
    return tuple(parts)


def _source(source: Any) -> str:
    if source is None:
        return "no source"
    for attribute in ("file", "dev", "volume", "name", "network"):
        if source.get(attribute):
            return f"{attribute} {source.get(attribute)}"
    return "a source epfiot does not render"


def inactive_xml(conn: Any, domain: str) -> str:
    with host_errors(f"read domain {domain}"):
        return str(conn.lookupByName(domain).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def write_ownership(conn: Any, domain: str, ownership: Ownership) -> None:
    """Write epfiot's <epfiot:resource> into the domain's definition (and its running instance)."""
    from xml.sax.saxutils import quoteattr

    attributes = {"owner": ownership.owner, "stack": ownership.stack, "name": ownership.name,
                  "spec-hash": ownership.spec_hash, "seed-digest": ownership.seed_digest,
                  "shutdown-timeout": str(ownership.shutdown_timeout), "manifest": ownership.manifest}  # fmt: skip
    element = "<resource " + " ".join(f"{k}={quoteattr(v)}" for k, v in attributes.items() if v) + "/>"
    with host_errors(f"write epfiot's metadata into domain {domain}"):
        dom = conn.lookupByName(domain)
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, element, "epfiot", NAMESPACE, flags)
