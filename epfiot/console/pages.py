"""The console's routes under /console/: the login form, one page per list, logout, the static files.

Who a request comes from is decided by the API's authentication (epfiot.api.auth), from the session cookie
the login form sets; these handlers are marked `answers_without_caller` only so that a browser without a
valid session is sent to the login form instead of getting the API's JSON 401.

The login form checks the token against the host configuration, then keeps it in a cookie the page's
script cannot read (HttpOnly), that the browser sends only to /console/ and only with requests from this
site (SameSite=Strict); the API accepts that cookie for reads only, and the two forms that post (login,
logout) refuse a request whose Origin is another site's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from epfiot.api.auth import CALLER, SESSION_COOKIE, answers_without_caller
from epfiot.console import data
from epfiot.console.render import html, serve_static
from epfiot.hostconfig import Caller

BASE = "/console"
HOME = f"{BASE}/vms"
LOGIN = f"{BASE}/login"
LIVE_SECONDS = 2  # how often a page's script fetches its content again

PAGES = {  # path: (title, template)
    "vms": ("VMs", "vms.html.j2"),
    "usb": ("USB devices", "usb.html.j2"),
    "things": ("Things", "things.html.j2"),
    "events": ("Events", "events.html.j2"),
    "plan": ("Last plan", "plan.html.j2"),
}
Reader = Callable[[web.Request, Caller], Awaitable[dict[str, Any]]]


def who_is(caller: Caller) -> str:
    return "administrator" if caller.is_admin else f"tenant {caller.tenant}"


def same_site(request: web.Request) -> bool:
    """A form post from this site: a browser names the page's origin, and fetch metadata says same-origin."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return False
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def login_page(error: str | None = None, *, status: int = 200) -> web.Response:
    return html("login.html.j2", {"title": "Log in", "error": error, "page": "login", "nav": PAGES, "caller": None}, status=status)


@answers_without_caller
async def show_login(request: web.Request) -> web.StreamResponse:
    if request.get(CALLER) is not None:
        raise web.HTTPSeeOther(HOME)
    return login_page()


@answers_without_caller
async def log_in(request: web.Request) -> web.StreamResponse:
    from epfiot.api.app import HOSTS

    if not same_site(request):
        return login_page("This form must be sent from the console's own page.", status=403)
    form = await request.post()
    token = str(form.get("token", "")).strip()
    caller = request.app[HOSTS].get().caller_for_token(token) if token else None
    if caller is None:  # the same words for a wrong, unknown or revoked token
        return login_page("That token is not valid.", status=401)
    response = see_other(HOME)
    response.set_cookie(SESSION_COOKIE, token, path=BASE, httponly=True, samesite="Strict", secure=request.secure)
    return response


@answers_without_caller
async def log_out(request: web.Request) -> web.StreamResponse:
    if not same_site(request):
        raise web.HTTPForbidden()
    response = see_other(LOGIN)
    response.del_cookie(SESSION_COOKIE, path=BASE)
    return response


@answers_without_caller
async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(HOME)


def page(name: str, reader: Reader) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """GET /console/NAME: the whole page; with ?fragment=1 only its content, which the page's script fetches
    every LIVE_SECONDS and puts in place of the old one."""
    title, template = PAGES[name]

    async def handler(request: web.Request) -> web.StreamResponse:
        caller = request.get(CALLER)
        fragment = request.query.get("fragment") == "1"
        if caller is None:
            if fragment:  # the script goes to the login form itself
                raise web.HTTPUnauthorized()
            raise web.HTTPSeeOther(LOGIN)
        context = await reader(request, caller)
        layout = "fragment.html.j2" if fragment else "base.html.j2"
        context.update(title=title, page=name, nav=PAGES, layout=layout, caller=who_is(caller), admin=caller.is_admin, live=LIVE_SECONDS)
        return html(template, context)

    handler.__name__ = f"console_{name}"
    return answers_without_caller(handler)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get(BASE, home)
    r.add_get(f"{BASE}/", home)
    r.add_get(LOGIN, show_login)
    r.add_post(LOGIN, log_in)
    r.add_post(f"{BASE}/logout", log_out)
    r.add_get(BASE + "/static/{name}", answers_without_caller(serve_static))
    for name, reader in data.READERS.items():
        r.add_get(f"{BASE}/{name}", page(name, reader))
