"""The kustomize base: schemas (kubernetes-validate), the restricted Pod
Security Standard (reliability case 34), the agent's own needs (probes,
drain, volume, token file), and a checkov scan.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    KUSTOMIZE_DIR,
    checkov,
    commented_settings,
    offline_env,
    setting_names,
    tool,
)

from agent.settings import OTHER_ENV, Settings, read_config_file, read_env

Doc = dict[str, Any]

# The oldest Kubernetes release this base supports, and the newest whose
# schemas kubernetes-validate ships (checked against both).
K8S_VERSIONS = ("1.30.0", "latest")
API_PORT = 8355


def kustomization() -> Doc:
    doc = yaml.safe_load((KUSTOMIZE_DIR / "kustomization.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def static_docs() -> list[tuple[str, Doc]]:
    """Every manifest the kustomization lists, as (file, document)."""
    out = []
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((KUSTOMIZE_DIR / name).read_text()):
            out.append((name, doc))
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[Doc] | None:
    """What `kubectl apply -k` would send (kubectl's kustomize), or None without kubectl."""
    kubectl = tool("kubectl")
    if kubectl is None:
        return None
    base = tmp_path_factory.mktemp("kustomize") / "base"
    shutil.copytree(KUSTOMIZE_DIR, base)
    for generator in kustomization()["secretGenerator"]:
        for name in generator["files"]:
            (base / name).write_text(f"placeholder-{name}-for-the-test\n")
    answer = subprocess.run(
        [kubectl, "kustomize", str(base)], capture_output=True, text=True, timeout=120
    )
    assert answer.returncode == 0, answer.stderr
    return [d for d in yaml.safe_load_all(answer.stdout) if d]


def by_kind(kind: str) -> Doc:
    (doc,) = [d for _, d in static_docs() if d["kind"] == kind]
    return doc


@pytest.fixture(scope="module")
def statefulset() -> Doc:
    return by_kind("StatefulSet")


def pod(statefulset: Doc) -> Doc:
    spec = statefulset["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def container(statefulset: Doc) -> Doc:
    (only,) = pod(statefulset)["containers"]
    assert isinstance(only, dict)
    return only


def env(statefulset: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(statefulset).get("env", [])}


# ---- the files


def test_every_manifest_is_listed() -> None:
    listed = set(kustomization()["resources"])
    present = {p.name for p in KUSTOMIZE_DIR.glob("[!.]*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_no_credential_is_committed() -> None:
    ignored = (KUSTOMIZE_DIR / ".gitignore").read_text().split()
    for generator in kustomization()["secretGenerator"]:
        for name in generator["files"]:
            assert f"/{name}" in ignored
            assert not (KUSTOMIZE_DIR / name).exists() or _untracked(KUSTOMIZE_DIR / name)


def _untracked(path: Path) -> bool:
    answer = subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(path)], capture_output=True, cwd=path.parent
    )
    return answer.returncode != 0


# ---- schemas


def _validate(doc: Doc, version: str) -> None:
    import kubernetes_validate

    wanted = kubernetes_validate.latest_version() if version == "latest" else version
    try:
        kubernetes_validate.validate(doc, wanted, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {where}: {exc.message}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    ("name", "doc"), static_docs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_manifest_matches_the_schema(name: str, doc: Doc, version: str) -> None:
    _validate(doc, version)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_output_matches_the_schema(rendered: list[Doc] | None, version: str) -> None:
    if rendered is None:
        pytest.skip("kubectl is not installed: the kustomize output is not rendered")
    kinds = sorted(d["kind"] for d in rendered)
    assert "Secret" in kinds and "StatefulSet" in kinds
    for doc in rendered:
        _validate(doc, version)


def test_strict_validation_catches_a_typo(statefulset: Doc) -> None:
    broken = copy.deepcopy(statefulset)
    pod(broken)["automountServiceAcountToken"] = False
    import kubernetes_validate

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


# ---- Pod Security Standard "restricted" (v1.30), every container

_RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def restricted_violations(spec: Doc) -> list[str]:
    """Where a pod spec breaks the restricted profile (empty: it complies)."""
    problems: list[str] = []
    pod_sc = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"{flag} is set")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: type {sorted(kinds)} not allowed")
    containers = [
        *spec.get("initContainers", []),
        *spec.get("containers", []),
        *spec.get("ephemeralContainers", []),
    ]
    if not containers:
        problems.append("no containers")
    pod_seccomp = pod_sc.get("seccompProfile", {}).get("type")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser is 0")
    for c in containers:
        name = c["name"]
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser is 0")
        seccomp = sc.get("seccompProfile", {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort {port['hostPort']}")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount")
    return problems


def test_every_pod_is_restricted() -> None:
    pods = [d for _, d in static_docs() if "template" in d.get("spec", {})]
    assert pods
    for doc in pods:
        assert restricted_violations(doc["spec"]["template"]["spec"]) == [], doc["kind"]


def test_the_namespace_enforces_restricted() -> None:
    labels = by_kind("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_checker_catches_each_loosening(statefulset: Doc) -> None:
    loosenings: dict[str, Callable[[Doc], object]] = {
        "drop": lambda s: s["containers"][0]["securityContext"]["capabilities"].pop("drop"),
        "escalation": lambda s: s["containers"][0]["securityContext"].update(
            allowPrivilegeEscalation=True
        ),
        "root": lambda s: [
            s["securityContext"].pop("runAsNonRoot"),
            s["containers"][0]["securityContext"].pop("runAsNonRoot"),
        ],
        "seccomp": lambda s: [
            s["securityContext"].pop("seccompProfile"),
            s["containers"][0]["securityContext"].pop("seccompProfile"),
        ],
        "hostPath": lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "hostNetwork": lambda s: s.update(hostNetwork=True),
    }
    for what, loosen in loosenings.items():
        spec = copy.deepcopy(pod(statefulset))
        loosen(spec)
        assert restricted_violations(spec), f"{what} went unnoticed"


def test_container_hardening_beyond_the_profile(statefulset: Doc) -> None:
    sc = container(statefulset)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsUser"] == 10001 and sc["runAsGroup"] == 10001
    assert pod(statefulset)["securityContext"]["runAsUser"] == 10001


def test_no_service_account_token(statefulset: Doc) -> None:
    assert by_kind("ServiceAccount")["automountServiceAccountToken"] is False
    assert pod(statefulset)["automountServiceAccountToken"] is False
    assert pod(statefulset)["serviceAccountName"] == by_kind("ServiceAccount")["metadata"]["name"]


# ---- what the agent needs


def test_probes_hit_livez_and_readyz_on_the_api_port(statefulset: Doc) -> None:
    c = container(statefulset)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"api": API_PORT}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "api"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api"}
    assert c["startupProbe"]["httpGet"]["path"] == "/livez"


def test_the_api_listens_on_the_pod_address(statefulset: Doc) -> None:
    assert env(statefulset)["FLOW_AGENT_API_LISTEN"] == f"0.0.0.0:{API_PORT}"


def test_grace_period_is_above_the_drain(statefulset: Doc) -> None:
    drain = Settings(state_dir=Path("/nonexistent")).drain_timeout
    assert pod(statefulset)["terminationGracePeriodSeconds"] >= drain + 10


def test_state_lives_on_a_read_write_once_claim(statefulset: Doc) -> None:
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["name"]: m for m in container(statefulset)["volumeMounts"]}
    mount = mounts[claim["metadata"]["name"]]["mountPath"]
    assert env(statefulset)["FLOW_AGENT_STATE_DIR"].startswith(mount + "/")
    assert statefulset["spec"]["replicas"] == 1
    # With a read-only root, /tmp must be a volume too.
    assert mounts["tmp"]["mountPath"] == "/tmp"


def _secret_file(statefulset: Doc, c: Doc, path: Path) -> None:
    """``path`` is a file of the generated Secret, mounted read-only into ``c``."""
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    mount = mounts[str(path.parent)]
    assert mount["readOnly"] is True
    volumes = {v["name"]: v for v in pod(statefulset)["volumes"]}
    secret_name = volumes[mount["name"]]["secret"]["secretName"]
    (generator,) = [g for g in kustomization()["secretGenerator"] if g["name"] == secret_name]
    assert path.name in generator["files"]


def test_pairing_token_is_a_mounted_secret_file(statefulset: Doc) -> None:
    path = Path(env(statefulset)["FLOW_AGENT_PAIRING_TOKEN_FILE"])
    _secret_file(statefulset, container(statefulset), path)
    assert "FLOW_AGENT_PAIRING_TOKEN" not in env(statefulset)


def test_api_token_is_copied_from_the_secret_into_memory(statefulset: Doc) -> None:
    target = env(statefulset)["FLOW_AGENT_API_TOKEN_FILE"]
    (init,) = pod(statefulset)["initContainers"]
    assert init["image"] == container(statefulset)["image"]
    install, flag, mode, source, copy_to = init["command"]
    assert (install, flag, mode, copy_to) == ("install", "-m", "0600", target)
    _secret_file(statefulset, init, Path(source))
    volumes = {v["name"]: v for v in pod(statefulset)["volumes"]}
    (run,) = [m for m in init["volumeMounts"] if m["mountPath"] == str(Path(target).parent)]
    assert volumes[run["name"]]["emptyDir"]["medium"] == "Memory"
    main = {m["name"]: m for m in container(statefulset)["volumeMounts"]}
    assert main[run["name"]]["mountPath"] == str(Path(target).parent)


def test_why_the_api_token_is_copied(tmp_path: Path) -> None:
    # What a Secret volume holds under fsGroup: 0440. The agent refuses it;
    # the init container's 0600 copy is accepted.
    from agent.api.auth import read_token_file
    from agent.errors import ConfigError

    token = "t" * 43
    mounted = tmp_path / "secret-api-token"
    mounted.write_text(token + "\n")
    mounted.chmod(0o440)
    with pytest.raises(ConfigError, match="readable by other users"):
        read_token_file(mounted)
    copy_ = tmp_path / "api-token"
    subprocess.run(["install", "-m", "0600", str(mounted), str(copy_)], check=True)
    assert read_token_file(copy_) == token


def test_every_flow_agent_variable_is_a_setting(statefulset: Doc) -> None:
    ours = {k: v for k, v in env(statefulset).items() if k not in OTHER_ENV}
    assert set(read_env(ours)) == {k.removeprefix("FLOW_AGENT_").lower() for k in ours}


def test_the_config_map_is_a_valid_agent_config(tmp_path: Path) -> None:
    text = by_kind("ConfigMap")["data"]["agent.toml"]
    path = tmp_path / "agent.toml"
    path.write_text(text)
    assert read_config_file(path) == {}
    names = setting_names()
    for name in commented_settings(text):
        assert name in names, f"the ConfigMap documents {name}, which is no setting"


def test_resources_are_requested_and_limited(statefulset: Doc) -> None:
    resources = container(statefulset)["resources"]
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[part])


def test_selectors_find_the_pod(statefulset: Doc) -> None:
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    for doc in (by_kind("Service"), by_kind("PodDisruptionBudget"), by_kind("NetworkPolicy")):
        selector = doc["spec"].get("selector") or doc["spec"]["podSelector"]
        wanted = selector.get("matchLabels", selector)
        assert wanted.items() <= labels.items(), doc["kind"]
    service = by_kind("Service")
    assert service["spec"]["ports"] == [
        {"name": "api", "port": API_PORT, "targetPort": "api", "protocol": "TCP"}
    ]
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]


