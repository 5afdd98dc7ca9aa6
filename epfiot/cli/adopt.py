"""epfiot adopt vm NAME --owner O --stack S: take an unmanaged domain under management (epfiot.adoption)."""

from __future__ import annotations

import argparse
import sys

from epfiot.cli.common import service
from epfiot.errors import UsageError


def run(args: argparse.Namespace) -> int:
    from epfiot.adoption import adopt, entry_yaml, resolve_name
    from epfiot.approval import confirm
    from epfiot.libvirt.adopt import foreign_parts, inactive_xml, write_ownership

    if args.kind != "vm":
        raise UsageError("only VMs are adopted: epfiot adopt vm NAME --owner OWNER --stack STACK")
    from epfiot import authz

    svc, caller = service(args)
    # A tenant adopts only into its own name; another owner is answered as a domain that is not there.
    authz.require(caller, args.owner, f"vm {args.owner}/{args.name}")
    with svc.connection() as host:
        observed = host.observe()
        domain, name = resolve_name(args.name, args.owner, {vm.libvirt_name for vm in observed.vms})
        vm = next(v for v in observed.vms if v.libvirt_name == domain)
        conn = host.connection  # type: ignore[attr-defined]
        foreign = () if vm.ownership is not None else foreign_parts(inactive_xml(conn, domain), owner=args.owner, name=name, image_pool=svc.image_pool)
        adoption = adopt(vm, name, args.owner, args.stack, observed, foreign)
        for line in adoption.describe():
            print(line, file=sys.stderr)
        confirm(f"adopting domain {domain}", auto_approve=args.auto_approve, stdin=sys.stdin, out=sys.stderr)
        write_ownership(conn, domain, adoption.ownership)
    print(f"Adopted domain {domain} as vm {args.owner}/{name}. Its manifest entry:", file=sys.stderr)
    print(entry_yaml(adoption), end="")
    return 0
