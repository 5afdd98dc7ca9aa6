"""epfiot token create TENANT | --admin: a new API token, shown once, and the hash to put into the host
configuration (epfiot keeps no token anywhere: only the host configuration's hashes)."""

from __future__ import annotations

import argparse
import re

from epfiot.errors import UsageError


def run(args: argparse.Namespace) -> int:
    from epfiot import render
    from epfiot.hostconfig import (
        HostConfig,
        HostConfigError,
        host_config_path,
        load_host_config,
        new_token,
        token_hash,
    )
    from epfiot.model import NAME_PATTERN

    if args.admin == bool(args.tenant):
        raise UsageError("give a tenant (epfiot token create TENANT) or --admin, not both")
    if args.tenant and not re.match(NAME_PATTERN, args.tenant):
        raise UsageError(f"{args.tenant!r} is not a tenant name (lowercase letters, digits and '-')")
    token = new_token()
    digest = token_hash(token)
    path, _ = host_config_path(getattr(args, "host_config", None))
    try:
        config = load_host_config(getattr(args, "host_config", None))
    except HostConfigError:
        config = HostConfig()  # a token may be made while the configuration is being written
    unknown = bool(args.tenant) and config.has_tenants and args.tenant not in config.tenants
    where = "admin.tokens" if args.admin else f"tenants.{args.tenant}.tokens"
    if args.output == "json":
        print(render.to_json({"tenant": args.tenant, "admin": args.admin, "token": token, "hash": digest, "config": str(path), "key": where}))
        return 0
    who = "the administrator" if args.admin else f"tenant {args.tenant}"
    print(f"API token for {who} (shown once, keep it secret; send it as Authorization: Bearer <token>):")
    print(f"  {token}")
    print(f"Add its hash to {where} in {path} (the service reads the file again when it changes):")
    print(f'  - "{digest}"')
    if unknown:
        print(f"(tenant {args.tenant} is not in {path} yet: add it there with its users and manifest directories)")
    return 0
