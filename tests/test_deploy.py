"""The deployment artefacts stay correct and in step with the code, offline.

Every Kustomize target is rendered with ``kubectl kustomize`` and each object is validated against
the Kubernetes OpenAPI schemas (``kubernetes-validate``, strict). Custom resources (Strimzi, KEDA,
Prometheus Operator) have no schema there, so their required fields are checked here.

Wiring rule: every field of ``VigilSettings`` must reach the worker as a ConfigMap entry or a
Secret reference. A nested settings object (``topics``, ``batch``, ...) counts as wired when either
its JSON variable (``VIGIL_ALERTING``, spelling out every field) or each leaf
(``VIGIL_TOPICS__READINGS``, ...) is. Two exceptions, both deliberate: ``VIGIL_LOCAL__*`` (only
``vigil up`` reads it) and the Kafka SASL/TLS settings, which must be wired exactly when
``VIGIL_KAFKA_SECURITY_PROTOCOL`` uses them.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import os
import re
import shutil
import subprocess
import tomllib
import typing
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, SecretStr

from vigil.settings import CONFIG_FILE_VARIABLE, ENV_PREFIX, VigilSettings, load_settings
from vigil.topics import topic_names

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.30"  # the oldest Kubernetes the manifests promise to work with
TARGETS = ["base", "overlays/dev", "overlays/prod", "overlays/gpu"]
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
BUILT_IN_APIS = {"v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1"}
CUSTOM_KINDS = {
    "ServiceMonitor",
    "KafkaTopic",
    "KafkaUser",
    "ScaledObject",
    "TriggerAuthentication",
    "PrometheusRule",
}
STRIMZI_API = "kafka.strimzi.io/v1"  # Strimzi 0.49 and newer (1.0 serves only v1)

DEFAULTED_ON_PURPOSE = {
    # Where `vigil up` starts Kafka and Redis on a laptop. A cluster sets VIGIL_KAFKA_BOOTSTRAP
    # and VIGIL_REDIS_URL instead, so nothing in a pod ever reads these.
    "VIGIL_LOCAL": "local development only",
}
PROTOCOLS_NEEDING = {
    "VIGIL_KAFKA_SASL_MECHANISM": {"SASL_PLAINTEXT", "SASL_SSL"},
    "VIGIL_KAFKA_SASL_USERNAME": {"SASL_PLAINTEXT", "SASL_SSL"},
    "VIGIL_KAFKA_SASL_PASSWORD": {"SASL_PLAINTEXT", "SASL_SSL"},
    "VIGIL_KAFKA_SSL_CAFILE": {"SSL", "SASL_SSL"},
}
SECRET_BY_POLICY = {
    "VIGIL_REDIS_URL": "may carry the Redis password",
    "VIGIL_WEBHOOKS": "Slack-style webhook URLs embed tokens",
}
SECRET_PLACEHOLDERS = {
    "VIGIL_REDIS_URL": "redis://:placeholder@redis:6379/0",
    "VIGIL_WEBHOOKS": '[{"url": "https://hooks.example.com/placeholder"}]',
}
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


# ---- rendering ----------------------------------------------------------------------------------
@functools.cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    done = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s" / target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"kubectl kustomize {target} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(target: str, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in render(target) if doc["kind"] == kind]


def the(target: str, kind: str) -> dict[str, Any]:
    found = objects(target, kind)
    assert len(found) == 1, f"{target}: expected one {kind}, found {len(found)}"
    return found[0]


def worker_pod(target: str) -> dict[str, Any]:
    return the(target, "Deployment")["spec"]["template"]["spec"]


def worker_container(target: str) -> dict[str, Any]:
    (container,) = [c for c in worker_pod(target)["containers"] if c["name"] == "worker"]
    return container


def pod_templates(target: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for doc in render(target):
        if doc["kind"] in WORKLOAD_KINDS:
            found.append((doc["metadata"]["name"], doc["spec"]["template"]))
        elif doc["kind"] == "CronJob":
            found.append((doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]))
    return found


def worker_environment(target: str) -> dict[str, tuple[str, Any]]:
    """Variable -> ("value", text) | ("secret", secretKeyRef) | (other source kind, ref)."""
    container = worker_container(target)
    configmaps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in objects(target, "ConfigMap")}
    env: dict[str, tuple[str, Any]] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{target}: envFrom only from ConfigMaps, got {source}"
        name = source["configMapRef"]["name"]
        assert name in configmaps, f"{target}: envFrom names a missing ConfigMap {name}"
        env.update({k: ("value", v) for k, v in configmaps[name].items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = ("value", item["value"])
        else:
            ((kind, ref),) = item["valueFrom"].items()
            env[item["name"]] = ("secret" if kind == "secretKeyRef" else kind, ref)
    return env


def literal_values(target: str) -> dict[str, str]:
    return {k: v for k, (kind, v) in worker_environment(target).items() if kind == "value"}


# ---- settings model walks ----------------------------------------------------------------------
def nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def known_variables(model: type[BaseModel] = VigilSettings, prefix: str = ENV_PREFIX) -> set[str]:
    names = {CONFIG_FILE_VARIABLE} if model is VigilSettings else set()
    for field_name, field in model.model_fields.items():
        variable = prefix + field_name.upper()
        names.add(variable)
        if (inner := nested_model(field.annotation)) is not None:
            names |= known_variables(inner, variable + "__")
    return names


def secret_settings(model: type[BaseModel] = VigilSettings, prefix: str = ENV_PREFIX) -> set[str]:
    names = set()
    for field_name, field in model.model_fields.items():
        variable = prefix + field_name.upper()
        if is_secret(field.annotation):
            names.add(variable)
        elif (inner := nested_model(field.annotation)) is not None:
            names |= secret_settings(inner, variable + "__")
    return names


def unwired_settings(
    env: dict[str, tuple[str, Any]],
    model: type[BaseModel] = VigilSettings,
    prefix: str = ENV_PREFIX,
) -> list[str]:
    missing = []
    for field_name, field in model.model_fields.items():
        variable = prefix + field_name.upper()
        inner = nested_model(field.annotation)
        if any(variable == p or variable.startswith(p + "__") for p in DEFAULTED_ON_PURPOSE):
            continue
        if variable in PROTOCOLS_NEEDING:
            continue  # checked against the security protocol in its own test
        if variable in env:
            kind, value = env[variable]
            if inner is not None and kind == "value":
                spelled = set(json.loads(value))
                if lacking := sorted(set(inner.model_fields) - spelled):
                    missing.append(f"{variable} (its JSON lacks {lacking})")
            continue
        if inner is None:
            missing.append(variable)
        else:
            missing.extend(unwired_settings(env, inner, variable + "__"))
    return missing


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


def settings_in_pod(target: str, monkeypatch: pytest.MonkeyPatch) -> VigilSettings:
    """What the worker would load: ConfigMap values plus placeholders for the Secrets."""
    for name, (kind, value) in worker_environment(target).items():
        if not name.startswith(ENV_PREFIX):
            continue
        assert kind in {"value", "secret"}, f"{target}: {name} comes from {kind}"
        monkeypatch.setenv(name, value if kind == "value" else SECRET_PLACEHOLDERS.get(name, "x"))
    return load_settings()


# ---- schemas and custom resources ----------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_objects_validate_against_kubernetes_schemas(target: str) -> None:
    checked = set()
    for doc in render(target):
        assert DNS_SUBDOMAIN.match(doc["metadata"]["name"]), doc["metadata"]["name"]
        if doc["kind"] in CUSTOM_KINDS:
            continue  # no schema in kubernetes-validate; see test_custom_resources_...
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(
                f"{target}: {doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}"
            )
        checked.add(doc["kind"])
    needed = {"Deployment", "ConfigMap", "Service", "PodDisruptionBudget", "NetworkPolicy"}
    assert needed <= checked


def test_schema_validation_rejects_a_broken_deployment() -> None:
    """Guard against a validator that accepts anything (e.g. a schema lookup gone lax)."""
    broken = copy.deepcopy(the("base", "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def _check_custom_resource(target: str, doc: dict[str, Any]) -> None:
    kind, spec = doc["kind"], doc.get("spec", {})
    deployments = {d["metadata"]["name"] for d in objects(target, "Deployment")}
    if kind == "ServiceMonitor":
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert spec["selector"]["matchLabels"]
        assert spec["endpoints"] and all(
            "port" in e or "targetPort" in e for e in spec["endpoints"]
        )
    elif kind in {"KafkaTopic", "KafkaUser"}:
        assert doc["apiVersion"] == STRIMZI_API
        assert doc["metadata"]["labels"]["strimzi.io/cluster"]
        if kind == "KafkaTopic":
            assert isinstance(spec["partitions"], int) and spec["partitions"] >= 1
            assert isinstance(spec["replicas"], int) and spec["replicas"] >= 1
            assert all(isinstance(v, str | int) for v in spec.get("config", {}).values())
        else:
            assert spec["authentication"]["type"] in {"tls", "scram-sha-512", "tls-external"}
    elif kind == "ScaledObject":
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        assert spec["scaleTargetRef"]["name"] in deployments
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["triggers"] and all(t["type"] and t["metadata"] for t in spec["triggers"])
        auth_names = {a["metadata"]["name"] for a in objects(target, "TriggerAuthentication")}
        for trigger in spec["triggers"]:
            if "authenticationRef" in trigger:
                assert trigger["authenticationRef"]["name"] in auth_names
    elif kind == "PrometheusRule":
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert spec["groups"] and all(g["name"] and g["rules"] for g in spec["groups"])
    elif kind == "TriggerAuthentication":
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        assert spec.get("secretTargetRef") or spec.get("env")
        for ref in spec.get("secretTargetRef", []):
            assert ref["parameter"] and ref["name"] and ref["key"]
        for ref in spec.get("env", []):
            assert ref["parameter"] and ref["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_custom_resources_have_their_required_fields(target: str) -> None:
    for doc in render(target):
        if doc["kind"] in CUSTOM_KINDS:
            _check_custom_resource(target, doc)
        else:
            assert doc["apiVersion"] in BUILT_IN_APIS, f"{doc['kind']}: a resource nobody checks"


# ---- security ------------------------------------------------------------------------------------
def dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\S+)", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    return int(users[-1].split(":")[0])


@pytest.mark.parametrize("target", TARGETS)
def test_pod_templates_are_locked_down(target: str) -> None:
    accounts = {a["metadata"]["name"]: a for a in objects(target, "ServiceAccount")}
    templates = pod_templates(target)
    assert templates
    for name, template in templates:
        pod = template["spec"]
        assert pod.get("automountServiceAccountToken") is False, name
        account = accounts[pod["serviceAccountName"]]
        assert account.get("automountServiceAccountToken") is False, name
        pod_context = pod.get("securityContext", {})
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = {**pod_context, **container.get("securityContext", {})}
            where = f"{target}: {name}/{container['name']}"
            assert context.get("runAsNonRoot") is True, where
            assert context.get("runAsUser") == dockerfile_uid(), where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("privileged") is not True, where
            assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            capabilities = context.get("capabilities", {})
            assert "ALL" in capabilities.get("drop", []) and not capabilities.get("add"), where
            (tmp,) = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert "emptyDir" in volumes[tmp["name"]], f"{where}: /tmp must be an emptyDir"
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert "memory" in resources.get("limits", {}), where


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_come_from_secret_references_only(target: str) -> None:
    secret_like = secret_settings() | set(SECRET_BY_POLICY)
    assert {"VIGIL_KAFKA_SASL_PASSWORD", "VIGIL_WEBHOOK_SIGNING_KEY"} <= secret_like
    for doc in objects(target, "ConfigMap"):
        for key, value in doc.get("data", {}).items():
            assert key not in secret_like, f"{target}: secret setting {key} in a ConfigMap"
            assert not re.search(r"PASSWORD|SECRET|TOKEN|SIGNING_KEY", key), key
            assert not re.search(r"://[^/@\s]*:[^/@\s]+@", value), f"{key} embeds a credential"
    assert not objects(target, "Secret"), "Secret values do not belong in the repository"
    for variable, (kind, _) in worker_environment(target).items():
        if variable in secret_like:
            assert kind == "secret", f"{target}: {variable} must come from a secretKeyRef"
    container = worker_container(target)
    for word in container.get("args", []) + container.get("command", []):
        assert not re.search(r"password|secret|token", word, re.IGNORECASE), word


# ---- settings wiring -----------------------------------------------------------------------------
def test_defaulted_on_purpose_names_real_settings() -> None:
    assert set(DEFAULTED_ON_PURPOSE) <= known_variables()
    assert set(PROTOCOLS_NEEDING) | set(SECRET_BY_POLICY) <= known_variables()


@pytest.mark.parametrize("target", TARGETS)
def test_every_setting_the_app_reads_is_wired(target: str) -> None:
    env = worker_environment(target)
    missing = unwired_settings(env)
    assert not missing, f"{target}: settings not in the ConfigMap or a Secret ref: {missing}"
    unknown = {name for name in env if name.startswith(ENV_PREFIX)} - known_variables()
    assert not unknown, f"{target}: variables no setting reads (typo?): {sorted(unknown)}"


@pytest.mark.parametrize("target", TARGETS)
def test_kafka_auth_settings_match_the_security_protocol(target: str) -> None:
    env = worker_environment(target)
    protocol = literal_values(target)["VIGIL_KAFKA_SECURITY_PROTOCOL"]
    for variable, protocols in PROTOCOLS_NEEDING.items():
        assert (variable in env) == (protocol in protocols), f"{target}: {variable} vs {protocol}"
    if "VIGIL_KAFKA_SSL_CAFILE" in env:
        cafile = Path(literal_values(target)["VIGIL_KAFKA_SSL_CAFILE"])
        volumes = {v["name"]: v for v in worker_pod(target).get("volumes", [])}
        mounts = [
            m
            for m in worker_container(target).get("volumeMounts", [])
            if cafile.parent == Path(m["mountPath"])
        ]
        assert len(mounts) == 1, f"{target}: nothing mounted at {cafile.parent}"
        secret = volumes[mounts[0]["name"]]["secret"]
        files = [item["path"] for item in secret.get("items", [])] or [cafile.name]
        assert cafile.name in files


@pytest.mark.parametrize("target", TARGETS)
def test_the_configmap_loads_as_valid_settings(
    target: str, clean_environment: pytest.MonkeyPatch
) -> None:
    settings = settings_in_pod(target, clean_environment)
    container = worker_container(target)
    (port,) = [p for p in container["ports"] if p["name"] == "http"]
    assert port["containerPort"] == settings.web_port
    assert settings.kafka_bootstrap is not None and settings.redis_url is not None
    gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
    assert (settings.device == "cuda") == (gpus is not None), target


# ---- Kafka topics and autoscaling ----------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_kafka_topics_match_the_settings(
    target: str, clean_environment: pytest.MonkeyPatch
) -> None:
    settings = settings_in_pod(target, clean_environment)
    topics = objects(target, "KafkaTopic")
    assert sorted(t["spec"]["topicName"] for t in topics) == sorted(topic_names(settings))
    assert {t["spec"]["partitions"] for t in topics} == {settings.topics.partitions}
    for topic in topics:
        isr = int(topic["spec"].get("config", {}).get("min.insync.replicas", 1))
        assert isr <= topic["spec"]["replicas"], topic["metadata"]["name"]
        # what `vigil up`/the worker would create matches what Strimzi creates
        assert topic["spec"]["replicas"] == settings.topics.replication_factor
    strimzi = [d for d in render(target) if d["kind"] in {"KafkaTopic", "KafkaUser"}]
    (cluster,) = {d["metadata"]["labels"]["strimzi.io/cluster"] for d in strimzi}
    for host in settings.bootstrap.split(","):  # Strimzi's bootstrap Service of that cluster
        assert host.startswith(f"{cluster}-kafka-bootstrap:"), host


@pytest.mark.parametrize("target", [t for t in TARGETS if t != "overlays/dev"])
def test_keda_scales_on_the_groups_lag_up_to_the_partition_count(
    target: str, clean_environment: pytest.MonkeyPatch
) -> None:
    settings = settings_in_pod(target, clean_environment)
    scaled = the(target, "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    (readings,) = [
        t
        for t in objects(target, "KafkaTopic")
        if t["spec"]["topicName"] == settings.topics.readings
    ]
    assert 1 <= scaled["spec"]["maxReplicaCount"] <= readings["spec"]["partitions"]
    if target != "overlays/gpu":  # the GPU overlay caps lower on purpose (test below)
        assert scaled["spec"]["maxReplicaCount"] == readings["spec"]["partitions"]
    assert trigger["type"] == "kafka"
    assert meta["consumerGroup"] == settings.app_id
    # no `topic`: KEDA sums the lag over every topic the group consumes (group topics too)
    assert "topic" not in meta and "topics" not in meta
    # the worker reads a partition without a committed offset from the start: so does KEDA
    assert meta["offsetResetPolicy"] == "earliest"
    assert meta["bootstrapServers"] == settings.kafka_bootstrap
    assert int(meta["lagThreshold"]) > 0
    assert meta.get("allowIdleConsumers", "false") == "false"
    # A rollout must not add a consumer beyond the partitions either.
    assert the(target, "Deployment")["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    assert "replicas" not in the(target, "Deployment")["spec"], "KEDA owns the replica count"

    protocol = settings.kafka_security_protocol
    assert meta.get("tls", "disable") == (
        "enable" if protocol in {"SSL", "SASL_SSL"} else "disable"
    )
    if protocol.startswith("SASL"):
        assert settings.kafka_sasl_mechanism is not None
        assert meta["sasl"] == KEDA_SASL[settings.kafka_sasl_mechanism]
        (auth,) = [
            a
            for a in objects(target, "TriggerAuthentication")
            if a["metadata"]["name"] == trigger["authenticationRef"]["name"]
        ]
        by_parameter = {r["parameter"]: r for r in auth["spec"].get("secretTargetRef", [])}
        password_ref = worker_environment(target)["VIGIL_KAFKA_SASL_PASSWORD"][1]
        assert (by_parameter["password"]["name"], by_parameter["password"]["key"]) == (
            password_ref["name"],
            password_ref["key"],
        )
        (username,) = [e for e in auth["spec"]["env"] if e["parameter"] == "username"]
        assert username["name"] == "VIGIL_KAFKA_SASL_USERNAME"
        assert username["containerName"] == "worker"
        for user in objects(target, "KafkaUser"):  # Strimzi: Secret and SASL user = its name
            assert user["metadata"]["name"] == settings.kafka_sasl_username
            assert user["metadata"]["name"] == password_ref["name"]
    else:
        assert "sasl" not in meta and "authenticationRef" not in trigger


def test_gpu_overlay_has_its_own_replica_cap_and_lag_threshold() -> None:
    gpu = the("overlays/gpu", "ScaledObject")["spec"]
    prod = the("overlays/prod", "ScaledObject")["spec"]
    assert gpu["maxReplicaCount"] < prod["maxReplicaCount"]
    gpu_lag = int(gpu["triggers"][0]["metadata"]["lagThreshold"])
    assert gpu_lag > int(prod["triggers"][0]["metadata"]["lagThreshold"])
    assert gpu["minReplicaCount"] <= gpu["maxReplicaCount"]


def test_the_strimzi_cluster_name_is_one_setting(tmp_path: Path) -> None:
    """Renaming the cluster in deploy/k8s/base/strimzi-cluster.yaml renames it everywhere."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    copy_root = tmp_path / "k8s"
    shutil.copytree(DEPLOY / "k8s", copy_root)
    source = copy_root / "base" / "strimzi-cluster.yaml"
    text = source.read_text()
    original = yaml.safe_load(text)["data"]["cluster"]
    assert text.count(f"cluster: {original}") == 1
    source.write_text(text.replace(f"cluster: {original}", "cluster: kafka-east"))
    for target in TARGETS:
        done = subprocess.run(
            [kubectl, "kustomize", str(copy_root / target)], capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert original not in done.stdout, f"{target}: {original!r} is still named somewhere"
        docs = [d for d in yaml.safe_load_all(done.stdout) if d]
        assert not [d for d in docs if d["metadata"]["name"] == "vigil-strimzi-cluster"]
        strimzi = [d for d in docs if d["apiVersion"].startswith("kafka.strimzi.io/")]
        assert {d["metadata"]["labels"]["strimzi.io/cluster"] for d in strimzi} == {"kafka-east"}
        (settings_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
        bootstrap = settings_map["data"]["VIGIL_KAFKA_BOOTSTRAP"]
        assert bootstrap.startswith("kafka-east-kafka-bootstrap:"), bootstrap
        for scaled in (d for d in docs if d["kind"] == "ScaledObject"):
            assert scaled["spec"]["triggers"][0]["metadata"]["bootstrapServers"] == bootstrap
        if settings_map["data"]["VIGIL_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL":
            assert "secretName: kafka-east-cluster-ca-cert" in done.stdout
            assert "name: kafka-east-cluster-ca-cert" in done.stdout  # KEDA's CA reference


def test_dev_runs_one_fixed_replica_without_keda() -> None:
    assert not objects("overlays/dev", "ScaledObject")
    assert the("overlays/dev", "Deployment")["spec"]["replicas"] == 1


@pytest.mark.parametrize("target", TARGETS)
def test_disruption_budget_lets_a_node_drain(target: str) -> None:
    pdb = the(target, "PodDisruptionBudget")["spec"]
    deployment = the(target, "Deployment")
    assert (
        pdb["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    scaled = objects(target, "ScaledObject")
    fewest = scaled[0]["spec"]["minReplicaCount"] if scaled else deployment["spec"]["replicas"]
    if "minAvailable" in pdb:
        assert isinstance(pdb["minAvailable"], int) and pdb["minAvailable"] < fewest
    else:
        assert pdb["maxUnavailable"] >= 1
    if target == "overlays/prod":
        assert "minAvailable" in pdb


@pytest.mark.parametrize("target", TARGETS)
def test_shutdown_hands_partitions_over(target: str) -> None:
    pod = worker_pod(target)
    container = worker_container(target)
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        pause = int(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep"
        pause = int(command[1])
    assert pause >= 5
    assert pod["terminationGracePeriodSeconds"] >= pause + 30, "Faust needs time after SIGTERM"
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        assert container[probe]["httpGet"]["path"] == path
        assert container[probe]["httpGet"]["port"] in {"http", 6066}


# ---- networking and monitoring -------------------------------------------------------------------
def rule_ports(rules: list[dict[str, Any]]) -> set[tuple[int, str]]:
    return {(p["port"], p.get("protocol", "TCP")) for r in rules for p in r.get("ports", [])}


@pytest.mark.parametrize("target", TARGETS)
def test_network_policy_allows_only_what_the_worker_needs(
    target: str, clean_environment: pytest.MonkeyPatch
) -> None:
    settings = settings_in_pod(target, clean_environment)
    policy = the(target, "NetworkPolicy")["spec"]
    labels = the(target, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    egress = rule_ports(policy["egress"])
    kafka_ports = {int(host.rsplit(":", 1)[1]) for host in settings.bootstrap.split(",")}
    assert {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (443, "TCP")} <= egress
    assert {(port, "TCP") for port in kafka_ports} <= egress
    assert rule_ports(policy["ingress"]) == {(settings.web_port, "TCP")}
    for rule in policy["ingress"]:
        assert rule.get("from"), "ingress must name who may connect"


@pytest.mark.parametrize("target", TARGETS)
def test_prometheus_scrapes_the_worker_metrics(target: str) -> None:
    service = the(target, "Service")
    monitor = the(target, "ServiceMonitor")
    pod_labels = the(target, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    port_names = {p["name"] for p in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"


# ---- GPU -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_only_the_gpu_overlay_asks_for_a_gpu(target: str) -> None:
    container = worker_container(target)
    pod = worker_pod(target)
    env = literal_values(target)
    resources = container["resources"]
    image_tag = container["image"].rsplit(":", 1)[1]
    if target == "overlays/gpu":
        assert int(resources["requests"]["nvidia.com/gpu"]) == 1
        assert int(resources["limits"]["nvidia.com/gpu"]) == 1
        assert env["VIGIL_DEVICE"] == "cuda"
        assert image_tag.endswith("-cuda")
        assert pod["nodeSelector"]
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    else:
        assert "nvidia.com/gpu" not in resources.get("limits", {})
        assert env["VIGIL_DEVICE"] != "cuda"
        assert not image_tag.endswith("-cuda")


# ---- Dockerfile, .dockerignore, Compose ----------------------------------------------------------
def dockerfile_stages() -> list[tuple[str, list[str]]]:
    stages: list[tuple[str, list[str]]] = []
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.upper().startswith("FROM "):
            match = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
            assert match
            stages.append((match.group(1) or "", []))
        elif stages and line and not line.startswith("#"):
            stages[-1][1].append(line)
    return stages


def packaged_directories() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return {
        p.name
        for p in ROOT.iterdir()
        if (p / "__init__.py").exists() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)
    }


def test_dockerfile_is_multi_stage_non_root_and_runs_the_worker() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2 and all(name for name, _ in stages)
    _, final = stages[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert dockerfile_uid() >= 10000
    assert any(re.match(rf"COPY --from={stages[0][0]}\s", line) for line in final)
    assert 'ENTRYPOINT ["vigil"]' in final and 'CMD ["worker"]' in final
    assert f"EXPOSE {VigilSettings.model_fields['web_port'].default}" in final
    text = (DEPLOY / "Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert '--index-url "$TORCH_INDEX_URL"' in text and "cuda)" in text


def test_dockerfile_copies_every_package_and_dockerignore_keeps_them() -> None:
    copied = {
        source.rstrip("/")
        for _, lines in dockerfile_stages()
        for line in lines
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    }
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = packaged_directories() | {"pyproject.toml", pyproject["project"]["readme"]}
    assert needed <= copied, f"not copied into the image: {sorted(needed - copied)}"

    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        result = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            if fnmatch.fnmatch(path, pattern.lstrip("!").rstrip("/")):
                result = not negated
        return result

    assert not [path for path in needed if ignored(path)]
    assert ignored(".venv") and ignored(".git") and ignored(".vigil")


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_runs_kafka_redis_and_a_hardened_worker(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    assert services["redis"]["image"] == "redis:7"
    kafka = services["kafka"]["environment"]
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    worker = services["worker"]
    env = {k: str(v) for k, v in worker["environment"].items()}
    assert set(env) <= known_variables()
    for name, value in env.items():
        clean_environment.setenv(name, value)
    settings = load_settings()
    advertised = {
        listener.split("://", 1)[1] for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    assert settings.kafka_bootstrap in advertised
    assert settings.redis_url is not None
    assert settings.redis_url.split("//", 1)[1].split(":", 1)[0] in services
    assert worker["command"] == ["worker"]
    assert f"127.0.0.1:{settings.web_port}:{settings.web_port}" in worker["ports"]
    assert worker["user"].split(":")[0] == str(dockerfile_uid())
    assert worker["read_only"] is True and worker["cap_drop"] == ["ALL"]
    assert any(mount.startswith("/tmp") for mount in worker["tmpfs"])
    build = worker["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"


# ---- Grafana dashboard ---------------------------------------------------------------------------
CONTRACT_METRICS = {
    "vigil_events_total",
    "vigil_event_to_prediction_seconds",
    "vigil_batch_size",
    "vigil_dead_letters_total",
    "vigil_alerts_total",
    "vigil_model_version_info",
    "vigil_training_steps_total",
    "vigil_consumer_lag",
    "vigil_event_loop_lag_seconds",
    "vigil_inference_queue_depth",
    "vigil_intake_held",
    "vigil_outage",
    "vigil_keys_in_memory",
    "vigil_webhook_deliveries_total",
    "vigil_webhook_retries_throttled_total",
    "vigil_drift_events_total",
}


def exposed_metric_names() -> set[str]:
    """Sample names the worker's /metrics can serve, from the real metric definitions."""
    import vigil.alerting.delivery  # noqa: F401  (registers the webhook counters)
    from vigil.stream.metrics import VigilMetrics

    names = set()
    for family in VigilMetrics().registry.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
    return names


def dashboard_panels() -> list[dict[str, Any]]:
    board = json.loads((DEPLOY / "grafana" / "vigil-dashboard.json").read_text())
    return [p for p in board["panels"] if p["type"] != "row"]


def test_dashboard_queries_only_metrics_the_worker_exposes() -> None:
    exposed = exposed_metric_names()
    queried = {
        name
        for panel in dashboard_panels()
        for target in panel["targets"]
        for name in re.findall(r"\bvigil_[a-z_]+\b", target["expr"])
    }
    assert queried and not queried - exposed, f"unknown metrics: {sorted(queried - exposed)}"
    covered = {name.removesuffix("_bucket") for name in queried}
    assert not CONTRACT_METRICS - covered, f"not on the dashboard: {CONTRACT_METRICS - covered}"


def test_dashboard_panels_are_well_formed() -> None:
    board = json.loads((DEPLOY / "grafana" / "vigil-dashboard.json").read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert any(v["type"] == "datasource" for v in board["templating"]["list"])
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
        for histogram in ("vigil_event_to_prediction_seconds", "vigil_batch_size"):
            if f"{histogram}_bucket" in str(panel["targets"]):
                assert "histogram_quantile" in str(panel["targets"])


# ---- Prometheus alerts ---------------------------------------------------------------------------
ALERT_CONCERNS = {
    # what must be alerted on -> a pattern one rule's expression must contain
    "growing lag": r"\bvigil_consumer_lag\b",
    "dead-letter rate": r"\bvigil_dead_letters_total\b",
    "unready pods": r"\bkube_deployment_status_replicas_unavailable\b",
    "webhook failures": r"\bvigil_webhook_deliveries_total\b",
    "event-loop lag": r"\bvigil_event_loop_lag_seconds\b",
    "training stalled": r"\bvigil_training_steps_total\b",
    "Redis outage": r'\bvigil_outage\{service="redis"\}',
    "Kafka outage": r'\bvigil_outage\{service="kafka"\}',
}
DURATION = re.compile(r"^\d+[smhd]$")


def markdown_anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return anchors


def alert_rules(target: str) -> list[dict[str, Any]]:
    return [
        rule
        for group in the(target, "PrometheusRule")["spec"]["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_prometheus_rules_alert_on_every_concern(target: str) -> None:
    rules = alert_rules(target)
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for concern, pattern in ALERT_CONCERNS.items():
        assert any(re.search(pattern, r["expr"]) for r in rules), f"no alert on {concern}"
    deployment = the(target, "Deployment")["metadata"]["name"]
    exposed = exposed_metric_names()
    anchors = markdown_anchors(ROOT / "docs" / "deploy.md")
    for rule in rules:
        expr, where = rule["expr"], rule["alert"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), where
        unknown = set(re.findall(r"\bvigil_[a-z_]+\b", expr)) - exposed
        assert not unknown, f"{where}: the worker exposes no {sorted(unknown)}"
        for name in re.findall(r'deployment="([^"]+)"', expr):
            assert name == deployment, where
        assert rule["labels"]["severity"] in {"warning", "critical"}, where
        assert rule["annotations"]["summary"], where
        assert DURATION.match(rule.get("for", "0s")), where
        runbook = rule["annotations"]["runbook_url"]
        assert runbook.startswith("docs/deploy.md#"), where
        assert runbook.split("#", 1)[1] in anchors, f"{where}: no section {runbook}"
    labels = the(target, "PrometheusRule")["metadata"]["labels"]
    assert labels["release"] == the(target, "ServiceMonitor")["metadata"]["labels"]["release"]
