"""The command line: epfiot plan | apply | delete | get | watch | serve | events | schema.

Exit codes: 0 success; 1 failure (or errors, for plan --detailed-exitcode); 2 usage or manifest errors, and
changes present for plan --detailed-exitcode (as terraform plan does).
Modules are imported when a command needs them: start-up time is part of every apply.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from epfiot import __version__
from epfiot.errors import EpfiotError, UsageError

if TYPE_CHECKING:
    from epfiot.apply import Outcome
    from epfiot.eventlog import EventLog
    from epfiot.host import Host
    from epfiot.model import Desired
    from epfiot.plan import Action, Options
    from epfiot.policy import UsbPolicy
    from epfiot.registry import Registry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="epfiot",
        description="Declarative manager for an edge host: libvirt VMs, USB devices and LwM2M things.",
    )
    parser.add_argument("--version", action="version", version=f"epfiot {__version__}")
    parser.add_argument("-c", "--connect", metavar="URI", help="libvirt URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system)")
    parser.add_argument("--state-dir", type=Path, help="registry, event log and locks (default: $EPFIOT_STATE_DIR, /var/lib/epfiot for root, else the XDG state dir)")
    parser.add_argument("--policy", type=Path, help="host USB policy file (default: $EPFIOT_POLICY, else /etc/epfiot/policy.yaml if present)")
    parser.add_argument("--image-pool", default=os.environ.get("EPFIOT_IMAGE_POOL", "epfiot-images"), help="storage pool of base images and VM disks (default: %(default)s)")
    parser.add_argument("--image-dir", default=os.environ.get("EPFIOT_IMAGE_DIR", "/var/lib/epfiot/images"), help="directory of the image pool when apply creates it (default: %(default)s)")
    parser.add_argument("--virt-type", choices=("kvm", "qemu"), default=None, help="domain type for new VMs (default: $EPFIOT_VIRT_TYPE, else kvm when the host offers it, else qemu)")
    parser.add_argument("-v", "--verbose", action="store_true", help="list unchanged resources too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def manifests(p: argparse.ArgumentParser) -> None:
        p.add_argument("-f", "--filename", dest="files", action="append", required=True, metavar="PATH", help="manifest file, directory, or - for stdin (repeatable)")

    def changes(p: argparse.ArgumentParser) -> None:
        p.add_argument("--force", action="store_true", help="power VMs off at once instead of a graceful shutdown")
        p.add_argument("--keep-disks", action="store_true", help="keep the disks of destroyed VMs")
        p.add_argument("--parallel", type=int, default=8, metavar="N", help="independent actions run at once (default: %(default)s)")

    p = sub.add_parser("plan", aliases=["diff"], help="show what apply would do")
    manifests(p)
    p.add_argument("--detailed-exitcode", action="store_true", help="exit 0: no changes, 2: changes, 1: errors")
    p.add_argument("--no-prune", dest="prune", action="store_false", help="do not destroy what the manifests no longer declare")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--keep-disks", action="store_true", help="plan pruning that keeps disks")

    p = sub.add_parser("apply", help="make the host match the manifests")
    manifests(p)
    changes(p)
    p.add_argument("--dry-run", action="store_true", help="plan only")
    p.add_argument("--no-prune", dest="prune", action="store_false", help="do not destroy what the manifests no longer declare")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")

    p = sub.add_parser("delete", help="destroy what manifests declare, or one VM")
    p.add_argument("-f", "--filename", dest="files", action="append", metavar="PATH")
    p.add_argument("what", nargs="*", metavar="vm OWNER/NAME", help="e.g.: vm charlie/example1")
    changes(p)
    p.add_argument("--dry-run", action="store_true", help="plan only")

    p = sub.add_parser("get", help="list VMs, USB devices, images, networks, things")
    p.add_argument("resource", choices=("vms", "vm", "usb", "images", "networks", "things"))
    p.add_argument("name", nargs="?", help="only this one (NAME or OWNER/NAME)")
    p.add_argument("-o", "--output", choices=("table", "wide", "json", "yaml"), default="table")
    p.add_argument("--fields", help="comma-separated fields to show, e.g. name,state,memory_mib,vcpu")
    p.add_argument("--owner", help="only this tenant's resources")

    p = sub.add_parser("watch", help="reconcile on every manifest change, libvirt event and resync tick")
    manifests(p)
    p.add_argument("--resync", type=float, default=60.0, metavar="SECONDS", help="periodic full reconcile (default: %(default)s)")
    p.add_argument("--debounce", type=float, default=0.2, metavar="SECONDS", help="act once the files have been quiet this long (default: %(default)s)")
    p.add_argument("--prune-after", type=float, default=5.0, metavar="SECONDS", help="prune only removals that have lasted this long (default: %(default)s; see docs/watch.md)")
    p.add_argument("--parallel", type=int, default=8, metavar="N", help="independent actions run at once (default: %(default)s)")
    p.add_argument("--no-serve", dest="serve", action="store_false", help="do not run the LwM2M bootstrap server")
    p.add_argument("--bind", default="::", help="bootstrap server address (default: %(default)s)")
    p.add_argument("--port", type=int, default=5683, help="bootstrap server UDP port (default: %(default)s)")
    p.add_argument("--log-format", choices=("human", "json"), default="human", help="one line per event: human or JSON lines (default: %(default)s)")

    from epfiot.lwm2m.rebootstrap import DEFAULT_COUNT, DEFAULT_WINDOW

    p = sub.add_parser("serve", help="run the LwM2M bootstrap server")
    p.add_argument("--bind", default="::", help="address (default: %(default)s: IPv6 and IPv4)")
    p.add_argument("--port", type=int, default=5683, help="UDP port (default: %(default)s)")
    p.add_argument("--rebootstrap-count", type=int, default=DEFAULT_COUNT, metavar="N", help="bootstraps of one thing within the window that make a loop, marked failed (default: %(default)s; see docs/things.md)")
    p.add_argument("--rebootstrap-window", type=float, default=DEFAULT_WINDOW, metavar="SECONDS", help="the window of --rebootstrap-count; 0 turns loop detection off (default: %(default)s)")

    p = sub.add_parser("events", help="what epfiot did, and what it saw")
    p.add_argument("--since", help="e.g. 10m, 2h, 1d (default: everything)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")

    sub.add_parser("schema", help="print the manifest JSON Schema")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command](args))
    except EpfiotError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception:  # an unexpected error is a bug: keep its traceback
        traceback.print_exc()
        print("error: unexpected failure (a bug in epfiot); the traceback above says where", file=sys.stderr)
        return 1


# --- shared plumbing ---------------------------------------------------------------------------------------


@dataclass
class Session:
    host: Host
    registry: Registry | None
    policy: UsbPolicy | None
    state_dir: Path


def _state_dir(args: argparse.Namespace) -> Path:
    from epfiot.state import default_state_dir

    return Path(args.state_dir) if args.state_dir else default_state_dir()


def _uri(args: argparse.Namespace) -> str:
    return str(args.connect or os.environ.get("LIBVIRT_DEFAULT_URI") or "qemu:///system")


@contextlib.contextmanager
def session(args: argparse.Namespace, desired: Desired) -> Iterator[Session]:
    """The host, and the registry and USB policy when the manifests need them (start-up time counts)."""
    from epfiot.libvirt.host import LibvirtHost
    from epfiot.state import ensure_state_dir

    state_dir = ensure_state_dir(_state_dir(args))
    policy = None
    if any(vm.devices for vm in desired.vms):
        from epfiot.policy import load_policy

        policy = load_policy(args.policy)
    registry = open_registry(state_dir, create=bool(desired.things))
    host = LibvirtHost.open(_uri(args), image_pool=args.image_pool, virt_type=args.virt_type)
    try:
        yield Session(host, registry, policy, state_dir)
    finally:
        host.close()
        if registry is not None:
            registry.close()


def open_registry(state_dir: Path, *, create: bool) -> Registry | None:
    path = state_dir / "registry.db"
    if not create and not path.exists():
        return None
    from epfiot.registry import Registry

    return Registry(path)


def load(args: argparse.Namespace) -> Desired:
    from epfiot.desired import load_manifests

    return load_manifests(args.files, stdin=sys.stdin)


def options_from(args: argparse.Namespace) -> Options:
    from epfiot.plan import Options

    return Options(
        force=getattr(args, "force", False),
        keep_disks=getattr(args, "keep_disks", False),
        prune=getattr(args, "prune", True),
    )


# --- plan / apply / delete ---------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    from epfiot import render
    from epfiot.reconcile import observe, plan_changes

    desired = load(args)
    with session(args, desired) as ses:
        plan = plan_changes(desired, observe(ses.host, ses.registry, desired), options_from(args), ses.policy)
    if args.output == "json":
        print(render.to_json(render.plan_as_dict(plan)))
    else:
        print(render.render_plan(plan, verbose=args.verbose))
    if plan.problems:
        return 1
    if args.detailed_exitcode:
        return 2 if plan.has_changes else 0
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    desired = load(args)
    return _apply(args, desired, deletion=False)


def cmd_delete(args: argparse.Namespace) -> int:
    from epfiot.model import Desired, StackSpec, VmSpec

    if args.files and args.what:
        raise UsageError("give either -f PATH or: vm OWNER/NAME, not both")
    if args.files:
        return _apply(args, load(args), deletion=True)
    if len(args.what) != 2 or args.what[0] != "vm" or "/" not in args.what[1]:
        raise UsageError("usage: epfiot delete -f PATH...  |  epfiot delete vm OWNER/NAME")
    owner, _, name = args.what[1].partition("/")
    with _host_only(args) as host:
        vm = next((v for v in host.observe().vms if v.libvirt_name == f"{owner}.{name}"), None)
    if vm is None or vm.ownership is None:
        state = "not managed by epfiot" if vm is not None else "not found"
        raise EpfiotError(f"vm {owner}/{name}: {state}; nothing to delete")
    stack = StackSpec(owner=owner, name=vm.ownership.stack)
    placeholder = VmSpec(owner=owner, stack=stack.name, name=name, memory_mib=1, vcpu=1, max_memory_mib=1, max_vcpu=1)
    return _apply(args, Desired(stacks=(stack,), vms=(placeholder,)), deletion=True)


@contextlib.contextmanager
def _host_only(args: argparse.Namespace) -> Iterator[Host]:
    from epfiot.libvirt.host import LibvirtHost

    host = LibvirtHost.open(_uri(args), image_pool=args.image_pool, virt_type=args.virt_type)
    try:
        yield host
    finally:
        host.close()


def _apply(args: argparse.Namespace, desired: Desired, *, deletion: bool) -> int:
    from epfiot import render
    from epfiot.plan import plan_deletion
    from epfiot.reconcile import apply_plan, check, observe, plan_changes
    from epfiot.state import host_lock

    json_output = getattr(args, "output", "text") == "json"
    out = sys.stderr if json_output else sys.stdout
    options = options_from(args)
    started = time.monotonic()
    with session(args, desired) as ses, host_lock(
        ses.state_dir, _uri(args), on_wait=lambda m: print(m, file=sys.stderr, flush=True)
    ):
        if not deletion and any(vm.image or vm.credentials for vm in desired.vms):
            ses.host.ensure_image_pool(args.image_dir)
        observed = observe(ses.host, ses.registry, desired)
        if deletion:
            plan = plan_deletion(desired, observed, options)
        else:
            plan = plan_changes(desired, observed, options, ses.policy)
        if not json_output:
            print(render.render_plan(plan, verbose=args.verbose), file=out, flush=True)
        check(plan)
        if args.dry_run or not plan.changes:
            if json_output:
                print(render.to_json({"plan": render.plan_as_dict(plan), "outcomes": []}))
            elif not plan.changes:
                why = "Nothing to delete: none of them exists." if deletion else "The host matches the manifests."
                print(f"No changes. {why}", file=out)
            return 0
        print(f"\nApplying {len(plan.changes)} actions to {_uri(args)} ...", file=out, flush=True)
        from epfiot.eventlog import EventLog

        events = EventLog.in_state_dir(ses.state_dir)
        try:
            progress = _Progress(out, len(plan.changes), events)
            result = apply_plan(
                plan, desired, ses.host, ses.registry, options, ses.policy, parallel=args.parallel, progress=progress
            )
        finally:
            events.close()
    elapsed = time.monotonic() - started
    failed = result.failed
    done = [o for o in result.outcomes if o.ok]
    if json_output:
        print(render.to_json({"plan": render.plan_as_dict(plan), "outcomes": [_outcome_dict(o) for o in result.outcomes]}))
    else:
        created = sum(1 for o in done if o.action.verb == "create")
        changed = sum(1 for o in done if o.action.verb == "update")
        destroyed = sum(1 for o in done if o.action.verb == "destroy")
        print(
            f"\nApply {'failed' if failed else 'complete'}: {created} created, {changed} changed, "
            f"{destroyed} destroyed, {len(failed)} failed ({elapsed:.1f}s).",
            file=out,
        )
        if failed:
            print("Run epfiot apply again to retry: it re-plans from the live state.", file=out)
    return 1 if failed else 0


def _outcome_dict(outcome: Outcome) -> dict[str, object]:
    a = outcome.action
    return {"kind": a.kind.value, "owner": a.owner, "name": a.name, "action": a.verb.value, "ok": outcome.ok, "seconds": round(outcome.seconds, 3), "error": outcome.error}


class _Progress:
    """One line per action as it finishes, numbered, and recorded in the event log. On a terminal, a status
    line below them shows what is running now (long plans: starting many VMs takes a while)."""

    def __init__(self, out: TextIO, total: int, events: EventLog) -> None:
        import threading

        self.out, self.total, self.events = out, total, events
        self.done = 0
        self.running: dict[str, float] = {}
        self.live = out.isatty() and total > 1
        self.lock = threading.Lock()

    def __call__(self, phase: str, action: Action, outcome: Outcome | None) -> None:
        from epfiot.render import action_title

        title = action_title(action)
        with self.lock:
            if phase == "start" or outcome is None:
                self.events.record("action.start", action.address, f"{action.verb}: {action.reason}")
                self.running[title] = time.monotonic()
                self._status()
                return
            self.running.pop(title, None)
            self.done += 1
            counter = f"[{self.done:>{len(str(self.total))}}/{self.total}]"
            if outcome.ok:
                line = f"{counter} {title}: {action.verb} done ({outcome.seconds:.1f}s)"
                steps = [step.describe() for step in action.steps]
                self.events.record("action.done", action.address, f"{action.verb}: {action.reason}", seconds=round(outcome.seconds, 3), steps=steps)
            else:
                line = f"{counter} {title}: {action.verb} FAILED: {outcome.error}"
                self.events.record("action.failed", action.address, f"{action.verb} failed: {outcome.error}", error=outcome.error)
            if self.live:
                self.out.write("\r\033[K")
            print(line, file=self.out, flush=True)
            self._status()

    def _status(self) -> None:
        if not self.live:
            return
        if not self.running or self.done == self.total:
            self.out.write("\r\033[K")
        else:
            oldest = sorted(self.running, key=self.running.__getitem__)
            names = ", ".join(oldest[:3]) + (f" and {len(oldest) - 3} more" if len(oldest) > 3 else "")
            elapsed = time.monotonic() - self.running[oldest[0]]
            self.out.write(f"\r\033[K  {self.done}/{self.total} done; running: {names} ({elapsed:.0f}s)")
        self.out.flush()


# --- get ---------------------------------------------------------------------------------------------------


def cmd_get(args: argparse.Namespace) -> int:
    from epfiot import render, views

    resource = "vms" if args.resource == "vm" else args.resource
    columns: Sequence[str]
    owner, name = args.owner, None
    if args.name:
        if "/" in args.name:
            owner, _, name = args.name.partition("/")
        else:
            name = args.name
    if resource == "things":
        registry = open_registry(_state_dir(args), create=False)
        rows = views.thing_rows(registry.things() if registry else [], owner=owner)
        if registry:
            registry.close()
        columns = views.THING_WIDE_COLUMNS if args.output == "wide" else views.THING_COLUMNS
    else:
        with _host_only(args) as host:
            if resource == "vms":
                observed = host.observe()
                running = [v.libvirt_name for v in observed.vms if v.managed and v.active]
                observed = host.observe(addresses_of=running) if running else observed
                rows = views.vm_rows(observed, owner=owner)
                columns = views.VM_WIDE_COLUMNS if args.output == "wide" else views.VM_COLUMNS
            elif resource == "usb":
                from epfiot.usb import held_by

                observed = host.observe()
                rows = views.usb_rows(observed.usb, held_by(observed.vms, observed.usb))
                columns = views.USB_COLUMNS
            elif resource == "networks":
                rows = views.network_rows(host.observe(), owner=owner)
                columns = views.NETWORK_COLUMNS
            else:
                from epfiot.model import is_epfiot_volume

                observed = host.observe()
                rows = [
                    {"name": v.name, "pool": v.pool, "capacity_mib": v.capacity_bytes // (1024 * 1024)}
                    for v in observed.volumes
                    if not is_epfiot_volume(v.name)
                ]
                columns = views.IMAGE_COLUMNS
    if name is not None:
        rows = [r for r in rows if r.get("name") == name]
        if not rows:
            raise EpfiotError(f"{resource[:-1] if resource != 'usb' else resource} {args.name!r} not found")
    if args.fields:
        columns = tuple(f.strip() for f in args.fields.split(",") if f.strip())
        known = set().union(*(r.keys() for r in rows)) if rows else set(columns)
        if unknown := [c for c in columns if c not in known]:
            raise UsageError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        rows = render.select_fields(rows, columns)
    if args.output == "json":
        print(render.to_json(rows))
    elif args.output == "yaml":
        print(render.to_yaml(rows), end="")
    else:
        print(render.table(rows, columns))
    return 0


# --- watch / serve / events / schema -----------------------------------------------------------------------


def cmd_watch(args: argparse.Namespace) -> int:
    from epfiot.watch import run_watch

    return run_watch(args)


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from epfiot.eventlog import EventLog, describe_bootstrap
    from epfiot.lwm2m.rebootstrap import RebootstrapRule
    from epfiot.lwm2m.server import BootstrapServer, run_bootstrap_server
    from epfiot.state import ensure_state_dir

    try:
        rule = RebootstrapRule(args.rebootstrap_count, args.rebootstrap_window)
    except ValueError as error:
        raise UsageError(f"serve: {error}") from None

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    state_dir = ensure_state_dir(_state_dir(args))
    open_registry(state_dir, create=True).close()  # type: ignore[union-attr]
    events = EventLog.in_state_dir(state_dir)

    def on_event(kind: str, fields: dict[str, object]) -> None:
        subject, message = describe_bootstrap(kind, fields)
        print(f"{kind} {subject}: {message}", flush=True)
        events.record(kind, subject, message, **fields)

    def ready(server: BootstrapServer) -> None:
        print(f"LwM2M bootstrap server on [{args.bind}]:{server.port} (registry {state_dir / 'registry.db'})", flush=True)

    async def serve() -> None:
        # SIGTERM and SIGINT cancel the server, which lets the exchanges in progress finish (a second signal
        # cuts that short), flushes its status updates and closes its socket.
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await run_bootstrap_server(state_dir / "registry.db", bind=args.bind, port=args.port, on_event=on_event, ready=ready, rebootstrap_count=rule.count, rebootstrap_window=rule.window)
        except asyncio.CancelledError:
            print("stopped", flush=True)

    try:
        asyncio.run(serve())
    finally:
        events.close()
    return 0


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise UsageError(f"bad duration {text!r}: use e.g. 30s, 10m, 2h, 1d") from None


def cmd_events(args: argparse.Namespace) -> int:
    from epfiot import render
    from epfiot.eventlog import EventLog

    since = parse_duration(args.since) if args.since else None
    path = _state_dir(args) / "events.db"
    if not path.exists():
        print("[]" if args.output == "json" else "No events yet.")
        return 0
    log = EventLog(path)
    try:
        events = log.since(since)
    finally:
        log.close()
    if args.output == "json":
        print(render.to_json([e.as_dict() for e in events]))
    else:
        for e in events:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at))
            print(f"{stamp}  {e.kind:<18} {e.subject}: {e.message}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from epfiot.desired.schema import SCHEMA_PATH

    sys.stdout.write(SCHEMA_PATH.read_text())
    return 0


COMMANDS = {
    "plan": cmd_plan,
    "diff": cmd_plan,
    "apply": cmd_apply,
    "delete": cmd_delete,
    "get": cmd_get,
    "watch": cmd_watch,
    "serve": cmd_serve,
    "events": cmd_events,
    "schema": cmd_schema,
}
