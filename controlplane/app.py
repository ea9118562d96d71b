"""Wiring: the aiohttp application and a running server handle.

``start_server`` opens the data directory, binds (port 0 works) and returns a
``RunningServer`` with the real URL; ``stop()`` closes agent links with 1012
and the database.  ``flow-controlplane serve`` and the tests both use it.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from aiohttp import web

from controlplane.admin_api import CP_KEY, AdminApi, admin_auth_middleware, error_middleware
from controlplane.service import ControlPlane
from controlplane.web import AdminPage

SHUTDOWN_GRACE = 5.0


def build_app(cp: ControlPlane) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, admin_auth_middleware],
        client_max_size=cp.settings.max_frame_bytes,
    )
    app[CP_KEY] = cp
    app.add_routes(AdminApi(cp).routes())
    app.add_routes(AdminPage(cp).routes())
    app.router.add_get("/agent/v1/connect", cp.hub.handle)

    async def close_links(_app: web.Application) -> None:
        await cp.hub.close_all()

    async def close_store(_app: web.Application) -> None:
        await cp.stop()

    app.on_shutdown.append(close_links)
    app.on_cleanup.append(close_store)
    return app


def url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        # A wildcard address means nothing to an agent elsewhere; name this machine instead.
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


@dataclass
class RunningServer:
    cp: ControlPlane
    runner: web.AppRunner
    url: str

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_server(
    cp: ControlPlane,
    *,
    host: str = "127.0.0.1",
    port: int = 8700,
    tls: ssl.SSLContext | None = None,
) -> RunningServer:
    await cp.start()
    runner = web.AppRunner(
        build_app(cp), handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE, access_log=None
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        await site.start()
    except BaseException:
        await runner.cleanup()
        await cp.stop()  # idempotent; setup may have failed before cleanup hooks were armed
        raise
    bound = runner.addresses[0][1]
    url = f"{'https' if tls else 'http'}://{url_host(host)}:{bound}"
    if not cp.public_url:
        cp.public_url = url
    return RunningServer(cp=cp, runner=runner, url=url)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
