"""Keep key material out of core dumps.

Once a process holds the agent's private key or opens the secret store, a
crash must not write its memory to a core file, and other processes of the
same user must not read it through ``/proc/PID/mem`` or ptrace.  On Linux
the process makes itself non-dumpable (``PR_SET_DUMPABLE`` 0, which the
kernel also honours for core dumps piped to a collector such as
systemd-coredump) and sets its core size limit to 0, soft and hard.
Elsewhere only the limit is set.  Both are idempotent and never fail the
caller: hardening that the platform refuses is logged once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource
import sys

log = logging.getLogger("flow_agent.hardening")

PR_SET_DUMPABLE = 4
_done = False


def forbid_core_dumps() -> None:
    """Make this process non-dumpable and its core size limit 0; safe to call often."""
    global _done
    if _done:
        return
    _done = True
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as exc:
        log.warning("cannot set the core size limit to 0: %s", exc)
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")
    except (OSError, AttributeError) as exc:
        log.warning("cannot make the process non-dumpable: %s", exc)


__all__ = ["forbid_core_dumps"]
