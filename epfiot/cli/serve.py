"""epfiot serve: the LwM2M bootstrap server alone, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse

from epfiot.cli.common import open_registry, state_dir
from epfiot.errors import EpfiotError, UsageError


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from epfiot.eventlog import EventLog, describe_bootstrap, retention_from_options
    from epfiot.lwm2m.rebootstrap import RebootstrapRule
    from epfiot.lwm2m.server import BootstrapServer, run_bootstrap_server
    from epfiot.psk import coap_listener, dtls_listener
    from epfiot.state import ensure_state_dir

    try:
        rule = RebootstrapRule(args.rebootstrap_count, args.rebootstrap_window)
    except ValueError as error:
        raise UsageError(f"serve: {error}") from None
    retention = retention_from_options(args.event_log_max_bytes, args.event_log_max_age)
    dtls_port, dtls_bind, dtls_note = dtls_listener(args.bind, args.dtls_bind, args.dtls_port, args.dtls, args.port)
    coap_port = coap_listener(args.coap, args.port, dtls_port)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    directory = ensure_state_dir(state_dir(args))
    open_registry(directory, create=True).close()  # type: ignore[union-attr]
    events = EventLog.in_state_dir(directory, retention)

    def on_event(kind: str, fields: dict[str, object]) -> None:
        subject, message = describe_bootstrap(kind, fields)
        print(f"{kind} {subject}: {message}", flush=True)
        events.record(kind, subject, message, **fields)

    listening = False

    def ready(server: BootstrapServer) -> None:
        nonlocal listening
        listening = True
        coap = f"on [{args.bind}]:{server.port}" if coap_port is not None else "with plain CoAP off (--no-coap)"
        print(f"LwM2M bootstrap server {coap} (registry {directory / 'registry.db'})", flush=True)
        print(dtls_note if dtls_port is None else f"CoAP over DTLS on [{dtls_bind}]:{server.dtls_port}", flush=True)

    async def serve() -> None:
        # SIGTERM and SIGINT cancel the server, which lets the exchanges in progress finish (a second signal
        # cuts that short), flushes its status updates and closes its socket.
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await run_bootstrap_server(directory / "registry.db", bind=args.bind, port=coap_port, on_event=on_event, ready=ready, rebootstrap_count=rule.count, rebootstrap_window=rule.window, dtls_port=dtls_port, dtls_bind=dtls_bind)
        except asyncio.CancelledError:
            print("stopped", flush=True)
        except OSError as error:
            if listening:
                raise
            # a port in use, an address not on this host: said in one line, as watch says it
            raise EpfiotError(f"cannot serve LwM2M bootstrap: {error.strerror or error}") from None

    try:
        asyncio.run(serve())
    finally:
        events.close()
    return 0
