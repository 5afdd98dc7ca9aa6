"""The two entry points: make_plan (bring the manifests' scopes to what they declare) and plan_deletion
(remove what the given manifests declare), and the order in which their parts are planned."""

from __future__ import annotations

from epfiot.model import Desired, Observed
from epfiot.plan.actions import Options, Plan, UsbResolution
from epfiot.plan.context import Context, describes
from epfiot.plan.host_networks import check_networks
from epfiot.plan.host_rules import HostRules
from epfiot.plan.host_usb import check_usb
from epfiot.plan.networks import plan_network_pruning, plan_networks
from epfiot.plan.quotas import check_quotas
from epfiot.plan.targets import restrict
from epfiot.plan.things import plan_thing_pruning, plan_things, unregister_thing
from epfiot.plan.vms import destroy_vm, plan_vm, plan_vm_pruning

DEFAULT_OPTIONS = Options()


def make_plan(
    desired: Desired,
    observed: Observed,
    options: Options = DEFAULT_OPTIONS,
    *,
    usb: UsbResolution | None = None,
    seed_digests: dict[str, str] | None = None,
    unread_manifests: frozenset[str] = frozenset(),
    rules: HostRules | None = None,
) -> Plan:
    """Plan the changes that bring the scopes (owner, stack) of `desired` to `desired`.

    `usb` is the resolution of the VMs' device selectors against observed.usb (epfiot.usb does it);
    `seed_digests` maps VM libvirt names to the digest of their cloud-init seed (epfiot.cloudinit);
    `unread_manifests` are the recorded declaring files that exist but were not given (what they declare stays);
    `rules` are the host's (epfiot.plan.host_rules): with them, what the plan adds is checked against the whole
    host (overlapping networks, allowed ranges, devices held elsewhere, endpoint names, quotas).
    """
    ctx = Context(desired, observed, options, usb or UsbResolution(), seed_digests or {}, unread_manifests, rules)
    # Networks first: a VM's reservation is made again on a network this plan re-creates. Pruned VMs
    # next: they release the addresses and networks that declared VMs may take.
    replaced_networks = plan_networks(ctx)
    if options.prune:
        ctx.pruned = plan_vm_pruning(ctx)
    check_usb(ctx)  # after pruning: a VM this plan destroys frees its devices
    for name in sorted(ctx.desired_vms):
        plan_vm(ctx, name, ctx.desired_vms[name], replaced_networks)
    if options.prune:
        plan_network_pruning(ctx, ctx.pruned)
    plan_things(ctx)
    if options.prune:
        plan_thing_pruning(ctx)
    # Last: what this plan removes no longer counts against what it adds. On the whole plan, before a
    # --target cuts it down: problems stay whole.
    check_networks(ctx)
    check_quotas(ctx)
    plan = Plan.ordered(ctx.actions, ctx.problems)
    return restrict(plan, options.targets, desired, observed) if options.targets else plan


def plan_deletion(desired: Desired, observed: Observed, options: Options = DEFAULT_OPTIONS) -> Plan:
    """Destroy exactly the resources that `desired` declares (epfiot delete -f)."""
    ctx = Context(Desired(stacks=desired.stacks), observed, options, UsbResolution(), {})
    vms = {v.libvirt_name for v in desired.vms}
    for name in sorted(vms):
        vm = ctx.vms.get(name)
        if vm is not None and describes(vm.libvirt_name, vm.ownership) and ctx.in_scope(vm.ownership):
            destroy_vm(ctx, vm, "declared in the manifests given to delete")
    for name in sorted({t.name for t in desired.things}):
        thing = ctx.things.get(name)
        if thing is not None and (thing.owner, thing.stack) in ctx.scopes:
            unregister_thing(ctx, thing, "declared in the manifests given to delete")
    plan_network_pruning(ctx, vms, only={n.libvirt_name for n in desired.networks})
    return Plan.ordered(ctx.actions, ctx.problems)
