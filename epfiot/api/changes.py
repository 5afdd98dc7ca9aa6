"""POST /api/v1/plan, /apply, /delete and DELETE /api/v1/vms/{owner}/{name}: epfiot.api.commands over HTTP.

The body is a manifest (YAML or JSON; Content-Type anything but the next one), or, with Content-Type
application/vnd.epfiot.sources+json, {"files": [{name, text, root, manifest}], "env": {...}}: several files
with the names the CLI gives them (what `epfiot` sends through the socket). Options are query parameters:
prune, dry_run, force, keep_disks, auto_approve, parallel, detailed_exitcode, and approved=ADDRESS,... (a plan
that destroys only those is applied without auto_approve: what the CLI asked about on its terminal).

The answer is what `-o json` prints, with the CLI's exit code in the Epfiot-Exit-Code header: 200 when it is
0 (or 2/3 of plan's detailed exit codes), 422 for manifest problems ({"problems": [...]}), 409 for any other
failure (a plan with problems, a destroy not approved, a failed action). With Accept:
application/vnd.epfiot.cli+json the answer is {"exit_code", "stdout", "stderr"} of the text output instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from epfiot.api.auth import CALLER, PEER_UID, error
from epfiot.api.client import CLI_TYPE, SOURCES_TYPE
from epfiot.api.commands import Manifests, Options, Ran, run, sources_from
from epfiot.desired.sources import SourceText
from epfiot.errors import ManifestError

EXIT_HEADER = "Epfiot-Exit-Code"
BOOLEANS = ("prune", "dry_run", "force", "keep_disks", "auto_approve", "detailed_exitcode", "verbose")


class BadRequest(Exception):
    pass


def options_of(request: web.Request, output: str) -> Options:
    values: dict[str, Any] = {"output": output}
    for name in BOOLEANS:
        if name in request.query:
            text = request.query[name].lower()
            if text not in ("true", "false", "1", "0", "yes", "no", ""):
                raise BadRequest(f"{name}={request.query[name]!r}: use true or false")
            values[name] = text in ("true", "1", "yes", "")
    if "approved" in request.query:
        values["approved"] = frozenset(a for a in request.query["approved"].split(",") if a)
    if "parallel" in request.query:
        try:
            values["parallel"] = int(request.query["parallel"])
        except ValueError:
            raise BadRequest("parallel must be a whole number") from None
    if given := [t for text in request.query.getall("target", []) for t in text.split(",") if t]:
        values["targets"] = tuple(targets_of(given))
    return Options(**values)


def targets_of(given: list[str]) -> list[str]:
    """plan --target KIND/OWNER/NAME, as the CLI checks it; a bad one is a 400."""
    from epfiot.plan.targets import parse_target

    try:
        return [parse_target(text) for text in given]
    except ValueError as e:
        raise BadRequest(f"target: {e}") from None


def output_of(request: web.Request) -> str:
    """JSON, unless the CLI asks for what it prints (then its -o: text or json)."""
    if request.headers.get("Accept") != CLI_TYPE:
        return "json"
    output = request.query.get("output", "text")
    if output not in ("text", "json"):
        raise BadRequest(f"output={output!r}: use text or json")
    return output


async def manifests_of(request: web.Request) -> Manifests:
    from epfiot.desired.sources import decode
    from epfiot.errors import ManifestProblem

    problems: list[ManifestProblem] = []
    text = decode(await request.read(), "<request>", problems)
    if text is None:
        raise ManifestError(problems)  # not UTF-8: a 422 at the line of the first bad byte
    if request.content_type == SOURCES_TYPE:
        try:
            data = json.loads(text)
            files = data["files"]
            env = {str(k): str(v) for k, v in (data.get("env") or {}).items()}
            return Manifests(sources_from(files), env, request.get(PEER_UID))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadRequest(f"not a sources document ({SOURCES_TYPE}): {e}") from None
    from pathlib import Path

    return Manifests((SourceText("<request>", text, Path("/nonexistent")),), {}, request.get(PEER_UID))


def answer(request: web.Request, ran: Ran) -> web.Response:
    headers = {EXIT_HEADER: str(ran.exit_code)}
    if request.headers.get("Accept") == CLI_TYPE:
        body = {"exit_code": ran.exit_code, "stdout": ran.stdout, "stderr": ran.stderr}
        return web.json_response(body, headers=headers, content_type=CLI_TYPE)
    if ran.manifest_error:
        status = 422
    elif ran.not_found:
        status = 404
    elif ran.exit_code == 0 or (request.query.get("detailed_exitcode") is not None and ran.exit_code in (2, 3)):
        status = 200
    else:
        status = 409
    text = ran.stdout.strip() or json.dumps({"problems": [{"file": None, "line": None, "path": None, "message": ran.stderr.strip()}]})
    return web.Response(text=text, status=status, headers=headers, content_type="application/json")


def changing(command: str) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        from epfiot.api.app import BACKEND, HOSTS

        try:
            output = output_of(request)
            options = options_of(request, output)
            manifests = await manifests_of(request)
        except BadRequest as e:
            return error(400, str(e))
        except ManifestError as e:
            from epfiot import render

            shown = render.to_json(render.error_as_dict(e)) + "\n" if output == "json" else ""
            return answer(request, Ran(e.exit_code, shown, f"error: {e}\n", manifest_error=True))
        caller, config = request[CALLER], request.app[HOSTS].get()
        ran = await request.app[BACKEND].call(lambda live: run(live, config, caller, command, manifests, options))
        return answer(request, ran)

    handler.__name__ = f"post_{command}"
    return handler


async def delete_vm(request: web.Request) -> web.Response:
    from epfiot.api.app import BACKEND, HOSTS

    try:
        output = output_of(request)
        options = options_of(request, output)
    except BadRequest as e:
        return error(400, str(e))
    caller, config = request[CALLER], request.app[HOSTS].get()
    vm = (request.match_info["owner"], request.match_info["name"])
    ran = await request.app[BACKEND].call(lambda live: run(live, config, caller, "delete", None, options, vm))
    return answer(request, ran)


def setup(app: web.Application) -> None:
    from epfiot.api.routes import PREFIX

    for command in ("plan", "apply", "delete"):
        app.router.add_post(f"{PREFIX}/{command}", changing(command))
    app.router.add_delete(PREFIX + "/vms/{owner}/{name}", delete_vm)
