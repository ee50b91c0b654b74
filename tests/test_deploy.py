"""The Kubernetes manifests under deploy/, checked offline: each overlay builds with `kubectl kustomize`,
every object validates against the Kubernetes schemas (kubernetes-validate), every ScaledObject
against deploy/schemas/keda-scaledobject.json and the PrometheusRule against
deploy/schemas/prometheus-rule.json (its alerts reading only metrics Ladder serves), checkov finds nothing outside deploy/checkov-skips.txt,
and the manifests say what the policies and the contract say (a Deployment and a ScaledObject per
tier, no Secret, non-root read-only containers with requests and limits).

A missing tool (kubectl, checkov) skips its tests on a laptop and fails them in CI (`CI` set): a
check skipped in CI is a check not run."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import jsonschema
import kubernetes_validate
import pytest
import yaml

from policies.config import CLASSIFY_QUEUE, SHADOW_QUEUE, load_policies

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OVERLAYS = ("dev", "production")
# The oldest Kubernetes the manifests support (PDB unhealthyPodEvictionPolicy is GA in 1.31) and the
# newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
SECRET_VARS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "REDIS_URL", "CLICKHOUSE_URL")
PROVIDER_KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY")
METRICS_PORT = 9100
NOT_AUTOSCALED = {"ladder-sink", "ladder-exporter", "ladder-batches"}
# ladder/role of the Deployments that call a provider: the queue consumers ("worker": tier workers,
# classifier, shadow, each autoscaled on its queue) and the batch lane (the providers' batch APIs).
PROVIDER_ROLES = ("worker", "batch-lane")
CRD_KINDS = ("ScaledObject", "PrometheusRule")

Obj = dict[str, Any]


def _missing_tool(what: str) -> NoReturn:
    """Skip on a developer's machine; fail in CI, where .ci/run must have installed the tool."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI is set: a skipped check in CI is a defect; .ci/run installs it)")
    pytest.skip(what)


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        _missing_tool("kubectl is not on PATH (.ci/run installs it)")
    out = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, check=False)
    kustomize = json.loads(out.stdout or "{}").get("kustomizeVersion", "") if out.returncode == 0 else ""
    major = re.match(r"v(\d+)\.", kustomize)
    if not major or int(major.group(1)) < 5:
        pytest.fail(
            f"{kubectl} embeds kustomize {kustomize or 'older than v4'}; the overlays need kustomize v5 "
            "(kubectl 1.27 or later): `labels`, `patches` with a labelSelector target"
        )
    return kubectl


@functools.cache
def _built_text(overlay: str) -> str:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(DEPLOY / "overlays" / overlay)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, f"kubectl kustomize deploy/overlays/{overlay} failed:\n{out.stderr}"
    return out.stdout


def _objects(overlay: str) -> list[Obj]:
    return [o for o in yaml.safe_load_all(_built_text(overlay)) if o]


