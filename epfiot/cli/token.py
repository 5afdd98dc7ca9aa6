"""epfiot token create TENANT | --admin: a new API token, shown once, and the hash to put into the host
configuration (epfiot keeps no token anywhere: only the host configuration's hashes)."""

from __future__ import annotations

import argparse

from epfiot.errors import UsageError


def run(args: argparse.Namespace) -> int:
    from epfiot import render
    from epfiot.hostconfig import host_config_path, new_token, token_hash

    if args.admin == bool(args.tenant):
        raise UsageError("give a tenant (epfiot token create TENANT) or --admin, not both")
    token = new_token()
    digest = token_hash(token)
    path, _ = host_config_path(getattr(args, "host_config", None))
    where = "admin.tokens" if args.admin else f"tenants.{args.tenant}.tokens"
    if args.output == "json":
        print(render.to_json({"tenant": args.tenant, "admin": args.admin, "token": token, "hash": digest, "config": str(path), "key": where}))
        return 0
    who = "the administrator" if args.admin else f"tenant {args.tenant}"
    print(f"API token for {who} (shown once, keep it secret; send it as Authorization: Bearer <token>):")
    print(f"  {token}")
    print(f"Add its hash to {where} in {path} (the service reads the file again when it changes):")
    print(f'  - "{digest}"')
    return 0
