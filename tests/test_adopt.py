"""epfiot adopt vm: an unmanaged domain taken under management, end to end on the libvirt test driver (see
tests/test_cli.py for how its shared state is held)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import libvirt
import pytest
import yaml

from epfiot.model import vm_mac
from tests.stacks import write_stack

URI = "test:///default"




def define(conn: libvirt.virConnect, name: str, devices: str = "", *, start: bool = True) -> libvirt.virDomain:
    xml = (f"<domain type='test'><name>{name}</name><memory unit='MiB'>256</memory><currentMemory unit='MiB'>96</currentMemory>"
           f"<vcpu current='2'>4</vcpu><os><type>hvm</type></os><devices>{devices}</devices></domain>")  # fmt: skip
    dom = conn.defineXML(xml)
    if start:
        dom.create()
    return dom


def manifest_with(directory: Path, printed: str, **extra: object) -> Path:
    document = {"version": 1, "stack": "legacy", "owner": "alice", "vms": yaml.safe_load(printed), **extra}
    path = directory / "legacy.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_an_adopted_domain_plans_no_changes_with_the_printed_entry(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    define(host, "alice.legacy")
    code, out, err = run("adopt", "vm", "alice.legacy", "--owner", "alice", "--stack", "legacy", "-y")
    assert code == 0, err
    assert "domain alice.legacy becomes vm alice/legacy of stack legacy; epfiot will manage:" in err
    assert "memory 96MiB (max 256MiB), vcpu 2 (max 4), state running" in err
    assert out.startswith("# vm alice/legacy, adopted from domain alice.legacy")
    assert yaml.safe_load(out) == [{"name": "legacy", "memory": "96MiB", "vcpu": 2, "max_memory": "256MiB", "max_vcpu": 4, "state": "running"}]
    assert "epfiot:resource" in host.lookupByName("alice.legacy").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    manifest = manifest_with(tmp_path, out)
    code, plan, _ = run("plan", "-f", str(manifest), "--detailed-exitcode")
    assert code == 0, plan
    assert "Plan: 0 to create, 0 to change, 0 to destroy, 1 unchanged." in plan
    code, _, err = run("adopt", "vm", "alice.legacy", "--owner", "alice", "--stack", "legacy", "-y")
    assert code == 1 and "already managed by epfiot (vm alice/legacy of stack legacy)" in err
    # managed now: a change is applied like any other
    write_stack(tmp_path, "alice", stack="legacy", filename="legacy.yaml",
                vms=[{**yaml.safe_load(out)[0], "memory": "128MiB"}])  # fmt: skip
    code, applied, _ = run("apply", "-f", str(manifest))
    assert code == 0, applied
    assert host.lookupByName("alice.legacy").info()[2] == 128 * 1024


def test_an_adopted_domain_on_its_owners_network_keeps_network_and_address(run, tmp_path: Path, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    net = {"name": "lan", "mode": "isolated", "cidr": "10.161.0.0/24"}
    network_stack = write_stack(tmp_path, "alice", stack="net", networks=[net], filename="net.yaml")
    assert run("apply", "-f", str(network_stack))[0] == 0
    mac = vm_mac("alice.legacy")
    host.networkLookupByName("alice.lan").update(
        libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1,
        f"<host mac='{mac}' ip='10.161.0.20'/>", libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG | libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE,
    )  # fmt: skip
    define(host, "alice.legacy", f"<interface type='network'><mac address='{mac}'/><source network='alice.lan'/></interface>")

    code, out, err = run("adopt", "vm", "legacy", "--owner", "alice", "--stack", "legacy", "-y")
    assert code == 0, err
    entry = yaml.safe_load(out)[0]
    assert (entry["network"], entry["address"]) == ("lan", "10.161.0.20")
    manifest = manifest_with(tmp_path, out)
    code, plan, _ = run("plan", "-f", str(manifest), "-f", str(network_stack), "--detailed-exitcode")
    assert code == 0, plan


def test_a_domain_with_parts_epfiot_would_drop_is_not_adopted(run, host: libvirt.virConnect) -> None:  # type: ignore[no-untyped-def]
    devices = "<disk type='file' device='disk'><source file='/var/lib/x.img'/><target dev='vda'/></disk><interface type='network'><source network='default'/></interface><graphics type='vnc'/>"
    define(host, "alice.legacy", devices)
    code, out, err = run("adopt", "vm", "alice.legacy", "--owner", "alice", "--stack", "legacy", "-y")
    assert code == 1 and out == ""
    assert "domain alice.legacy cannot be adopted as it is" in err
    assert "disk vda: file /var/lib/x.img" in err
    assert "on network default" in err and "graphics (vnc)" in err
    assert "Remove them (virsh edit) or re-create the VM under epfiot; nothing was changed." in err
    assert "epfiot:resource" not in host.lookupByName("alice.legacy").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def test_adopt_follows_the_naming_rule_and_asks_first(run, host: libvirt.virConnect, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    define(host, "alice_legacy", start=False)
    code, _, err = run("adopt", "vm", "alice_legacy", "--owner", "alice", "--stack", "legacy", "-y")
    assert code == 1 and "does not follow epfiot's naming rule" in err
    assert "virsh domrename alice_legacy alice.alice-legacy" in err
    define(host, "bob.legacy", start=False)
    code, _, err = run("adopt", "vm", "bob.legacy", "--owner", "alice", "--stack", "legacy", "-y")
    assert code == 1 and "virsh domrename bob.legacy alice.legacy" in err
    code, _, err = run("adopt", "vm", "nothing", "--owner", "alice", "--stack", "legacy")
    assert code == 1 and "no domain 'nothing'" in err

    define(host, "alice.legacy", start=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, out, err = run("adopt", "vm", "alice.legacy", "--owner", "alice", "--stack", "legacy")
    assert code == 1 and "pass -y (--auto-approve)" in err and out == ""
    assert "epfiot:resource" not in host.lookupByName("alice.legacy").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert {d.name() for d in host.listAllDomains()} >= {"alice_legacy", "bob.legacy", "alice.legacy"}  # renamed none


class Terminal(io.StringIO):
    """Typed answers on a stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_on_a_terminal_adopt_asks_and_only_yes_goes_on(run, host: libvirt.virConnect, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    define(host, "alice.legacy", start=False)
    monkeypatch.setattr(sys, "stdin", Terminal("no\n"))
    code, out, err = run("adopt", "vm", "legacy", "--owner", "alice", "--stack", "legacy")
    assert code == 1 and "Go on with adopting domain alice.legacy? Only 'yes' is accepted:" in err
    assert "not confirmed; nothing was changed" in err and out == ""
    assert "epfiot:resource" not in host.lookupByName("alice.legacy").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    monkeypatch.setattr(sys, "stdin", Terminal("yes\n"))
    code, out, err = run("adopt", "vm", "legacy", "--owner", "alice", "--stack", "legacy")
    assert code == 0, err
    assert yaml.safe_load(out)[0]["state"] == "shutoff"
    assert "epfiot:resource" in host.lookupByName("alice.legacy").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
