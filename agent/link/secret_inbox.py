"""Secrets the control plane sealed to this agent: open, check, store, acknowledge.

The link hands every ``secret`` frame to :class:`SecretReceiver`, which
answers with the ``secret_ack`` to send back.  The value is opened with the
private key in ``STATE_DIR/sealing.key``, taught to the log redactor before
anything else happens to it, and stored through the encrypted secret store;
no log line, error or acknowledgement carries it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from agent.errors import AgentError
from agent.protocol.frames import SecretAck, SecretPush
from agent.protocol.sealing import SealedSecretInvalid, open_sealed
from agent.secrets import SecretKeyError, SecretStore, load_sealing_key

log = logging.getLogger("flow_agent.secrets")


class SecretReceiver:
    """Turns a ``secret`` frame into a stored secret and its ``secret_ack``."""

    def __init__(
        self,
        *,
        store: SecretStore,
        state_dir: Path,
        agent_id: str,
        learn: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.state_dir = Path(state_dir)
        self.agent_id = agent_id
        self.learn = learn  # the log redactor's add: masks the value from now on

    def __call__(self, msg: SecretPush) -> SecretAck:
        try:
            # Read at each frame: a re-paired agent's key file is found without a restart.
            key = load_sealing_key(self.state_dir, create=False)
        except SecretKeyError as exc:
            log.warning("refused secret %s: no sealing key (%s)", msg.name, exc.message)
            return SecretAck(name=msg.name, ok=False, reason="no_sealing_key")
        try:
            name, value = open_sealed(key, asdict(msg.sealed), agent_id=self.agent_id)
        except SealedSecretInvalid as exc:
            log.warning("refused secret %s: %s", msg.name, exc.message)
            return SecretAck(name=msg.name, ok=False, reason="sealed_invalid")
        if self.learn is not None:
            self.learn(value)
        if name != msg.name:
            log.warning("refused secret %s: the sealed name is another", msg.name)
            return SecretAck(name=msg.name, ok=False, reason="sealed_invalid")
        try:
            self.store.set(name, value)
        except AgentError as exc:
            log.error("cannot store secret %s: %s", name, exc.message)
            return SecretAck(name=name, ok=False, reason="store_failed")
        log.info("secret %s received sealed from the control plane and stored", name)
        return SecretAck(name=name, ok=True)


__all__ = ["SecretReceiver"]
