"""The deployment docs and the default agent.toml keep up with the files."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from deploy_helpers import DEFAULT_CONFIG, KUSTOMIZE_DIR, ROOT, commented_settings, setting_names

from agent.settings import read_config_file

DEPLOY = ROOT / "docs" / "deploy.md"
README_SECTIONS = (
    "Run as a systemd service",
    "Run in a container",
    "Deploy on Kubernetes",
    "Install the Debian package",
)


def _anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    return {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_readme_has_the_deployment_sections_and_links_them() -> None:
    readme = (ROOT / "README.md").read_text()
    for title in README_SECTIONS:
        match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", readme, flags=re.M | re.S)
        assert match, f"README has no section {title!r}"
        assert "docs/deploy.md" in match[1] or "#install-the-debian-package" in match[1]


def test_every_link_to_deploy_md_lands_on_a_heading() -> None:
    targets = _anchors(DEPLOY.read_text())
    linked = set(re.findall(r"deploy\.md#([a-z0-9-]+)", (ROOT / "README.md").read_text()))
    linked |= set(re.findall(r"\]\(#([a-z0-9-]+)\)", DEPLOY.read_text()))
    assert linked
    assert linked <= targets


def test_every_relative_link_in_deploy_md_exists() -> None:
    for target in re.findall(r"\]\((\.\./[^)#]+)\)", DEPLOY.read_text()):
        assert (DEPLOY.parent / target).resolve().exists(), target


def test_every_manifest_is_described() -> None:
    text = DEPLOY.read_text()
    kustomization = yaml.safe_load((KUSTOMIZE_DIR / "kustomization.yaml").read_text())
    for name in [*kustomization["resources"], "kustomization.yaml"]:
        assert f"`{name}`" in text, name


def test_every_variable_the_deployments_set_is_described() -> None:
    text = DEPLOY.read_text()
    used: set[str] = set()
    for path in [ROOT / "Dockerfile", *KUSTOMIZE_DIR.glob("*.yaml")]:
        used |= set(re.findall(r"\bFLOW_AGENT_[A-Z_]+\b", path.read_text()))
    assert used
    for name in sorted(used):
        assert name in text, name


def test_the_default_config_is_valid_and_documents_real_settings(tmp_path: Path) -> None:
    # As shipped (all commented out), the agent accepts it.
    assert read_config_file(DEFAULT_CONFIG) == {}
    documented = commented_settings(DEFAULT_CONFIG.read_text())
    assert set(documented) - setting_names() == set(), "it documents no-such settings"
    # Uncommented, every documented value is of the setting's type.
    (tmp_path / "agent.toml").write_text("\n".join(documented.values()) + "\n")
    assert set(read_config_file(tmp_path / "agent.toml")) == set(documented)
