"""The argument parser and the dispatch to the command modules (each imported only when it runs)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from epfiot import __version__
from epfiot.errors import EpfiotError

# command -> the module whose run(args) carries it out
COMMANDS = {
    "plan": "plan",
    "diff": "plan",
    "apply": "apply",
    "delete": "delete",
    "adopt": "adopt",
    "get": "get",
    "watch": "watch",
    "serve": "serve",
    "events": "events",
    "schema": "schema",
    "version": "version",
    "explain": "explain",
    "completion": "completion",
    "token": "token",
}
# The commands that a user who is not root runs through the service's API socket (epfiot.api.client).
REMOTE_COMMANDS = frozenset({"plan", "diff", "apply", "delete", "get", "events"})


def add_global_options(parser: argparse.ArgumentParser, default: object = None) -> None:
    """The options of every command; `default`: argparse.SUPPRESS for a subcommand's copy (see build_parser)."""
    image_pool = os.environ.get("EPFIOT_IMAGE_POOL", "epfiot-images")
    image_dir = os.environ.get("EPFIOT_IMAGE_DIR", "/var/lib/epfiot/images")

    group = parser.add_argument_group("global options", "before or after the command")

    def own(value: object) -> object:  # the main parser's default; a subcommand's copy has none
        return value if default is None else default

    group.add_argument("-c", "--connect", metavar="URI", default=default, help="libvirt URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system)")
    group.add_argument("--host-config", type=Path, default=default, help="the host configuration: tenants, state directory, image pool, USB policy (default: $EPFIOT_HOST_CONFIG, else /etc/epfiot/host.yaml if present; none: one administrator)")
    group.add_argument("--state-dir", type=Path, default=default, help="registry, event log and locks (default: $EPFIOT_STATE_DIR, /var/lib/epfiot for root, else the XDG state dir)")
    group.add_argument("--secrets-dir", type=Path, default=default, help="where {file: PATH} secrets may also be, besides the manifest's directory (default: $EPFIOT_SECRETS_DIR)")
    group.add_argument("--policy", type=Path, default=default, help="host USB policy file (default: $EPFIOT_POLICY, else /etc/epfiot/policy.yaml if present)")
    group.add_argument("--image-pool", default=own(image_pool), help=f"storage pool of base images and VM disks (default: {image_pool})")
    group.add_argument("--image-dir", default=own(image_dir), help=f"directory of the image pool when apply creates it (default: {image_dir})")
    group.add_argument("--virt-type", choices=("kvm", "qemu"), default=default, help="domain type for new VMs (default: $EPFIOT_VIRT_TYPE, else kvm when the host offers it, else qemu)")
    group.add_argument("-v", "--verbose", action="store_true", default=own(False), help="list unchanged resources too")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="epfiot",
        description="Declarative manager for an edge host: libvirt VMs, USB devices and LwM2M things.",
    )
    parser.add_argument("--version", action="version", version=f"epfiot {__version__}")
    add_global_options(parser)
    # kubectl takes its global options anywhere on the line: each subcommand has them too, with no default
    # of its own, so that one given before the command is not overwritten by the subcommand's default.
    everywhere = argparse.ArgumentParser(add_help=False)
    add_global_options(everywhere, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[everywhere], **kwargs)

    def manifests(p: argparse.ArgumentParser, *, required: bool = True) -> None:
        p.add_argument("-f", "--filename", dest="files", action="append", required=required, metavar="PATH", help="manifest file, directory, or - for stdin (repeatable)")

    def targets(p: argparse.ArgumentParser) -> None:
        p.add_argument("--target", dest="targets", action="append", type=target, metavar="KIND/OWNER/NAME", help="plan only this resource and what it needs; KIND: vm, network or thing (repeatable)")

    def changes(p: argparse.ArgumentParser) -> None:
        p.add_argument("--force", action="store_true", help="power VMs off at once instead of a graceful shutdown")
        p.add_argument("--keep-disks", action="store_true", help="keep the disks of destroyed VMs")
        p.add_argument("--parallel", type=int, default=8, metavar="N", help="independent actions run at once (default: %(default)s)")
        p.add_argument("-y", "--auto-approve", action="store_true", help="apply a plan that destroys anything without asking (needed without a terminal)")

    p = add_command("plan", aliases=["diff"], help="show what apply would do")
    manifests(p)
    p.add_argument("--detailed-exitcode", action="store_true", help="exit 0: no changes, 2: changes, 3: only waits (nothing to apply), 1: errors")
    p.add_argument("--no-prune", dest="prune", action="store_false", help="do not destroy what the manifests no longer declare")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--keep-disks", action="store_true", help="plan pruning that keeps disks")
    targets(p)
    p.add_argument("-out", "--out", dest="out", metavar="FILE", type=Path, help="save the plan to FILE, for epfiot apply FILE")

    p = add_command("apply", help="make the host match the manifests, or apply a saved plan")
    p.add_argument("plan_file", nargs="?", type=Path, metavar="FILE", help="a plan saved by epfiot plan -out FILE: applied exactly, if the host has not changed since")
    manifests(p, required=False)
    changes(p)
    targets(p)
    p.add_argument("--dry-run", action="store_true", help="plan only")
    p.add_argument("--no-prune", dest="prune", action="store_false", help="do not destroy what the manifests no longer declare")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")

    p = add_command("delete", help="destroy what manifests declare, or one VM")
    p.add_argument("-f", "--filename", dest="files", action="append", metavar="PATH")
    p.add_argument("what", nargs="*", metavar="vm OWNER/NAME", help="e.g.: vm charlie/example1")
    changes(p)
    p.add_argument("--dry-run", action="store_true", help="plan only")

    p = add_command("adopt", help="take an unmanaged libvirt domain under management, and print its manifest entry")
    p.add_argument("kind", choices=("vm",), help="what to adopt")
    p.add_argument("name", metavar="NAME", help="the domain: OWNER.NAME (its libvirt name), or NAME")
    p.add_argument("--owner", required=True, help="the tenant it will belong to")
    p.add_argument("--stack", required=True, help="the stack it will belong to")
    p.add_argument("-y", "--auto-approve", action="store_true", help="adopt without asking (needed without a terminal)")

    p = add_command("get", help="list VMs, USB devices, images, networks, things")
    p.add_argument("resource", choices=("vms", "vm", "usb", "images", "networks", "things"))
    p.add_argument("name", nargs="?", help="only this one (NAME or OWNER/NAME)")
    p.add_argument("-o", "--output", choices=("table", "wide", "json", "yaml"), default="table")
    p.add_argument("--fields", help="comma-separated fields to show, e.g. name,state,memory_mib,vcpu")
    p.add_argument("--owner", help="only this tenant's resources")

    p = add_command("watch", help="reconcile on every manifest change, libvirt event and resync tick")
    manifests(p, required=False)  # with a host configuration, the tenants' manifest directories
    p.add_argument("--resync", type=float, default=60.0, metavar="SECONDS", help="periodic full reconcile (default: %(default)s)")
    p.add_argument("--debounce", type=float, default=0.2, metavar="SECONDS", help="act once the files have been quiet this long (default: %(default)s)")
    p.add_argument("--prune-after", type=float, default=5.0, metavar="SECONDS", help="prune only removals that have lasted this long (default: %(default)s; see docs/watch.md)")
    p.add_argument("--parallel", type=int, default=8, metavar="N", help="independent actions run at once (default: %(default)s)")
    p.add_argument("--no-serve", dest="serve", action="store_false", help="do not run the LwM2M bootstrap server")
    p.add_argument("--bind", default="::", help="bootstrap server address (default: %(default)s)")
    p.add_argument("--port", type=int, default=5683, help="bootstrap server UDP port (default: %(default)s)")
    dtls_options(p)
    p.add_argument("--api-socket", metavar="PATH", help="serve the API on this Unix socket (default: /run/epfiot/api.sock with the host's state directory, else none)")
    p.add_argument("--no-api-socket", dest="api", action="store_false", help="do not serve the API on a Unix socket")
    p.add_argument("--http", metavar="ADDRESS:PORT", help="also serve the API over HTTP, with bearer tokens (default: off; e.g. 127.0.0.1:8080; port 0: any free port, logged)")
    p.add_argument("--http-rate", type=float, default=20.0, metavar="N", help="HTTP requests a second per client address, on average (bursts of 2N; more: 429); 0: no limit (default: %(default)s)")
    p.add_argument("--http-allow-remote", dest="http_remote", action="store_true", help="allow --http on an address other machines reach (put TLS in front of it)")
    event_log_options(p)
    p.add_argument("--log-format", choices=("human", "json"), default="human", help="one line per event: human or JSON lines (default: %(default)s)")

    from epfiot.lwm2m.rebootstrap import DEFAULT_COUNT, DEFAULT_WINDOW

    p = add_command("serve", help="run the LwM2M bootstrap server")
    p.add_argument("--bind", default="::", help="address (default: %(default)s: IPv6 and IPv4)")
    p.add_argument("--port", type=int, default=5683, help="UDP port (default: %(default)s)")
    dtls_options(p)
    event_log_options(p)
    p.add_argument("--rebootstrap-count", type=int, default=DEFAULT_COUNT, metavar="N", help="bootstraps of one thing within the window that make a loop, marked failed (default: %(default)s; see docs/things.md)")
    p.add_argument("--rebootstrap-window", type=float, default=DEFAULT_WINDOW, metavar="SECONDS", help="the window of --rebootstrap-count; 0 turns loop detection off (default: %(default)s)")

    p = add_command("events", help="what epfiot did, and what it saw")
    p.add_argument("--since", help="e.g. 10m, 2h, 1d (default: everything)")
    p.add_argument("--owner", help="only events about this tenant's resources and things")
    p.add_argument("--kind", action="append", metavar="KIND", help="only events of this kind, as the log records it: action.failed, bootstrap.refused ... (repeatable, or comma-separated)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")

    add_command("schema", help="print the manifest JSON Schema")

    p = add_command("explain", help="describe a manifest field, from the schema (e.g. vms.memory)")
    p.add_argument("path", nargs="?", default="", help="field path: vms, vms.memory, things.server.uri ... (default: the document)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")

    p = add_command("token", help="API tokens: epfiot token create TENANT (or --admin)")
    tokens = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    t = tokens.add_parser("create", help="print a new token once, and the hash to put into the host configuration")
    t.add_argument("tenant", nargs="?", help="the tenant the token acts as")
    t.add_argument("--admin", action="store_true", help="a token of the administrator")
    t.add_argument("-o", "--output", choices=("text", "json"), default="text")

    p = add_command("completion", help="print a shell completion script: eval \"$(epfiot completion bash)\"")
    p.add_argument("shell", choices=("bash", "zsh"))

    p = add_command("version", help="print the version of epfiot and of what it runs on")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    return parser


