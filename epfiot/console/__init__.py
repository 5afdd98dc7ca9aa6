"""The web console: pages of the service's API (epfiot.api), served by the same aiohttp application under
/console/, as plain HTML from Jinja2 templates, one stylesheet and one small script (no build step).

    pages     the routes: login and logout, one page per list (VMs, USB, things, events, the last plan)
    data      what each page shows, read through the API's own operations (one authorization layer)
    render    the Jinja2 environment, the pages' security headers, the static files

A browser logs in with an API token, which the login form checks and keeps in an HttpOnly, SameSite=Strict
cookie (never readable by the page's script); every page then reads as that token's caller, and its script
fetches the page's content again every 2 s, so a VM that changes state or a thing that bootstraps shows
without a reload.
"""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Adds the console's routes to the API's application (build_app's extra_routes)."""
    from epfiot.console import pages

    pages.setup(app)
