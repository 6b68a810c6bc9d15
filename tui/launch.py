"""Opening the monitor in this terminal, or serving it to a browser.

Textual (and textual-serve) is imported only here, when a monitor really opens, so
`autoresearch status` and the engine never load it. Starting engines is
engine/launcher.py's job.

Serving: textual-serve's page and WebSocket drive the monitor, keys and all, so they are
guarded the way Jupyter guards a notebook: a random token made at each launch is in the
printed URL, and every request must carry it (in the query, or in the cookie set by the
first good request, so reloads work); the WebSocket must also come from a page of the
same origin. Anything but loopback needs --allow-remote.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

from engine.errors import UsageError
from engine.lock import holder_pid
from engine.rundir import RunDir


def run_monitor(run: RunDir) -> int:
    from tui.app import MonitorApp

    result = MonitorApp(run).run()
    reattach = f"autoresearch tui --tag {run.tag}"
    if result == "stop":
        print(f"autoresearch: asked the loop ({run.tag}) to stop; `{reattach}` shows how it ended.")
    elif holder_pid(run.lock):
        print(f"autoresearch: the loop ({run.tag}) keeps running; reattach with `{reattach}`.")
    return 0


def choose_run(repo: Path, tags: list[str]) -> str | None:
    """Ask which of several runs to open: a full-screen list (tui/runs_screen.py). Returns
    the tag, or None when the user leaves. Without a terminal to ask in, the run that
    engine/runs.py's rule picks (the most recent)."""
    from engine.runs import resolve_tag

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return resolve_tag(repo, None)
    from tui.runs_screen import RunsApp

    return RunsApp(repo, tags).run()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def url_host(host: str) -> str:
    """A host as it is written in a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def serve_monitor(repo: Path, tag: str, host: str, port: int, *, allow_remote: bool = False) -> int:
    if not is_loopback(host) and not allow_remote:
        raise UsageError(
            f"--host {host} would let other machines drive the monitor; serve on 127.0.0.1 and use "
            "`ssh -L`, or pass --allow-remote"
        )
    token = secrets.token_urlsafe(32)
    # A wildcard address is no place to point a browser at: name the machine instead.
    shown = socket.gethostname() if is_wildcard(host) else host
    url = f"http://{url_host(shown)}:{port}/?token={token}"
    if not is_loopback(host):
        print(
            f"autoresearch: warning: serving on {host}: anyone who can reach it and has the token can drive "
            "the monitor (pause/skip/keep/stop), and plain HTTP carries the token unencrypted.",
            file=sys.stderr,
        )
    command = shlex.join([sys.executable, "-m", "autoresearch", "--repo", str(repo), "tui", "--tag", tag])
    server = _guarded_server(command, host, port, f"autoresearch {tag}", token,
                             announce=f"autoresearch: serving the monitor for {tag} at {url}")
    try:
        server.serve()
    except OSError as e:  # the port is taken, the address is not this machine's, ...
        raise UsageError(f"cannot serve on {url_host(host)}:{port}: {e.strerror or e}") from None
    return 0


# A Host header as a browser sends it: a name or IPv4 address, or a bracketed IPv6 one, and a port.
_HOST_HEADER = re.compile(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+(?:%[A-Za-z0-9._-]+)?\])(?::[0-9]{1,5})?")


def _guarded_server(command: str, host: str, port: int, title: str, token: str, *, announce: str) -> Any:
    """textual-serve's Server with the token and origin checks in front of every route."""
    import aiohttp_jinja2
    from aiohttp import web
    from textual_serve.server import Server, to_int
    from yarl import URL

    cookie_name = f"autoresearch-monitor-{port}"
    expected = token.encode()

    def matches(given: str | None) -> bool:
        return given is not None and secrets.compare_digest(given.encode(), expected)

    def same_origin(request: web.Request) -> bool:
        """The Origin header names this very server, as the browser reached it (scheme, host, port)."""
        origin = request.headers.get("Origin")
        if not origin or not _HOST_HEADER.fullmatch(request.host):
            return False
        try:
            theirs, ours = URL(origin), URL(f"{request.scheme}://{request.host}")
            return (theirs.scheme, theirs.host, theirs.port) == (ours.scheme, ours.host, ours.port)
        except ValueError:
            return False

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        by_query = matches(request.query.get("token"))
        by_cookie = matches(request.cookies.get(cookie_name))
        if not (by_query or by_cookie):
            raise web.HTTPForbidden(text="autoresearch: open the URL with ?token= that `autoresearch serve` printed\n")
        websocket = request.path == "/ws" or request.headers.get("Upgrade", "").lower() == "websocket"
        if (websocket or "Origin" in request.headers) and not same_origin(request):
            raise web.HTTPForbidden(text="autoresearch: refused a request from another origin\n")
        response = await handler(request)
        if by_query and not by_cookie and not response.prepared:
            response.set_cookie(cookie_name, token, httponly=True, samesite="Strict", path="/")
        return response

    class GuardedServer(Server):
        async def _make_app(self) -> web.Application:
            app = await super()._make_app()
            app.middlewares.append(guard)
            return app

        async def on_startup(self, app: web.Application) -> None:
            print(announce, file=sys.stderr, flush=True)

        @aiohttp_jinja2.template("app_index.html")
        async def handle_index(self, request: web.Request) -> dict[str, Any]:
            # The page's URLs follow the Host the browser used, never the bind address
            # (ws://0.0.0.0 reaches nothing from another machine).
            if not _HOST_HEADER.fullmatch(request.host):
                raise web.HTTPBadRequest(text="autoresearch: malformed Host header\n")
            router = request.app.router
            scheme = "wss" if request.scheme == "https" else "ws"
            static = str(router["static"].url_for(filename="/")).rstrip("/") + "/"
            return {
                "font_size": to_int(request.query.get("fontsize", "16"), 16),
                "app_websocket_url": f"{scheme}://{request.host}{router['websocket'].url_for()}",
                "config": {"static": {"url": static}},
                "application": {"name": self.title},
            }

    return GuardedServer(command, host=host, port=port, title=title)
