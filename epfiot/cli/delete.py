"""epfiot delete: destroy what manifests declare (-f), or one VM (vm OWNER/NAME)."""

from __future__ import annotations

import argparse

from epfiot.cli.apply import reconcile
from epfiot.cli.common import host_only, load
from epfiot.errors import EpfiotError, UsageError


def run(args: argparse.Namespace) -> int:
    from epfiot.model import Desired, StackSpec, VmSpec

    if args.files and args.what:
        raise UsageError("give either -f PATH or: vm OWNER/NAME, not both")
    if args.files:
        return reconcile(args, load(args, read_secrets=False), deletion=True)  # deleting needs identities only
    if len(args.what) != 2 or args.what[0] != "vm" or "/" not in args.what[1]:
        raise UsageError("usage: epfiot delete -f PATH...  |  epfiot delete vm OWNER/NAME")
    owner, _, name = args.what[1].partition("/")
    with host_only(args) as host:
        vm = next((v for v in host.observe().vms if v.libvirt_name == f"{owner}.{name}"), None)
    if vm is None or vm.ownership is None:
        state = "not managed by epfiot" if vm is not None else "not found"
        raise EpfiotError(f"vm {owner}/{name}: {state}; nothing to delete")
    stack = StackSpec(owner=owner, name=vm.ownership.stack)
    placeholder = VmSpec(owner=owner, stack=stack.name, name=name, memory_mib=1, vcpu=1, max_memory_mib=1, max_vcpu=1)
    return reconcile(args, Desired(stacks=(stack,), vms=(placeholder,)), deletion=True)
