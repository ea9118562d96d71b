"""Two network namespaces joined by a veth pair: a link the test can cut.

``Netns.create()`` makes ``fa-cp-N`` and ``fa-ag-N`` with addresses from
10.231.N.0/30 on the veth ends (nothing is configured in the host's own
namespace), loopback up in both.  ``down()``/``up()`` set the control
plane's end down and up: packets are dropped silently, as in a real
partition, so only heartbeats can tell.  ``close()`` deletes both
namespaces, which deletes the veth pair with them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    probe = f"fa-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"ip netns add failed: {exc.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


@dataclass
class Netns:
    cp: str
    agent: str
    cp_if: str
    agent_if: str
    cp_addr: str
    agent_addr: str

    @classmethod
    def create(cls) -> Netns:
        n = os.getpid() % 250 + 1
        tag = f"{os.getpid() % 100000}"
        net = cls(
            cp=f"fa-cp-{tag}",
            agent=f"fa-ag-{tag}",
            cp_if=f"fvc{tag}",
            agent_if=f"fva{tag}",
            cp_addr=f"10.231.{n}.1",
            agent_addr=f"10.231.{n}.2",
        )
        net.close()  # left over from a killed run
        _ip("netns", "add", net.cp)
        _ip("netns", "add", net.agent)
        try:
            _ip("link", "add", net.cp_if, "type", "veth", "peer", "name", net.agent_if)
            _ip("link", "set", net.cp_if, "netns", net.cp)
            _ip("link", "set", net.agent_if, "netns", net.agent)
            for ns, dev, addr in (
                (net.cp, net.cp_if, net.cp_addr),
                (net.agent, net.agent_if, net.agent_addr),
            ):
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
        except BaseException:
            net.close()
            raise
        return net

    def exec_prefix(self) -> list[str]:
        """Run a command inside the agent's namespace."""
        return ["ip", "netns", "exec", self.agent]

    def down(self) -> None:
        _ip("-n", self.cp, "link", "set", self.cp_if, "down")

    def up(self) -> None:
        _ip("-n", self.cp, "link", "set", self.cp_if, "up")

    def close(self) -> None:
        for ns in (self.cp, self.agent):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
