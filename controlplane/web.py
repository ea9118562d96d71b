"""The server-rendered admin page at ``/``, behind a login form.

The form takes the admin key once and sets an opaque, HttpOnly, SameSite=Strict
session cookie; the key never travels in a URL.  Templates are Jinja2 with
autoescaping on.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any, Final

import jinja2
from aiohttp import web

from controlplane.service import ControlPlane
from controlplane.store import iso

COOKIE: Final = "fcp_session"
SESSION_TTL: Final = 12 * 3600.0


class AdminPage:
    def __init__(self, cp: ControlPlane, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cp = cp
        self.clock = clock
        self.sessions: dict[str, float] = {}
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("controlplane", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/login", self.login_form),
            web.post("/login", self.login),
            web.post("/logout", self.logout),
        ]

    def _render(self, name: str, status: int = 200, **context: Any) -> web.Response:
        html = self.env.get_template(name).render(region=self.cp.settings.region, **context)
        return web.Response(
            text=html,
            status=status,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline';"
                " form-action 'self'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    def _logged_in(self, request: web.Request) -> bool:
        token = request.cookies.get(COOKIE)
        if not token:
            return False
        expires = self.sessions.get(token)
        if expires is None or expires < self.clock():
            self.sessions.pop(token, None)
            return False
        return True

    async def login_form(self, request: web.Request) -> web.Response:
        return self._render("login.html", error=None)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        given = form.get("key")
        if not isinstance(given, str) or not hmac.compare_digest(
            given.strip().encode(), self.cp.admin_key.encode()
        ):
            return self._render("login.html", status=401, error="That admin key is not right.")
        token = secrets.token_urlsafe(32)
        now = self.clock()
        # Drop expired sessions here so the table cannot grow without bound.
        self.sessions = {t: e for t, e in self.sessions.items() if e > now}
        self.sessions[token] = now + SESSION_TTL
        response = web.HTTPSeeOther("/")
        response.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="Strict",
            secure=self.cp.settings.secure_cookies,
            max_age=int(SESSION_TTL),
            path="/",
        )
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        self.sessions.pop(request.cookies.get(COOKIE, ""), None)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    async def index(self, request: web.Request) -> web.Response:
        if not self._logged_in(request):
            raise web.HTTPSeeOther("/login")
        store = self.cp.store

        def gather() -> list[dict[str, Any]]:
            tenants = []
            for name in store.list_tenants():
                agents = store.list_agents(name)
                tenants.append(
                    {
                        "name": name,
                        "agents": [
                            {**a.to_json(), "last_seen": iso(a.last_seen) or "never"}
                            for a in agents
                        ],
                        "flows": store.list_flows(name),
                        "runs": [r.to_json() for r in store.list_runs(name, limit=20)],
                    }
                )
            return tenants

        tenants = await self.cp.db.run(gather)
        return self._render("index.html", tenants=tenants, info=self.cp.info())
