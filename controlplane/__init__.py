"""The reference regional control plane for flow-agent (``flow-controlplane``).

It shares only ``agent.protocol`` (and the flow validator, at publish) with
the agent.  Modules: ``cli`` (the command line), ``client`` (admin API client
for the CLI), ``app`` (aiohttp wiring, ``start_server``), ``service`` (the
operations), ``hub`` (the agent websocket link), ``admin_api`` and
``openapi`` (``/admin/v1``), ``web`` (the admin page), ``store``, ``records``
and ``db`` (SQLite).  See docs/controlplane.md.
"""
