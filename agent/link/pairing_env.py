"""Pairing at daemon start: the stored identity, or one made from the environment's token.

A container pairs on its first start from ``FLOW_AGENT_PAIRING_TOKEN`` or
``FLOW_AGENT_PAIRING_TOKEN_FILE``, and again the same way after the control
plane revoked or refused its identity.  A paired agent in good standing
ignores both variables.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from agent.errors import OperationError
from agent.identity import Identity, load_identity
from agent.link.pairing import (
    PairingRefused,
    adopt_identity,
    pair,
    read_token_file,
)
from agent.link.state import REPAIR_HINT, read_link_status
from agent.logs import add_secret
from agent.settings import Settings
from agent.store.sqlite import SqliteStore

log = logging.getLogger("flow_agent.daemon")


def token_from_env(env: Mapping[str, str]) -> tuple[str | None, Path | None]:
    """The pairing token of a container start: (text, file it came from)."""
    text = env.get("FLOW_AGENT_PAIRING_TOKEN")
    if text:
        add_secret(text)
        return text, None
    name = env.get("FLOW_AGENT_PAIRING_TOKEN_FILE")
    if name:
        path = Path(name)
        text = read_token_file(path)
        add_secret(text)
        return text, path
    return None, None


async def ensure_identity(
    settings: Settings, store: SqliteStore, *, env: Mapping[str, str]
) -> Identity:
    """The stored identity, or a new one from the environment's token.

    The token is used on the first start, and after the control plane revoked
    or refused the stored identity (a new token is how an admin re-pairs a
    container); otherwise it is ignored.
    """
    identity = load_identity(settings.state_dir)
    revoked = identity is not None and read_link_status(store).state.terminal
    text: str | None = None
    path: Path | None = None
    if identity is None:
        text, path = token_from_env(env)
    elif revoked:
        # The first start's token file may be gone (wiped after use): then "revoked" is
        # what to say, and serve() says it.  A file that is there but unreadable is an
        # error worth its own words.
        named = env.get("FLOW_AGENT_PAIRING_TOKEN_FILE")
        if env.get("FLOW_AGENT_PAIRING_TOKEN") or (named and Path(named).exists()):
            text, path = token_from_env(env)
        text = text or None
    if identity is None and text is None:
        raise OperationError(
            f"this agent is not paired ({settings.state_dir} holds no identity)",
            hint="run `flow-agent pair TOKEN` first, or set FLOW_AGENT_PAIRING_TOKEN"
            " (or FLOW_AGENT_PAIRING_TOKEN_FILE) for the first start",
        )
    if text is not None:
        log.info(
            "%s: pairing with the token from the environment",
            "revoked by the control plane" if revoked else "not paired yet",
        )
        try:
            result = await pair(
                text,
                state_dir=settings.state_dir,
                store=store,
                ca_file=settings.ca_file,
                allow_plaintext=settings.allow_plaintext,
                token_file=path,
            )
        except PairingRefused as exc:
            if not revoked:
                raise
            # Most often the first start's token, still in the environment: say both.
            raise PairingRefused(
                "the control plane revoked this agent, and the pairing token in the"
                f" environment was refused: {exc.message}",
                code=exc.code,
                hint=REPAIR_HINT,
            ) from None
        identity = result.identity
    elif env.get("FLOW_AGENT_PAIRING_TOKEN") or env.get("FLOW_AGENT_PAIRING_TOKEN_FILE"):
        # Only look at the variables: pairing wiped the token file, and a
        # restart must not need it.
        assert identity is not None  # no identity and no token was refused above
        log.info("already paired as %s; the pairing token is not used", identity.agent_id)
    assert identity is not None
    adopt_identity(store, identity)
    return identity


__all__ = ["ensure_identity", "token_from_env"]
