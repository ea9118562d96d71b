"""The Debian package: built by packaging/deb/build.sh, checked by lintian,
installed into a throwaway root (never into this system), run from there,
reinstalled and purged.

The throwaway root uses dpkg's own mechanism for that: ``dpkg --root DIR
--force-script-chrootless`` runs the maintainer scripts on this host with
``DPKG_ROOT=DIR``, and the scripts put every path (the user database
included) below it.
"""

from __future__ import annotations

import json
import marshal
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_helpers import DEB_DIR, DEFAULT_CONFIG, ROOT, UNIT, tool

VENV = "opt/flow-agent"
STATE = "var/lib/flow-agent"
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _need(*commands: str) -> None:
    for command in commands:
        if tool(command) is None:
            pytest.skip(f"{command} is not installed (scripts/test.sh installs it as root)")


@pytest.mark.parametrize("script", ["postinst", "prerm", "postrm"])
def test_maintainer_script_is_posix_sh(script: str) -> None:
    path = DEB_DIR / script
    assert path.read_text().startswith("#!/bin/sh\n")
    assert os.access(path, os.X_OK)
    shell = tool("dash") or "/bin/sh"
    answer = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True)
    assert answer.returncode == 0, answer.stderr


def test_conffiles_are_shipped() -> None:
    for line in (DEB_DIR / "conffiles").read_text().split():
        assert line == "/etc/flow-agent/agent.toml"
    assert 'install -D -m 0644 "$repo/packaging/agent.toml"' in (DEB_DIR / "build.sh").read_text()


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    # Not tmp_path_factory: pytest prunes old basetemp directories when
    # another pytest run starts, which could pull these from under a test.
    with tempfile.TemporaryDirectory(prefix="flow-agent-deb-") as name:
        yield Path(name)


