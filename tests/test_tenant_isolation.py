"""A property of the service (epfiot.service), on the libvirt test driver: for random manifests of two tenants,
nothing tenant alice writes, applies, deletes or asks changes or reveals anything of bob's, or of what epfiot
does not manage (a domain and a network defined by hand).

Each example gets a fresh private test-driver host; bob applies his manifests first, then alice runs a random
sequence of operations, and after each one bob's resources and the unmanaged ones are exactly as they were
(their libvirt XML, their power state, bob's registrations), and nothing alice gets back names bob or the
unmanaged objects. A name alice chooses may collide with one of bob's (the same VM, network or thing name,
the same network range): that is the point.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epfiot.errors import EpfiotError, ManifestError
from epfiot.hostconfig import ADMIN, Caller, parse_host_config
from epfiot.libvirt.host import LibvirtHost
from epfiot.service import Manifests, NotFound, Service, event_owner
from tests.hosts.testdriver import POOL

ALICE, BOB = Caller("alice", "alice"), Caller("bob", "bob")
HIDDEN = ("bob", "handmade")  # nothing alice gets back may contain these

HOST_FILE = f"""<node>
  <domain type='test'>
    <name>handmade</name>
    <memory unit='MiB'>64</memory>
    <os><type>hvm</type></os>
  </domain>
  <network>
    <name>handmade-net</name>
    <bridge name='epfhand0'/>
    <ip address='10.77.9.1' netmask='255.255.255.0'/>
  </network>
  <pool type='dir'>
    <name>{POOL}</name>
    <target><path>/nonexistent</path></target>
  </pool>
</node>
"""

names = st.sampled_from(["web", "db", "x"])
vms = st.lists(
    st.fixed_dictionaries({"name": names, "memory": st.sampled_from(["64MiB", "128MiB"]), "vcpu": st.just(1), "state": st.sampled_from(["running", "shutoff"]), "shutdown_timeout": st.just("1s")}),
    max_size=2,
    unique_by=lambda v: v["name"],
)
networks = st.lists(
    st.fixed_dictionaries({"name": st.sampled_from(["net", "lan"]), "mode": st.just("nat"), "cidr": st.sampled_from(["10.77.1.0/24", "10.77.2.0/24", "10.77.9.0/24"])}),
    max_size=1,
    unique_by=lambda n: n["name"],
)
things = st.lists(
    st.fixed_dictionaries({"name": st.sampled_from(["t1", "t2"]), "server": st.sampled_from(["coap://192.0.2.10:5683", "coap://192.0.2.11:5683"])}),
    max_size=2,
    unique_by=lambda t: t["name"],
)
# bob's own networks keep clear of the unmanaged one: the host's rules refuse an overlap with it to anyone.
their_networks = st.lists(
    st.fixed_dictionaries({"name": st.sampled_from(["net", "lan"]), "mode": st.just("nat"), "cidr": st.sampled_from(["10.77.1.0/24", "10.77.2.0/24"])}),
    max_size=1,
    unique_by=lambda n: n["name"],
)
stacks = st.fixed_dictionaries({"stack": st.sampled_from(["s1", "s2"]), "vms": vms, "networks": networks, "things": things})
their_stacks = st.fixed_dictionaries({"stack": st.sampled_from(["s1", "claimed"]), "vms": vms, "networks": their_networks, "things": things})


def document(owner: str, content: dict[str, Any]) -> str:
    return yaml.safe_dump({"version": 1, "owner": owner, **content}, sort_keys=False)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("apply"), stacks),
        st.tuples(st.just("apply with bob's"), stacks),
        st.tuples(st.just("plan"), stacks),
        st.tuples(st.just("delete"), stacks),
        st.tuples(st.just("delete bob's vm"), names),
    ),
    min_size=1,
    max_size=4,
)


def others(host: LibvirtHost, service: Service) -> object:
    """Everything that is not alice's: bob's and the unmanaged domains and networks, and bob's things."""
    conn = host.connection
    domains = sorted((d.name(), d.XMLDesc(0), d.isActive()) for d in conn.listAllDomains() if not d.name().startswith("alice."))
    nets = sorted((n.name(), n.XMLDesc(0), n.isActive()) for n in conn.listAllNetworks() if not n.name().startswith("alice."))
    return domains, nets, [t for t in service.things(ADMIN) if t["owner"] != "alice"]


def asked(service: Service) -> list[object]:
    """What alice can ask about, each of which must show only hers."""
    answers: list[object] = [service.vms(ALICE, service.observe()), service.networks(ALICE, service.observe()), service.things(ALICE), service.usb(ALICE, service.observe())]
    events = service.events(ALICE)
    assert {event_owner_of(e) for e in events} <= {"alice"}
    for listing in answers[:3]:
        assert {row["owner"] for row in listing} <= {"alice"}  # type: ignore[attr-defined]
    return [*answers, events]


def event_owner_of(data: dict[str, object]) -> str | None:
    from epfiot.eventlog import Event

    fields = {k: v for k, v in data.items() if k not in ("at", "kind", "subject", "message")}
    return event_owner(Event(0.0, str(data["kind"]), str(data["subject"]), str(data["message"]), fields))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(theirs=their_stacks, steps=operations)
def test_nothing_a_tenant_does_changes_or_reveals_another_tenants_or_unmanaged_resources(theirs: dict[str, Any], steps: list[tuple[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        (directory / "host.xml").write_text(HOST_FILE)
        config = parse_host_config(f"version: 1\nstate_dir: {directory / 'state'}\ntenants:\n  alice: {{}}\n  bob: {{}}\n", str(directory / "host.yaml"))
        with LibvirtHost.open(f"test://{directory / 'host.xml'}") as host:
            service = Service.from_host_config(config, uri="test:///unused", host=host)
            service.apply(BOB, Manifests.from_text(document("bob", theirs), "bob.yaml"), approve=True)
            before = others(host, service)
            answers: list[object] = []
            for operation, argument in steps:
                answers += run_as_alice(service, operation, argument)
                assert others(host, service) == before, operation
                answers += asked(service)
            text = json.dumps(answers, default=str)
            for hidden in HIDDEN:
                assert hidden not in text


def run_as_alice(service: Service, operation: str, argument: Any) -> list[object]:
    mine = Manifests.from_text(document("alice", argument), "alice.yaml") if operation != "delete bob's vm" else None
    if operation == "apply with bob's":
        both = Manifests(texts=(("alice.yaml", document("alice", argument)), ("claim.yaml", document("bob", {"stack": "claimed", "vms": []}))), env={})
        with pytest.raises(ManifestError, match=r"claim\.yaml:2: owner: 'bob' is not yours"):
            service.apply(ALICE, both, approve=True)
        return []
    if operation == "delete bob's vm":
        for ask in (service.delete_vm, lambda *who: service.vm(who[0], service.observe(), *who[1:])):
            with pytest.raises(NotFound) as raised:
                ask(ALICE, "bob", argument)
            assert str(raised.value) == f"vm bob/{argument} does not exist"
        return []
    assert mine is not None
    try:
        if operation == "plan":
            return [service.plan(ALICE, mine)]
        if operation == "delete":
            return [service.delete(ALICE, mine, approve=True)]
        return [service.apply(ALICE, mine, approve=True)]
    except EpfiotError as error:  # a plan with problems (a name or range bob holds): refused, what it says counts
        return [str(error)]