def _of_kind(objs: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def _container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    container: Obj = containers[0]
    return container


def _env(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def _keda_schema() -> Obj:
    schema: Obj = json.loads((DEPLOY / "schemas" / "keda-scaledobject.json").read_text(encoding="utf-8"))
    return schema


def _checkov_skips() -> list[str]:
    lines = (DEPLOY / "checkov-skips.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def _readme_section(title: str) -> str:
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def objs(overlay: str) -> list[Obj]:
    return _objects(overlay)


# --- it builds, and every object is valid ---------------------------------------------------------


def test_overlay_builds_into_namespaced_objects(overlay: str, objs: list[Obj]) -> None:
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "ScaledObject", "PodDisruptionBudget", "ConfigMap", "ServiceAccount"} <= kinds
    namespace = {"dev": "ladder-dev", "production": "ladder"}[overlay]
    assert {o["metadata"].get("namespace") for o in objs} == {namespace}
    for o in objs:
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ladder", o["metadata"]["name"]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(objs: list[Obj], version: str) -> None:
    checked = 0
    for o in objs:
        if o["kind"] in CRD_KINDS:  # kubernetes-validate has no schema for these; see their own tests
            continue
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{o['kind']} {o['metadata']['name']} is invalid for Kubernetes {version}: {e}")
        checked += 1
    assert checked >= 15


def test_every_scaledobject_validates_against_the_keda_schema(objs: list[Obj]) -> None:
    schema = _keda_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    scaled = _of_kind(objs, "ScaledObject")
    assert scaled
    for name, o in scaled.items():
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(o)]
        assert not errors, f"ScaledObject {name}: {errors}"


@pytest.mark.parametrize(
    ("mistake", "edit"),
    [
        ("a number where KEDA wants a string", lambda s: s["triggers"][0]["metadata"].update(threshold=32)),
        ("a misspelt field", lambda s: s.update(minReplicas=0)),
        ("a prometheus trigger without its query", lambda s: s["triggers"][0]["metadata"].pop("query")),
        ("an unknown fallback behavior", lambda s: s["fallback"].update(behavior="sometimes")),
        ("no target", lambda s: s.pop("scaleTargetRef")),
        ("an idle count other than 0", lambda s: s.update(idleReplicaCount=1)),
    ],
)
def test_the_keda_schema_rejects_common_mistakes(mistake: str, edit: Any) -> None:
    good = next(iter(_of_kind(_objects("dev"), "ScaledObject").values()))
    bad = json.loads(json.dumps(good))
    edit(bad["spec"])
    assert list(jsonschema.Draft202012Validator(_keda_schema()).iter_errors(bad)), mistake


def _rule_schema() -> Obj:
    schema: Obj = json.loads((DEPLOY / "schemas" / "prometheus-rule.json").read_text(encoding="utf-8"))
    return schema


def _alerts(objs: list[Obj]) -> dict[str, Obj]:
    rules = _of_kind(objs, "PrometheusRule")
    return {r["alert"]: r for o in rules.values() for g in o["spec"]["groups"] for r in g["rules"] if "alert" in r}


def test_the_prometheusrule_validates_against_its_schema(objs: list[Obj]) -> None:
    schema = _rule_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    rules = _of_kind(objs, "PrometheusRule")
    assert list(rules) == ["ladder"]
    for name, o in rules.items():
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(o)]
        assert not errors, f"PrometheusRule {name}: {errors}"


@pytest.mark.parametrize(
    ("mistake", "edit"),
    [
        ("a rule without its expression", lambda r: r.pop("expr")),
        ("an alert that is also a recording rule", lambda r: r.update(record="ladder:x")),
        ("a duration Prometheus cannot read", lambda r: r.update({"for": "5 minutes"})),
        ("severity beside the labels, not in them", lambda r: r.update(severity="warning")),
        ("a label value that is not a string", lambda r: r["labels"].update(page=True)),
    ],
)
def test_the_prometheus_rule_schema_rejects_common_mistakes(mistake: str, edit: Any) -> None:
    good = _of_kind(_objects("dev"), "PrometheusRule")["ladder"]
    bad = json.loads(json.dumps(good))
    edit(bad["spec"]["groups"][0]["rules"][0])
    assert list(jsonschema.Draft202012Validator(_rule_schema()).iter_errors(bad)), mistake


def test_the_alerts_read_only_metrics_ladder_serves(objs: list[Obj]) -> None:
    """A misspelt metric makes an alert that never fires: every name in an expression must be one that
    worker/metrics.py serves (a counter with its _total)."""
    source = (ROOT / "worker" / "metrics.py").read_text(encoding="utf-8")
    served = set(re.findall(r'"(ladder_[a-z_]+)"', source))
    alerts = _alerts(objs)
    assert {"LadderOutcomeStreamNearBound", "LadderWorkersStoppedClaiming", "LadderSinkCannotWrite",
            "LadderBatchOpenTooLong", "LadderBatchLaneNotRunning"} <= set(alerts)  # fmt: skip
    for name, rule in alerts.items():
        used = set(re.findall(r"\bladder_[a-z_]+", rule["expr"]))
        assert used, name
        unknown = {m for m in used if m not in served and m.removesuffix("_total") not in served}
        assert not unknown, f"{name} reads metrics no Ladder process serves: {sorted(unknown)}"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


