"""ops/k8s/: the Kubernetes JSON schemas shipped by kubernetes-validate, strict (unknown fields
fail), for the oldest and newest Kubernetes versions we support; KEDA objects against schemas
pinned below from KEDA's CRDs; cross-references between the manifests; each check is shown to
fail on a broken manifest.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import jsonschema
import pytest
import yaml

from hermes_worker.contract import QUEUE_CONTAINER, QUEUE_LOCAL

from .support import deploy
from .support.deploy import K8S, manifests, pod_spec, proxy_allowlist, run
from .support.environment import missing

K8S_VERSIONS = ("1.29", "1.37")  # native sidecars need 1.29; 1.37 is the newest schema shipped


# Kubernetes -----------------------------------------------------------------------------------


INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
HPA_RULES = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "tolerance": {"type": ["string", "number"]},
        "policies": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["type", "value", "periodSeconds"],
            "properties": {"type": {"enum": ["Pods", "Percent"]}, "value": {"type": "integer", "minimum": 1},
                           "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800}}}},
    },
}  # fmt: skip
METADATA = {
    "type": "object", "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                   "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                   "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
}  # fmt: skip
# Pinned from KEDA 2.x's CRDs (keda.sh_scaledobjects.yaml, keda.sh_triggerauthentications.yaml),
# stricter than them: unknown fields fail here, where Kubernetes would silently prune them.
SCALED_OBJECT = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"}, "metadata": METADATA,
        "spec": {
            "type": "object", "required": ["scaleTargetRef", "triggers"], "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                   "properties": {k: {"type": "string"} for k in
                                                  ("apiVersion", "kind", "name", "envSourceContainerName")}},
                **{k: INT32 for k in ("pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                                      "idleReplicaCount", "minReplicaCount", "maxReplicaCount")},
                "fallback": {"type": "object", "required": ["failureThreshold", "replicas"],
                             "properties": {"failureThreshold": INT32, "replicas": INT32}},
                "advanced": {"type": "object", "additionalProperties": False, "properties": {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "scalingModifiers": {"type": "object"},
                    "horizontalPodAutoscalerConfig": {"type": "object", "additionalProperties": False, "properties": {
                        "name": {"type": "string"},
                        "behavior": {"type": "object", "additionalProperties": False,
                                     "properties": {"scaleUp": HPA_RULES, "scaleDown": HPA_RULES}}}}}},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string"}, "name": {"type": "string"},
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        "authenticationRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                              "properties": {"name": {"type": "string"}, "kind": {
                                                  "enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]}}},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": {"type": "boolean"}}}},
            },
        },
    },
}  # fmt: skip
TRIGGER_AUTHENTICATION = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "TriggerAuthentication"}, "metadata": METADATA,
        "spec": {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
            "secretTargetRef": {"type": "array", "items": {
                "type": "object", "required": ["parameter", "name", "key"], "additionalProperties": False,
                "properties": {k: {"type": "string"} for k in ("parameter", "name", "key")}}},
            "env": {"type": "array"}, "configMapTargetRef": {"type": "array"}, "podIdentity": {"type": "object"},
            "hashiCorpVault": {"type": "object"}, "azureKeyVault": {"type": "object"},
            "awsSecretManager": {"type": "object"}, "gcpSecretManager": {"type": "object"},
            "boundServiceAccountToken": {"type": "array"}}},
    },
}  # fmt: skip
# The redis scaler's parameters (keda.sh/docs/scalers/redis-lists); numbers are strings there.
REDIS_SCALER = {
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "username",
    "usernameFromEnv",
    "passwordFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
}
KEDA_SCHEMAS = {"ScaledObject": SCALED_OBJECT, "TriggerAuthentication": TRIGGER_AUTHENTICATION}


def validate_manifest(doc: dict[str, Any], version: str) -> None:
    """Raise if ``doc`` does not match its schema: Kubernetes' (strict) or KEDA's pinned one."""
    if doc["apiVersion"].startswith("keda.sh/"):
        jsonschema.validate(doc, KEDA_SCHEMAS[doc["kind"]])
        for trigger in doc["spec"].get("triggers", []):
            params = trigger["metadata"]
            unknown = set(params) - REDIS_SCALER
            if trigger["type"] == "redis" and (unknown or not {"listName", "listLength"} <= set(params)):
                raise jsonschema.ValidationError(f"redis trigger parameters: unknown {unknown} in {params}")
        return
    _kubernetes_validate().validate(doc, version, strict=True)


def _kubernetes_validate() -> Any:
    if importlib.util.find_spec("kubernetes_validate") is None:
        missing("kubernetes-validate is not installed (pip install -e '.[test]' in the checkout)")
    import kubernetes_validate

    return kubernetes_validate


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_their_schemas(version: str) -> None:
    docs = manifests()
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Namespace",
        "NetworkPolicy",
        "ScaledObject",
        "Service",
        "StatefulSet",
        "TriggerAuthentication",
    ]
    for doc in docs:
        validate_manifest(doc, version)


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("Deployment", ["spec", "replica"], 2),  # a typo: strict schemas reject unknown fields
        ("Deployment", ["spec", "template", "spec", "containers", 0, "resources", "limits", "memory"], [1]),
        ("StatefulSet", ["spec", "volumeClaimTemplates", 0, "spec", "accessModes"], "ReadWriteOnce"),
        ("ScaledObject", ["spec", "maxReplicas"], 5),
        ("ScaledObject", ["spec", "triggers", 0, "metadata", "listLength"], 2),  # KEDA wants strings
        ("ScaledObject", ["spec", "triggers", 0, "metadata", "queueName"], "hermes.local"),
        ("TriggerAuthentication", ["spec", "secretTargetRef", 0, "key"], None),
    ],
)
def test_schema_checks_fail_on_broken_manifests(kind: str, path: list[Any], value: Any) -> None:
    doc = json.loads(json.dumps(next(d for d in manifests() if d["kind"] == kind)))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(doc, K8S_VERSIONS[-1])


def test_manifests_refer_only_to_what_exists() -> None:
    docs = manifests()
    by_kind: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in docs:
        by_kind[(doc["kind"], f"{doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}")] = doc
    secrets_keys = {"redis-password", "flower-user", "flower-password"}
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    for doc in docs:
        ns = doc["metadata"].get("namespace")
        assert doc["kind"] == "Namespace" or ns in namespaces, doc["metadata"]
        if doc["kind"] in ("Deployment", "StatefulSet"):
            spec = doc["spec"]
            assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
            pod = spec["template"]["spec"]
            for container in pod["containers"] + pod.get("initContainers", []):
                for source in container.get("envFrom", []):
                    assert ("ConfigMap", f"{ns}/{source['configMapRef']['name']}") in by_kind
                for var in container.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] == "hermes-secrets" and ref["key"] in secrets_keys, ref
            if doc["metadata"]["name"].startswith("hermes-worker"):
                assert pod["terminationGracePeriodSeconds"] >= 120 + 10, "warm shutdown must outlast a chunk"
        if doc["kind"] == "ScaledObject":
            target = ("Deployment", f"{ns}/{doc['spec']['scaleTargetRef']['name']}")
            assert target in by_kind, target
            for trigger in doc["spec"]["triggers"]:
                assert ("TriggerAuthentication", f"{ns}/{trigger['authenticationRef']['name']}") in by_kind
            args = by_kind[target]["spec"]["template"]["spec"]["containers"][0]["args"]
            mode = args[args.index("--mode") + 1]
            assert [t["metadata"]["listName"] for t in doc["spec"]["triggers"]] == [
                {"local": QUEUE_LOCAL, "container": QUEUE_CONTAINER}[mode]
            ]
            # Producers only send to a queue with a live worker: scaling from zero would never wake.
            assert doc["spec"]["minReplicaCount"] >= 1
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    generated = {(g["name"], g["namespace"]) for g in kustomization["secretGenerator"]}
    assert generated == {("hermes-secrets", ns) for ns in namespaces}


@pytest.fixture(scope="module")
def compose_config() -> dict[str, Any]:
    return deploy.compose_config()


def test_kubernetes_and_compose_proxies_allow_the_same_calls(compose_config: dict[str, Any]) -> None:
    (sidecar,) = [c for c in pod_spec("hermes-worker-container")["initContainers"] if c["name"] == "docker-proxy"]
    compose_proxy = compose_config["services"]["docker-proxy"]
    assert sidecar["image"] == compose_proxy["image"]
    k8s_rules = proxy_allowlist(sidecar["args"])
    assert k8s_rules and k8s_rules == proxy_allowlist(compose_proxy["command"])
    assert "-allowbindmountfrom=/var/empty" in sidecar["args"]


def test_kubernetes_redis_refuses_an_empty_password() -> None:
    # The container's own script, run here: with an empty secret it must exit before starting Redis.
    (redis,) = [d for d in manifests() if d["kind"] == "StatefulSet"]
    container = redis["spec"]["template"]["spec"]["containers"][0]
    done = run([*container["command"], *container["args"]], env=dict(os.environ, REDIS_PASSWORD=""))
    assert done.returncode == 1 and "redis-password is empty" in done.stderr
