"""epfiot delete: destroy what manifests declare (-f), or one VM (vm OWNER/NAME)."""

from __future__ import annotations

import argparse

from epfiot.cli.apply import reconcile
from epfiot.cli.common import manifests_from, service
from epfiot.errors import UsageError


def run(args: argparse.Namespace) -> int:
    if args.files and args.what:
        raise UsageError("give either -f PATH or: vm OWNER/NAME, not both")
    if args.files:
        return reconcile(args, manifests_from(args, read_secrets=False), deletion=True)  # deleting needs identities only
    if len(args.what) != 2 or args.what[0] != "vm" or "/" not in args.what[1]:
        raise UsageError("usage: epfiot delete -f PATH...  |  epfiot delete vm OWNER/NAME")
    owner, _, name = args.what[1].partition("/")
    svc, caller = service(args)
    return reconcile(args, svc.vm_deletion(caller, owner, name), deletion=True, scoped=(svc, caller))