# --- checkov --------------------------------------------------------------------------------------


def _checkov_reports(stdout: str) -> Iterator[Obj]:
    data = json.loads(stdout)
    yield from data if isinstance(data, list) else [data]


def test_checkov_finds_nothing_outside_the_skip_list(tmp_path: Path) -> None:
    checkov = shutil.which("checkov")
    if checkov is None:
        _missing_tool("checkov is not on PATH (.ci/run installs it in .venv-tools)")
    files = []
    for overlay in OVERLAYS:
        built = tmp_path / f"{overlay}.yaml"
        built.write_text(_built_text(overlay), encoding="utf-8")
        files.append(str(built))
    files.append(str(DEPLOY / "Dockerfile"))
    cmd = [checkov, "-f", *files, "--framework", "kubernetes", "dockerfile", "--compact", "--quiet"]
    cmd += ["--skip-download", "--output", "json", "--skip-check", ",".join(_checkov_skips())]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert out.stdout.strip(), f"checkov printed nothing (exit {out.returncode}):\n{out.stderr[-3000:]}"
    findings, passed = [], 0
    for report in _checkov_reports(out.stdout):
        summary = report["summary"]
        assert summary["parsing_errors"] == 0, f"checkov could not parse the {report['check_type']} files"
        passed += summary["passed"]
        for check in report["results"]["failed_checks"]:
            findings.append(f"{check['check_id']} {check['check_name']}: {check['resource']}")
    assert not findings, "checkov findings (fix them, or skip with a reason):\n" + "\n".join(sorted(findings))
    assert passed > 500, f"checkov ran only {passed} checks: did it read the manifests?"
    assert out.returncode == 0, out.stderr[-3000:]


def test_every_checkov_skip_is_explained_in_the_readme() -> None:
    skips = _checkov_skips()
    assert skips, "deploy/checkov-skips.txt lists no check"
    section = _readme_section("Checks")
    for check_id in skips:
        assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check_id), check_id
        assert check_id in section, f"{check_id} is skipped but not explained in deploy/README.md, ## Checks"


# --- what the schemas cannot say -------------------------------------------------------------------


def test_every_container_has_requests_and_limits(objs: list[Obj]) -> None:
    for name, d in _of_kind(objs, "Deployment").items():
        resources = _container(d).get("resources", {})
        for part in ("requests", "limits"):
            assert set(resources.get(part, {})) >= {"cpu", "memory"}, f"{name}: {part} {resources}"


def test_every_pod_runs_as_non_root_on_a_read_only_root_filesystem(objs: list[Obj]) -> None:
    for name, d in _of_kind(objs, "Deployment").items():
        pod = d["spec"]["template"]["spec"]
        sc = _container(d)["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True and sc["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == sc["runAsUser"] == 10001, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], name
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name


def test_the_writable_paths_are_empty_dirs(objs: list[Obj]) -> None:
    for name, d in _of_kind(objs, "Deployment").items():
        pod = d["spec"]["template"]["spec"]
        container = _container(d)
        empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        ladder_home = _env(container)["LADDER_HOME"]["value"]
        assert mounts.get("/tmp") in empty_dirs, name
        assert mounts.get(ladder_home) in empty_dirs, f"{name}: LADDER_HOME {ladder_home} is not an emptyDir"


def test_no_secret_and_no_literal_secret_value_in_the_manifests(overlay: str, objs: list[Obj]) -> None:
    assert not _of_kind(objs, "Secret"), "a Secret in the manifests: create it with kubectl (deploy/README.md)"
    text = _built_text(overlay)
    for var in SECRET_VARS:
        literal = re.search(rf"name: {var}\n\s*value:", text)
        assert literal is None, f"{var} has a literal value in the {overlay} manifests"
    assert not re.search(r"sk-[A-Za-z0-9_-]{16,}|AIza[0-9A-Za-z_-]{20,}|://[^/\s:@]+:[^/\s@]+@", text)
    for name, d in _of_kind(objs, "Deployment").items():
        for var, entry in _env(_container(d)).items():
            if var in SECRET_VARS:
                assert "value" not in entry, f"{name}: {var}"
                assert entry["valueFrom"]["secretKeyRef"]["name"] in ("ladder-provider-keys", "ladder-connections")


