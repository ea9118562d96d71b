"""Helpers shared by the test packages: loopback servers, waits, the real control plane.

``net``: free ports and real aiohttp servers on loopback (HTTP targets).
``waits``: bounded waits that only guard against a hang, never time anything.
``controlplane``: the reference control plane served in this process.
``agent``: an agent under test, paired with that control plane over real HTTP.
``fixtures``: ``cp`` and ``agent`` fixtures for a conftest to import.
``flows``: flows more than one test package publishes.
"""
