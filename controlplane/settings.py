"""Settings of one control-plane process (from ``serve`` flags, or tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.protocol.frames import MAX_FRAME_BYTES

DEFAULT_TOKEN_TTL = 24 * 3600.0


@dataclass(frozen=True, kw_only=True)
class Settings:
    """``public_url`` None means: derived from the bound host and port at start."""

    data_dir: Path
    region: str = "local"
    public_url: str | None = None
    heartbeat: float = 20.0
    handshake_timeout: float = 10.0
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_wait: float = 600.0
    secure_cookies: bool = False
