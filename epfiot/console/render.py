"""The console's Jinja2 environment, its responses (with the headers every page carries) and its files."""

from __future__ import annotations

import time
from functools import cache
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

# Only this origin's own script and stylesheet run: no inline script, no framing, forms post here only.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # (no-referrer would make a form post say Origin: null)
    "Cache-Control": "no-store",  # a page shows one caller's resources: no cache keeps it
}
STATIC = {"console.css": "text/css", "console.js": "text/javascript"}


def when(value: object) -> str:
    """An epoch time as the host's local date and time; text (already a date) as it is."""
    if isinstance(value, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    return "" if value is None else str(value)


def state_class(value: object) -> str:
    """The CSS class of a state or status: its first word ("paused (crashed)" -> "paused")."""
    word = str(value or "unknown").split(" ", 1)[0].split("(", 1)[0]
    return "st-" + "".join(c for c in word.lower() if c.isalnum() or c == "-")


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("epfiot.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["state_class"] = state_class
    return env


def html(template: str, context: dict[str, Any], *, status: int = 200) -> web.Response:
    text = environment().get_template(template).render(**context)
    return web.Response(text=text, status=status, content_type="text/html", headers=HEADERS)


@cache
def static_file(name: str) -> bytes:
    return resources.files("epfiot.console").joinpath("static", name).read_bytes()


async def serve_static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    headers = {**HEADERS, "Cache-Control": "no-cache"}  # the same for everyone; revalidated on each load
    return web.Response(body=static_file(name), content_type=STATIC[name], headers=headers)