def target(text: str) -> str:
    from epfiot.plan.targets import parse_target

    try:
        return parse_target(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def dtls_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-coap", dest="coap", action="store_false", help="do not listen on plain CoAP: only CoAP over DTLS (needs --dtls-bind)")
    p.add_argument("--dtls-port", type=int, help="CoAP over DTLS (coaps) port, for things with keys (default: 5684; any free port when --port is 0)")
    p.add_argument("--dtls-bind", metavar="ADDRESS", help="the one address of this host the DTLS listener binds (default: --bind, unless that is :: or 0.0.0.0: then DTLS stays off)")
    p.add_argument("--no-dtls", dest="dtls", action="store_false", help="do not listen on CoAP over DTLS")


def event_log_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--event-log-max-bytes", metavar="SIZE", help="the event log's bound: the oldest events go first beyond it (default: 64MiB, or the bound last given)")
    p.add_argument("--event-log-max-age", metavar="DURATION", help="events older than this are dropped (default: 90d, or the bound last given)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in REMOTE_COMMANDS and os.geteuid() != 0:
            from epfiot.api import client

            if client.should_use(args):  # no libvirt of one's own: the service acts for this user
                try:
                    return client.run(args)
                except client.Refused:
                    if "-" in (getattr(args, "files", None) or []):
                        raise  # standard input is read: the command cannot start over

        command = importlib.import_module(f"epfiot.cli.{COMMANDS[args.command]}")
        return int(command.run(args))
    except EpfiotError as error:
        if getattr(args, "output", None) == "json":
            from epfiot import render

            print(render.to_json(render.error_as_dict(error)))
        print(f"error: {error}", file=sys.stderr)
        # plan --detailed-exitcode keeps 2 for "changes": any error is 1 there, as in terraform plan
        return 1 if getattr(args, "detailed_exitcode", False) else error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception:  # an unexpected error is a bug: keep its traceback
        import traceback

        traceback.print_exc()
        print("error: unexpected failure (a bug in epfiot); the traceback above says where", file=sys.stderr)
        return 1