def test_provider_keys_reach_only_the_processes_that_call_providers(objs: list[Obj]) -> None:
    for name, d in _of_kind(objs, "Deployment").items():
        env = _env(_container(d))
        calls_providers = d["metadata"]["labels"]["ladder/role"] in PROVIDER_ROLES
        for var in PROVIDER_KEYS:
            assert (var in env) == calls_providers, f"{name}: {var}"
            if calls_providers:
                ref = env[var]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": "ladder-provider-keys", "key": var, "optional": True}, name
        assert ("CLICKHOUSE_URL" in env) == (name == "ladder-sink"), name
        assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"]["optional"] is False, name


def test_every_tier_has_a_deployment_and_a_scaledobject(objs: list[Obj]) -> None:
    tiers = load_policies(DEPLOY / "base" / "policies.toml").tier_names
    deployments = _of_kind(objs, "Deployment")
    scaled = _of_kind(objs, "ScaledObject")
    by_tier = {tier: name for name, d in deployments.items() if (tier := _flag(_container(d)["args"], "--tier"))}
    assert sorted(by_tier) == sorted(tiers), "tier Deployments differ from the tiers in deploy/base/policies.toml"
    queues = {**by_tier, CLASSIFY_QUEUE: "ladder-classifier", SHADOW_QUEUE: "ladder-shadow"}
    for queue, name in queues.items():
        assert deployments[name]["metadata"]["labels"]["ladder/queue"] == queue
        assert name in scaled, f"no ScaledObject for {name}"
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        queries = [t["metadata"]["query"] for t in spec["triggers"]]
        assert f'sum(ladder_queue_ready_jobs{{queue="{queue}"}})' in queries, name
        assert f'sum(ladder_queue_in_progress_jobs{{queue="{queue}"}})' in queries, name
    assert set(scaled) == set(queues.values()), "a ScaledObject for something that is not a queue consumer"


def test_the_policies_configmap_holds_the_packaged_default_tiers(objs: list[Obj]) -> None:
    configmaps = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("ladder-policies")]
    assert len(configmaps) == 1
    mounted = configmaps[0]["data"]["policies.toml"]
    assert mounted == (DEPLOY / "base" / "policies.toml").read_text(encoding="utf-8")
    packaged = tomllib.loads((ROOT / "policies" / "default.toml").read_text(encoding="utf-8"))
    assert tomllib.loads(mounted)["tiers"] == packaged["tiers"], (
        "deploy/base/policies.toml's tiers differ from policies/default.toml: copy the file again, and add or "
        "remove the tier Deployments and ScaledObjects to match"
    )
    for name, d in _of_kind(objs, "Deployment").items():
        pod, container = d["spec"]["template"]["spec"], _container(d)
        volume = next(v for v in pod["volumes"] if "configMap" in v)
        assert volume["configMap"]["name"] == configmaps[0]["metadata"]["name"], name
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
        assert mount["readOnly"] is True, name
        path = volume["configMap"]["items"][0]["path"]
        assert _env(container)["LADDER_POLICIES"]["value"] == f"{mount['mountPath']}/{path}", name


def test_probes_and_scraping_use_the_metrics_port(objs: list[Obj]) -> None:
    for name, d in _of_kind(objs, "Deployment").items():
        container = _container(d)
        assert _flag(container["args"], "--metrics-port") == str(METRICS_PORT), name
        assert {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"} in container["ports"], name
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}, name
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, name
        annotations = d["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/port"] == str(METRICS_PORT), name


def test_workers_get_a_few_seconds_more_than_their_grace_period(objs: list[Obj]) -> None:
    for name, d in _of_kind(objs, "Deployment").items():
        if d["metadata"]["labels"]["ladder/role"] != "worker":
            continue
        args = _container(d)["args"]
        grace = int(_flag(args, "--grace-period") or 0)
        assert grace > 0 and _flag(args, "--concurrency"), name
        termination = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace + 2 <= termination <= grace + 15, f"{name}: {termination} s for a {grace} s grace period"


