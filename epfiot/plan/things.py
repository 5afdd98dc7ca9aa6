"""Things: LwM2M endpoints registered with the bootstrap server, their server being their VM's address."""

from __future__ import annotations

import ipaddress

from epfiot.model import ObservedThing, ThingSpec, libvirt_name
from epfiot.plan import steps as s
from epfiot.plan.actions import Action, Change, Kind, Phase, Verb
from epfiot.plan.context import Context


def plan_things(ctx: Context) -> None:
    for spec in sorted(ctx.desired.things, key=lambda t: t.name):
        uri = server_uri(ctx, spec)
        notes = () if uri else ("waiting for its server: VM " + str(spec.vm) + " has no address yet",)
        observed = ctx.things.get(spec.name)
        if observed is None:
            created: tuple[Change, ...] = (Change("server_uri", None, uri),)
            if spec.credentials_digest is not None:
                created += (Change("credentials", None, spec.credentials_digest),)
            ctx.actions.append(_action(spec, Verb.CREATE, "declared, not registered", created, (s.UpsertThing(spec, uri),), notes))
            continue
        if observed.owner != spec.owner:
            # Endpoint names are the host's: a tenant learns only that the name is taken.
            rules = ctx.rules
            by = f" ({observed.owner}, stack {observed.stack})" if rules is not None and rules.sees(observed.owner) else ""
            ctx.problems.append(
                f"{spec.source}: thing {spec.name!r}: this endpoint name is registered by another owner{by}; "
                "endpoint names are unique on the host"
            )
            continue
        if observed.stack != spec.stack:
            ctx.problems.append(f"{spec.source}: thing {spec.name!r} belongs to stack {observed.stack!r} of the same owner")
            continue
        changes = thing_changes(spec, observed, uri)
        if changes:
            ctx.actions.append(_action(spec, Verb.UPDATE, "registration differs", changes, (s.UpsertThing(spec, uri),), notes))
        else:
            ctx.actions.append(_action(spec, Verb.NOOP, f"registered ({observed.status})", notes=notes))


def server_uri(ctx: Context, spec: ThingSpec) -> str | None:
    """The thing's LwM2M server: as declared, else its VM's address: the fixed one the VM declares (known
    before the VM even exists), else the first the VM has; None while it has none."""
    if spec.server:
        return spec.server
    if spec.vm is None:
        return None
    name = libvirt_name(spec.owner, spec.vm)
    vm = ctx.desired_vms.get(name)
    if vm is not None and vm.address:
        host = vm.address
    else:
        addresses = ctx.observed.vm_addresses.get(name, ())
        if not addresses:
            return None
        host = addresses[0]
    if ipaddress.ip_address(host).version == 6:
        host = f"[{host}]"
    return f"{'coap' if spec.server_security is None else 'coaps'}://{host}:{spec.port}"


def plan_thing_pruning(ctx: Context) -> None:
    desired = {t.name for t in ctx.desired.things}
    for thing in sorted(ctx.observed.things, key=lambda t: t.name):
        if (thing.owner, thing.stack) not in ctx.scopes or thing.name in desired:
            continue
        if not ctx.kept_unread(Kind.THING, thing.owner, thing.stack, thing.name, thing.manifest, Phase.UNREGISTER_THINGS):
            unregister_thing(ctx, thing, "no longer declared")


def unregister_thing(ctx: Context, thing: ObservedThing, reason: str) -> None:
    changes = (Change("server_uri", thing.server_uri, None),)
    steps = (s.DeleteThing(thing.name),)
    ctx.actions.append(Action(Kind.THING, thing.owner, thing.stack, thing.name, Verb.DESTROY, reason, Phase.UNREGISTER_THINGS, changes, steps))


def thing_changes(spec: ThingSpec, observed: ObservedThing, uri: str | None) -> tuple[Change, ...]:
    pairs = [
        ("server_uri", observed.server_uri, uri),
        ("vm", observed.vm, spec.vm),
        ("lifetime", observed.lifetime, spec.lifetime),
        ("binding", observed.binding, spec.binding),
        ("deletes", list(observed.deletes), list(spec.deletes)),
        ("writes", [(w.path, w.value) for w in observed.writes], [(w.path, w.value) for w in spec.writes]),
        ("credentials", observed.credentials_digest, spec.credentials_digest),  # digests: never a key
    ]
    return tuple(Change(f, before, after) for f, before, after in pairs if before != after)


def _action(
    spec: ThingSpec,
    verb: Verb,
    reason: str,
    changes: tuple[Change, ...] = (),
    steps: tuple[s.Step, ...] = (),
    notes: tuple[str, ...] = (),
) -> Action:
    return Action(Kind.THING, spec.owner, spec.stack, spec.name, verb, reason, Phase.THINGS, changes, steps, notes)