@pytest.fixture(scope="module")
def deb(scratch: Path) -> Path:
    _need("dpkg-deb", "dpkg", "strip")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("the package is built with the system's /usr/bin/python3, absent here")
    out = scratch / "deb"
    out.mkdir()
    answer = subprocess.run(
        ["bash", str(DEB_DIR / "build.sh"), "--out", str(out), "--compression", "gzip"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr[-4000:]
    path = Path(answer.stdout.strip().splitlines()[-1])
    assert path.parent == out and path.suffix == ".deb"
    return path


def _field(deb: Path, name: str) -> str:
    answer = subprocess.run(["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True)
    return answer.stdout.strip()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_control_fields(deb: Path) -> None:
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    assert _field(deb, "Package") == "flow-agent"
    assert _field(deb, "Architecture") == arch.stdout.strip()
    from agent import __version__

    assert _field(deb, "Version") == __version__
    depends = [d.strip().split()[0] for d in _field(deb, "Depends").split(",")]
    # The venv's interpreter by its versioned name: a new default python3
    # must not pull the ground from under the venv.
    version = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert f"python{version.stdout.strip()}" in depends
    assert "passwd" in depends


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_lintian_reports_no_error(deb: Path) -> None:
    _need("lintian")
    answer = subprocess.run(
        ["lintian", "--display-level", ">=warning", "--no-tag-display-limit", str(deb)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    lines = answer.stdout.splitlines()
    errors = [line for line in lines if line.startswith("E:")]
    warnings = [line for line in lines if line.startswith("W:")]
    # Warnings are listed, not fatal (see pytest -rP); errors fail.
    print("lintian warnings:", *warnings or ["none"], sep="\n  ")
    assert errors == []
    assert answer.returncode == 0, answer.stderr


def _fake_root(base: Path) -> Path:
    root = base / "root"
    for sub in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "etc"):
        (root / sub).mkdir(parents=True)
    for name in ("var/lib/dpkg/status", "var/lib/dpkg/available"):
        (root / name).touch()
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/shadow").write_text("root:*::0:99999:7:::\n")
    (root / "etc/gshadow").write_text("root:*::\n")
    for name in ("etc/shadow", "etc/gshadow"):
        (root / name).chmod(0o640)
    return root


def _dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": SBIN_PATH}
    env.pop("DPKG_ROOT", None)
    answer = subprocess.run(
        ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends",
         "--log=/dev/null", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stdout + answer.stderr
    return answer


def _install(deb: Path, base: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("installing into a throwaway root needs root (ownership of the state dir)")
    root = _fake_root(base)
    _dpkg(root, "--install", str(deb))
    return root


@pytest.fixture(scope="module")
def installed(deb: Path, scratch: Path) -> Path:
    (scratch / "install").mkdir()
    return _install(deb, scratch / "install")


def _passwd(root: Path, name: str) -> list[str]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"no user {name} in {root}/etc/passwd")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_system_user_and_its_state_dir(installed: Path) -> None:
    _, _, uid, gid, _, home, shell = _passwd(installed, "flow-agent")
    assert 0 < int(uid) < 1000  # a system user
    assert home == "/var/lib/flow-agent"
    assert shell == "/usr/sbin/nologin"
    state = installed / STATE
    assert _mode(state) == 0o700
    assert (state.stat().st_uid, state.stat().st_gid) == (int(uid), int(gid))
    # Written into the throwaway root only.
    with pytest.raises(KeyError):
        pwd.getpwnam("flow-agent")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_files_and_modes(installed: Path) -> None:
    command = installed / "usr/bin/flow-agent"
    assert command.is_symlink() and os.readlink(command) == "/opt/flow-agent/bin/flow-agent"
    script = installed / VENV / "bin/flow-agent"
    assert script.read_text().startswith("#!/opt/flow-agent/bin/python3\n")
    assert _mode(script) == 0o755
    python = installed / VENV / "bin" / os.readlink(installed / VENV / "bin/python3")
    assert os.readlink(python).startswith("/usr/bin/python3.")
    unit = installed / "lib/systemd/system/flow-agent.service"
    assert unit.read_text() == UNIT.read_text() and _mode(unit) == 0o644
    config = installed / "etc/flow-agent/agent.toml"
    assert config.read_text() == DEFAULT_CONFIG.read_text() and _mode(config) == 0o644
    conffiles = (installed / "var/lib/dpkg/info/flow-agent.conffiles").read_text().split()
    assert conffiles == ["/etc/flow-agent/agent.toml"]
    assert (installed / "usr/share/doc/flow-agent/copyright").exists()
    for path in (installed / VENV).rglob("*"):
        if path.is_symlink():
            continue
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (0, 0), path
        assert _mode(path) in (0o755, 0o644), path
    # Build tools stay out of the runtime venv.
    assert not list((installed / VENV).glob("lib/python3*/site-packages/pip"))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_nothing_names_the_build_machine(installed: Path) -> None:
    needle = str(ROOT).encode()
    leaks = [
        str(p.relative_to(installed))
        for p in (installed / VENV).rglob("*")
        if p.is_file() and not p.is_symlink() and needle in p.read_bytes()
    ]
    assert leaks == []


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_bytecode_is_made_on_the_target_for_the_installed_paths(installed: Path, deb: Path) -> None:
    pycs = list((installed / VENV).rglob("agent/__pycache__/cli.*.pyc"))
    assert pycs
    code = marshal.loads(pycs[0].read_bytes()[16:])
    assert code.co_filename.startswith("/opt/flow-agent/lib/python3.")
    # And the package itself ships none (postinst makes them, prerm drops them).
    answer = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True)
    assert ".pyc" not in answer.stdout


IMPORT_ALL = """
import importlib, pkgutil, agent
names = [m.name for m in pkgutil.walk_packages(agent.__path__, 'agent.')]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def _installed_python(root: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # The venv's python3 links to /usr/bin/python3.X, which this host has; the
    # venv's own prefix is found from the link's place, inside the root.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOW_AGENT_", "PYTHON"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(
        [str(root / VENV / "bin/python3"), *args],
        capture_output=True, text=True, timeout=120, cwd=cwd, env=env,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_installed_agent_runs_a_flow(installed: Path, tmp_path: Path) -> None:
    answer = _installed_python(
        installed, str(installed / VENV / "bin/flow-agent"), "exec",
        str(ROOT / "examples/hello.json"), "--state-dir", str(tmp_path / "state"), "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["status"] == "completed"
    # Every module loads: the stripped compiled extensions included.
    answer = _installed_python(installed, "-c", IMPORT_ALL, cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    assert int(answer.stdout) > 20
    answer = _installed_python(installed, "-c", "import agent; print(agent.__file__)", cwd=tmp_path)
    assert answer.stdout.startswith(str(installed / VENV))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_reinstall_then_purge(deb: Path, tmp_path: Path) -> None:
    root = _install(deb, tmp_path)
    uid = _passwd(root, "flow-agent")[2]
    (root / STATE / "state.db").write_bytes(b"runs")
    # Again (dpkg's reinstall runs prerm upgrade, then postinst configure).
    _dpkg(root, "--install", str(deb))
    assert _passwd(root, "flow-agent")[2] == uid
    assert (root / STATE / "state.db").read_bytes() == b"runs"
    assert list((root / VENV).rglob("__pycache__"))
    _dpkg(root, "--purge", "flow-agent")
    assert not (root / VENV).exists()
    assert not (root / STATE).exists()
    assert not (root / "etc/flow-agent").exists()
    assert not (root / "usr/bin/flow-agent").exists()
    # The user stays (Debian keeps system users: their uid may own files).
    assert _passwd(root, "flow-agent")[2] == uid
    shutil.rmtree(root)
