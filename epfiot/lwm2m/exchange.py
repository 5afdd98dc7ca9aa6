"""One client-initiated bootstrap exchange, after its POST /bs was answered: the requests of its write
plan, sent one at a time from the server's socket to the client, each waiting for a success response."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code

from epfiot.lwm2m.codec import CF_SENML_JSON
from epfiot.lwm2m.protocol import Operation

Send = Callable[[aiocoap.Message, bool], "asyncio.Future[aiocoap.Message]"]
"""Sends a request (blockwise or not) from the server's socket; the future gets the response."""

_METHODS = {"DELETE": Code.DELETE, "PUT": Code.PUT, "POST": Code.POST}
_FORMAT_NAMES = {CF_SENML_JSON: "senml-json"}
BLOCKWISE_ABOVE = 512  # payload bytes; larger writes go blockwise


class ClientRejected(Exception):
    """The client answered one of the bootstrap requests with an error code."""


@dataclass(eq=False)
class Exchange:
    endpoint: str
    owner: str
    revision: int
    remote: Any  # where to send: the client, from the socket that received its POST /bs
    client: str
    server_uri: str
    content_format: int
    plan: list[Operation]
    loop_error: str | None  # set when this bootstrap makes a re-bootstrap loop
    started: float = field(default_factory=time.monotonic)
    current: Operation | None = None
    superseded: bool = False
    task: asyncio.Task[None] | None = None

    @property
    def format_name(self) -> str:
        return _FORMAT_NAMES.get(self.content_format, "tlv")

    def doing(self) -> str:
        return self.current.describe() if self.current else "the exchange"


async def send_plan(ex: Exchange, send: Send) -> None:
    """Send every operation of the plan in order; raises ClientRejected on an error response."""
    for op in ex.plan:
        ex.current = op
        message = aiocoap.Message(code=_METHODS[op.method], uri_path=op.uri_path, payload=op.payload)
        if op.content_format is not None:
            message.opt.content_format = op.content_format
        # Set after construction: extra keyword arguments of Message() become CoAP options.
        message.remote = ex.remote
        response = await send(message, len(op.payload) > BLOCKWISE_ABOVE)
        if not response.code.is_successful():
            detail = _diagnostic(response.payload)
            raise ClientRejected(
                f"{op.describe()} answered {_code_text(response.code)}" + (f": {detail}" if detail else "")
            )


def _code_text(code: Any) -> str:
    try:
        return f"{code.class_}.{code.detail:02d} {code.name_printable}"
    except AttributeError:
        return str(code)


def _diagnostic(payload: bytes) -> str:
    text = payload[:80].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)