def test_autoscaling_leaves_replicas_to_keda_and_never_scales_the_exporter(overlay: str, objs: list[Obj]) -> None:
    deployments, scaled = _of_kind(objs, "Deployment"), _of_kind(objs, "ScaledObject")
    for name, d in deployments.items():
        if name in NOT_AUTOSCALED:
            assert name not in scaled, name
            assert d["spec"]["replicas"] >= 1, name
        else:
            assert "replicas" not in d["spec"], f"{name}: KEDA owns the replica count"
    assert deployments["ladder-exporter"]["spec"]["replicas"] == 1
    assert deployments["ladder-exporter"]["spec"]["strategy"]["type"] == "Recreate"
    for name, o in scaled.items():
        spec = o["spec"]
        assert spec["minReplicaCount"] == 0 and 1 <= spec["maxReplicaCount"] <= 20, name
        assert spec["fallback"]["behavior"] == "currentReplicasIfHigher", name
        scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert scale_down["stabilizationWindowSeconds"] >= 60, name
        assert scale_down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}], name
        for trigger in spec["triggers"]:
            assert trigger["type"] == "prometheus", name
            assert trigger["metadata"]["ignoreNullValues"] == "false", f"{name}: a lost exporter would read as 0"
        if overlay == "dev":
            assert spec["maxReplicaCount"] <= 2, name


def test_the_batch_lane_is_one_process_with_the_provider_keys_and_no_autoscaler(objs: list[Obj]) -> None:
    lane = _of_kind(objs, "Deployment")["ladder-batches"]
    container = _container(lane)
    assert container["args"] == ["batches", "run", "--metrics-port", str(METRICS_PORT)]
    # One replica, stopped before its successor starts: the lease in Redis would make a second wait.
    assert lane["spec"]["replicas"] == 1 and lane["spec"]["strategy"] == {"type": "Recreate"}
    assert "ladder-batches" not in _of_kind(objs, "ScaledObject")
    assert set(PROVIDER_KEYS) <= set(_env(container)) and "CLICKHOUSE_URL" not in _env(container)
    # SIGTERM ends the pass in hand (an upload, a large batch's results): more than a worker's 30 s.
    assert 60 <= lane["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] <= 300


def test_the_sink_strategy_follows_its_clickhouse(overlay: str, objs: list[Obj]) -> None:
    sink = _of_kind(objs, "Deployment")["ladder-sink"]
    ref = _env(_container(sink))["CLICKHOUSE_URL"]["valueFrom"]["secretKeyRef"]
    if overlay == "dev":  # chdb possible: one sink, never two at once
        assert sink["spec"]["strategy"] == {"type": "Recreate"}
        assert sink["spec"]["replicas"] == 1 and ref["optional"] is True
    else:  # a ClickHouse server: several sinks share the consumer group
        assert sink["spec"]["strategy"]["type"] == "RollingUpdate"
        assert sink["spec"]["replicas"] >= 2 and ref["optional"] is False


def test_every_deployment_has_one_budget_that_never_blocks_a_drain(objs: list[Obj]) -> None:
    budgets = _of_kind(objs, "PodDisruptionBudget")
    for name, d in _of_kind(objs, "Deployment").items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets.values() if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(matching) == 1, f"{name}: {len(matching)} PodDisruptionBudgets"
        spec = matching[0]["spec"]
        assert spec.get("maxUnavailable") == 1 and "minAvailable" not in spec, name
        assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow", name


def test_each_overlay_names_its_own_image(overlay: str, objs: list[Obj]) -> None:
    images = {_container(d)["image"] for d in _of_kind(objs, "Deployment").values()}
    assert len(images) == 1, images
    tag = images.pop().rsplit(":", 1)[1]
    if overlay == "production":
        assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"production runs a pinned release, not {tag}"
    else:
        assert tag == "dev"


def test_production_spreads_pods_over_zones_and_nodes() -> None:
    for name, d in _of_kind(_objects("production"), "Deployment").items():
        keys = {c["topologyKey"] for c in d["spec"]["template"]["spec"]["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, name
