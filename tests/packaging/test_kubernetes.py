"""config/kubernetes/: every manifest is valid against the Kubernetes schemas (offline, with
kubernetes-validate), the config in every ConfigMap passes `splitproxy check`, and the
manifests agree with each other and with the image where no schema can tell: selectors,
named ports, mounted ConfigMaps and Secrets, probes, listen ports, Services the configs name.
The documented `kubectl apply -f config/kubernetes/` applies no Secret: the placeholder token is
in examples/, which a non-recursive apply skips.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import trustme
import yaml

from splitproxy.config.models import Config, load
from splitproxy.config.units import parse_duration

ROOT = Path(__file__).parents[2]
MANIFEST_DIR = ROOT / "config" / "kubernetes"
EXAMPLE_DIR = MANIFEST_DIR / "examples"  # not applied by `kubectl apply -f config/kubernetes/`
# The oldest Kubernetes these manifests promise to work with, and the newest schemas the
# installed kubernetes-validate ships.
VERSIONS = sorted({"1.28.0", kubernetes_validate.latest_version()})

Doc = dict[str, Any]


def _documents(folder: Path) -> list[tuple[str, Doc]]:
    out = []
    for path in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                label = f"{path.relative_to(MANIFEST_DIR)}:{doc['kind']}/{doc['metadata']['name']}"
                out.append((label, doc))
    return out


DOCUMENTS = _documents(MANIFEST_DIR)  # what the documented `kubectl apply` applies
EXAMPLES = _documents(EXAMPLE_DIR)  # what the operator creates or adapts first
DOCS = [doc for _, doc in DOCUMENTS]
ALL = DOCUMENTS + EXAMPLES


def _of_kind(kind: str) -> list[Doc]:
    return [d for d in DOCS if d["kind"] == kind]


def _named(kind: str, name: str) -> Doc:
    """The one document of that kind and name, applied or example (a Secret is created from
    its example)."""
    (doc,) = [d for _, d in ALL if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_the_manifests_exist() -> None:
    names = {p.name for p in MANIFEST_DIR.glob("*.yaml")}
    assert {"sidecar.yaml", "edge.yaml", "configmap.yaml", "services.yaml",
            "redis.yaml"} <= names
    assert (EXAMPLE_DIR / "secret.yaml").is_file()
    assert len({label for label, _ in ALL}) == len(ALL), "duplicate kind/name"


def test_the_documented_apply_creates_no_secret() -> None:
    """`kubectl apply -f config/kubernetes/` must not overwrite the Secret the operator made
    with a placeholder anyone can read here."""
    assert not _of_kind("Secret"), [d["metadata"]["name"] for d in _of_kind("Secret")]
    secrets = {d["metadata"]["name"] for _, d in EXAMPLES if d["kind"] == "Secret"}
    assert secrets == {"splitproxy-admin-token", "splitproxy-edge-tls"}
    text = (EXAMPLE_DIR / "secret.yaml").read_text()
    assert "kubectl create secret generic splitproxy-admin-token" in text
    assert "openssl rand" in text


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("doc", [d for _, d in ALL], ids=[label for label, _ in ALL])
def test_manifest_is_valid_against_the_kubernetes_schema(doc: Doc, version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(map(str, exc.absolute_path))
        pytest.fail(f"Kubernetes {version}: {path}: {exc.message}", pytrace=False)


# ------------------------------------------------------------------------- embedded configs

CONFIGMAPS = [d for d in DOCS if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {})]


TLS_DIR = "/etc/splitproxy-tls/"  # the edge's TLS Secret, mounted (edge.yaml)


@pytest.fixture(params=CONFIGMAPS, ids=[d["metadata"]["name"] for d in CONFIGMAPS])
def embedded(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Config]:
    """The config as the pod reads it: with the TLS Secret's files in place (a certificate
    from trustme where the Secret is mounted), since a config whose certificate does not load
    is refused."""
    text = request.param["data"]["config.yaml"]
    if TLS_DIR in text:
        leaf = trustme.CA().issue_cert("shop.example.com")
        leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
        leaf.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
        text = text.replace(TLS_DIR, f"{tmp_path}/")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path, load(path)


def test_embedded_config_passes_splitproxy_check(embedded: tuple[Path, Config]) -> None:
    path, _ = embedded
    result = subprocess.run([sys.executable, "-m", "splitproxy", "check", "-c", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("listen ")


def test_embedded_config_is_a_fleet_config(embedded: tuple[Path, Config]) -> None:
    """Shared state in the Redis of redis.yaml, analysis from Prometheus, listeners on the pod
    IP with the token the pods mount."""
    _, config = embedded
    assert config.listen[0].address == "0.0.0.0:8080"
    assert all(lst.address.host == "0.0.0.0" for lst in config.listen)
    assert config.admin.listen == "0.0.0.0:9901"
    assert config.admin.token_file == "/etc/splitproxy/admin-token"
    assert config.state.backend == "redis"
    assert config.state.url == "redis://splitproxy-redis:6379/0"
    for route in config.routes:
        assert route.analysis is not None, route.name
        assert route.analysis.source == "prometheus"
        assert route.analysis.prometheus_url == "http://prometheus:9090"


def test_fleets_do_not_share_a_lease_or_series() -> None:
    configs = [yaml.safe_load(d["data"]["config.yaml"]) for d in CONFIGMAPS]
    prefixes = [c["state"]["key_prefix"] for c in configs]
    assert len(set(prefixes)) == len(prefixes), prefixes  # one lease per prefix
    routes = [r["name"] for c in configs for r in c["routes"]]
    assert len(set(routes)) == len(routes), routes  # the `route` label in PromQL


def test_config_upstreams_are_services_defined_here(embedded: tuple[Path, Config]) -> None:
    _, config = embedded
    services = {d["metadata"]["name"]: d for d in _of_kind("Service")}
    urls: list[str] = [e for r in config.routes for v in r.versions.values() for e in v.endpoints]
    urls.append(config.state.url)
    for url in urls:
        parts = urlsplit(url)
        if parts.hostname == "127.0.0.1":
            continue  # a container of the same pod
        assert parts.hostname in services, f"{url}: no Service {parts.hostname}"
        ports = [p["port"] for p in services[parts.hostname]["spec"]["ports"]]
        assert parts.port in ports, f"{url}: Service {parts.hostname} has ports {ports}"


# -------------------------------------------------------------------------------- workloads


def _pod_specs() -> Iterator[tuple[str, Doc, Doc]]:
    """(deployment name, pod template metadata, pod spec)."""
    for d in _of_kind("Deployment"):
        template = d["spec"]["template"]
        yield d["metadata"]["name"], template["metadata"], template["spec"]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_deployment_selectors_match_their_pods() -> None:
    for d in _of_kind("Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert _matches(d["spec"]["selector"]["matchLabels"], labels), d["metadata"]["name"]


def test_services_select_pods_with_their_target_ports() -> None:
    for svc in _of_kind("Service"):
        name, selector = svc["metadata"]["name"], svc["spec"]["selector"]
        pods = [(m, s) for _, m, s in _pod_specs() if _matches(selector, m["labels"])]
        assert pods, f"Service {name} selects no pods"
        for _, spec in pods:
            ports = {p["name"] for c in spec["containers"] for p in c.get("ports", [])}
            for port in svc["spec"]["ports"]:
                assert port["targetPort"] in ports, (name, port, ports)


def test_pod_disruption_budgets_select_pods() -> None:
    for pdb in _of_kind("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(_matches(selector, m["labels"]) for _, m, _ in _pod_specs()), pdb


def test_mounted_configmaps_and_secrets_exist_with_their_keys() -> None:
    for name, _, spec in _pod_specs():
        for volume in spec.get("volumes", []):
            sources = list(volume.get("projected", {}).get("sources", []))
            sources += [{k: volume[k]} for k in ("configMap", "secret") if k in volume]
            for source in sources:
                for kind, ref in source.items():
                    ref_name = ref.get("name") or ref.get("secretName")
                    doc = _named(kind[0].upper() + kind[1:], ref_name)
                    keys = set(doc.get("data", {})) | set(doc.get("stringData", {}))
                    for item in ref.get("items", []):
                        assert item["key"] in keys, (name, ref_name, item["key"])


def _splitproxy_pods() -> list[tuple[str, Doc, Doc, Doc]]:
    """(deployment, pod metadata, pod spec, the splitproxy container)."""
    out = []
    for name, meta, spec in _pod_specs():
        for c in spec["containers"]:
            if c["image"].split("/")[-1].split(":")[0] == "splitproxy":
                out.append((name, meta, spec, c))
    return out


SPLITPROXY_PODS = _splitproxy_pods()
IDS = [p[0] for p in SPLITPROXY_PODS]


def test_there_is_a_sidecar_and_an_edge_tier() -> None:
    by_name = {name: (spec, c) for name, _, spec, c in SPLITPROXY_PODS}
    assert set(by_name) == {"shop", "splitproxy-edge"}
    assert len(by_name["shop"][0]["containers"]) == 2  # the sidecar next to the app
    assert _named("Deployment", "splitproxy-edge")["spec"]["replicas"] == 3


@pytest.mark.parametrize(("name", "meta", "spec", "container"), SPLITPROXY_PODS, ids=IDS)
def test_splitproxy_pod(name: str, meta: Doc, spec: Doc, container: Doc) -> None:
    # Prometheus annotations point at the admin port.
    annotations = meta["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(annotations["prometheus.io/port"]) == ports["admin"] == 9901
    assert ports["http"] == 8080
    assert meta["labels"]["splitproxy.io/state-client"] == "true"  # Redis NetworkPolicy

    # Probes: httpGet on the admin port (the probe paths need no token): no exec probe
    # starting a Python interpreter every few seconds.
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert "exec" not in container[probe], probe
        assert container[probe]["httpGet"] == {"path": path, "port": "admin"}, probe

    # Non-root, read-only root file system, resources.
    pod_sc, sc = spec.get("securityContext", {}), container["securityContext"]
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
    assert sc.get("runAsUser", pod_sc.get("runAsUser")) == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]

    # The config as a directory (no subPath: the ..data swap must be seen), state writable.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert all("subPath" not in m and "subPathExpr" not in m for m in mounts.values())
    config_mount = mounts["/etc/splitproxy"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/var/lib/splitproxy"]["name"]]
    sources = volumes[config_mount["name"]]["projected"]["sources"]
    files = {i["path"]: s for s in sources for kind in s.values() for i in kind["items"]}
    assert set(files) == {"config.yaml", "admin-token"}
    assert "secret" in files["admin-token"]
    configmap = _named("ConfigMap", files["config.yaml"]["configMap"]["name"])
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    listen = config["listen"] if isinstance(config["listen"], list) else [config["listen"]]
    addresses = [lst if isinstance(lst, str) else lst["address"] for lst in listen]
    assert addresses[0].endswith(f":{ports['http']}")
    if len(addresses) > 1:  # the edge: TLS on the https port
        assert addresses[1].endswith(f":{ports['https']}") and "tls" in listen[1]
    assert config["admin"]["listen"].endswith(f":{ports['admin']}")

    # Shutdown: preStop sleep, then at most `drain`, inside the grace period.
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    drain = parse_duration(config.get("timeouts", {}).get("drain", "30s"))
    assert int(sleep[1]) + drain < spec["terminationGracePeriodSeconds"]