def test_network_policy_allows_only_dns_the_control_plane_and_the_api() -> None:
    spec = by_kind("NetworkPolicy")["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"port": API_PORT, "protocol": "TCP"}]
    dns, control_plane = spec["egress"]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    (block,) = control_plane["to"]
    # A documentation range: the admin must put the real address there.
    assert block["ipBlock"]["cidr"] == "192.0.2.0/24"


def test_disruption_budget_never_blocks_a_drain() -> None:
    spec = by_kind("PodDisruptionBudget")["spec"]
    assert spec["maxUnavailable"] == 1
    assert "minAvailable" not in spec


# ---- checkov


def _skips_with_reasons() -> dict[str, str]:
    """Checks .checkov.yaml skips, each with the comment block above it."""
    skips: dict[str, str] = {}
    comment: list[str] = []
    for line in (KUSTOMIZE_DIR / ".checkov.yaml").read_text().splitlines():
        text = line.strip()
        if text.startswith("#"):
            comment.append(text.lstrip("# "))
        elif text.startswith("- CKV"):
            skips[text[2:]] = " ".join(comment)
            comment = []
        else:
            comment = []
    return skips


def test_every_skipped_check_is_justified() -> None:
    config = yaml.safe_load((KUSTOMIZE_DIR / ".checkov.yaml").read_text())
    reasons = _skips_with_reasons()
    assert set(config["skip-check"]) == set(reasons)
    for check, reason in reasons.items():
        assert len(reason.split()) >= 10, f"{check} has no real justification"


@pytest.fixture(scope="module")
def checkov_cmd() -> Iterator[list[str]]:
    command = checkov()
    if command is None:
        pytest.skip("checkov could not be installed (no package registry reachable)")
    yield command


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_checkov_finds_nothing(
    checkov_cmd: list[str], rendered: list[Doc] | None, tmp_path: Path
) -> None:
    if rendered is not None:
        target = tmp_path / "rendered.yaml"
        target.write_text(yaml.safe_dump_all(rendered))
        where = ["--file", str(target)]
    else:
        where = ["--directory", str(KUSTOMIZE_DIR)]
    answer = subprocess.run(
        [*checkov_cmd, "--config-file", str(KUSTOMIZE_DIR / ".checkov.yaml"), *where,
         "--skip-download", "--output", "json", "--compact"],
        capture_output=True, text=True, timeout=600, env=offline_env(),
    )  # fmt: skip
    report = json.loads(answer.stdout)
    results = report[0] if isinstance(report, list) else report
    failed = [
        f"{r['check_id']} {r['check_name']} ({r['resource']})"
        for r in results.get("results", {}).get("failed_checks", [])
    ]
    assert failed == []
    assert results["summary"]["passed"] > 50
    assert results["summary"]["parsing_errors"] == 0
