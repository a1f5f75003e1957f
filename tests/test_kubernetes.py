"""The Kubernetes manifests (``deploy/kubernetes``): every overlay renders with ``kubectl
kustomize`` and validates against Kubernetes' own schemas (``kubernetes-validate``, strict: an
unknown field fails), the KEDA and Prometheus Operator objects against the fields of their
CRDs, and everything the manifests say about the service is checked against the code, so they
cannot drift from it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from bentoml._internal.container.generate import BENTO_UID_GID

from tests.served import ROOT, Served
from vllm_bento.gate import OPEN_PATHS
from vllm_bento.settings import Settings

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")
COMPONENTS = ("keda", "hpa", "servicemonitor", "scale-to-zero")
KUBERNETES_VERSION = "1.32.0"  # the oldest release still supported upstream (2026-12)
BENTOML_PORT = 3000  # `bentoml serve`'s port in the image (EXPOSE 3000 in BentoML's Dockerfile)
ENGINE_STOP_S = 15  # the engine's stop after the drain: seconds on this CPU, measured < 5
SLOWEST_START_S = 229  # the 8B model's cold start on an H200, compilation included (issue 19)
OTHER_ENV = {"HF_TOKEN": "huggingface_hub's token", "HF_HOME": "huggingface_hub's cache"}

# The fields of the CRD objects used here, from the CRDs' own OpenAPI schemas: KEDA 2.16
# (config/crd/bases/keda.sh_scaledobjects.yaml) and Prometheus Operator 0.79
# (monitoring.coreos.com_servicemonitors.yaml). Unknown fields are refused, as the API server
# refuses them for a CRD with a structural schema.
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
SCALED_OBJECT = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object", "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"],
                                   "additionalProperties": False,
                                   "properties": {"name": {"type": "string"},
                                                  "kind": {"type": "string"},
                                                  "apiVersion": {"type": "string"},
                                                  "envSourceContainerName": {"type": "string"}}},
                **{name: {"type": "integer", "minimum": 0} for name in (
                    "minReplicaCount", "maxReplicaCount", "idleReplicaCount", "pollingInterval",
                    "cooldownPeriod", "initialCooldownPeriod")},
                "fallback": {"type": "object"}, "advanced": {"type": "object"},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type", "metadata"],
                    "additionalProperties": False,
                    "properties": {"type": {"type": "string"}, "name": {"type": "string"},
                                   "metadata": _STRINGS,
                                   "metricType": {"enum": ["AverageValue", "Value",
                                                           "Utilization"]},
                                   "useCachedMetrics": {"type": "boolean"},
                                   "authenticationRef": {"type": "object"}}}},
            },
        },
    },
}
SERVICE_MONITOR = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object", "required": ["selector"], "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "properties": {"matchLabels": _STRINGS}},
                "namespaceSelector": {"type": "object"}, "jobLabel": {"type": "string"},
                "endpoints": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "interval": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                                   "scrapeTimeout": {"type": "string"},
                                   "scheme": {"enum": ["http", "https"]}}}},
            },
        },
    },
}
CRD_SCHEMAS = {"ScaledObject": SCALED_OBJECT, "ServiceMonitor": SERVICE_MONITOR}
ADAPTER_NAMES = {"vllm_num_requests_running": "vllm:num_requests_running"}
"""prometheus-adapter's names (README's rule) for vLLM's series the HPA reads."""


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize folder`` renders."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: the tests render the manifests with it"
    done = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Each overlay, and the base with each component (as a user adds one)."""
    out = {name: kustomize(KUBERNETES / "overlays" / name) for name in OVERLAYS}
    for component in COMPONENTS:
        folder = tmp_path_factory.mktemp(component)
        needs = ["keda", component] if component == "scale-to-zero" else [component]
        (folder / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            # kustomize takes relative paths only
            "resources": [os.path.relpath(KUBERNETES / "base", folder)],
            "components": [os.path.relpath(KUBERNETES / "components" / c, folder)
                           for c in needs]}))
        out[component] = kustomize(folder)
    return out


def objects(rendered: dict[str, list[dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [o for objs in rendered.values() for o in objs if o["kind"] == kind]


def validate(obj: dict[str, Any]) -> None:
    if obj["kind"] in CRD_SCHEMAS:
        jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_every_overlay_and_component_renders_and_validates(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name, objs in rendered.items():
        kinds = sorted(o["kind"] for o in objs)
        assert {"Deployment", "Service", "PodDisruptionBudget"} <= set(kinds), (name, kinds)
        for obj in objs:
            validate(obj)
    assert "ScaledObject" in {o["kind"] for o in rendered["gpu"]}
    assert "HorizontalPodAutoscaler" in {o["kind"] for o in rendered["hpa"]}


@pytest.mark.parametrize(("kind", "path", "typo"), [
    ("Deployment", ("spec", "template", "spec"), "terminationGracePeriod"),
    ("ScaledObject", ("spec",), "minReplicas"),
    ("ServiceMonitor", ("spec", "endpoints", 0), "intervall"),
])
def test_the_validation_catches_a_misspelt_field(rendered: dict[str, list[dict[str, Any]]],
                                                 kind: str, path: tuple[Any, ...],
                                                 typo: str) -> None:
    obj = yaml.safe_load(yaml.safe_dump(objects(rendered, kind)[0]))  # a deep copy
    where = obj
    for key in path:
        where = where[key]
    where[typo] = 1
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        validate(obj)


def containers(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [c for d in objects(rendered, "Deployment") for c in d["spec"]["template"]["spec"]
            ["containers"]]


def test_probes_and_port_are_the_services(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for container in containers(rendered):
        (port,) = container["ports"]
        assert (port["name"], port["containerPort"]) == ("http", BENTOML_PORT)
        probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in
                  ("startup", "readiness", "liveness")}
        assert {k: p["path"] for k, p in probes.items()} == {
            "startup": "/readyz", "readiness": "/readyz", "liveness": "/livez"}
        assert all(p["port"] == "http" for p in probes.values())
        assert {"/readyz", "/livez"} <= OPEN_PATHS  # no API key asked of a probe
    for service in objects(rendered, "Service"):
        assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_every_env_name_is_a_setting_the_service_reads(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    settings = {f"LLM_{name.upper()}" for name in Settings.model_fields}
    for container in containers(rendered):
        for env in container["env"]:
            assert env["name"] in settings or env["name"] in OTHER_ENV, env["name"]
            if "value" in env and env["name"] in settings:
                # Each value is one the settings accept (as the server would at start-up).
                field = env["name"].removeprefix("LLM_").lower()
                Settings.model_validate({field: env["value"]})


def test_the_drain_is_never_cut_by_sigkill(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for deployment in objects(rendered, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        grace = float(env.get("LLM_SHUTDOWN_GRACE_S")
                      or Settings.model_fields["shutdown_grace_s"].default)
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + grace + ENGINE_STOP_S


def test_the_startup_probe_outlasts_the_slowest_start_measured(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for container in containers(rendered):
        probe = container["startupProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] >= 2 * SLOWEST_START_S


def test_the_pods_run_as_bentomls_own_user(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for deployment in objects(rendered, "Deployment"):
        context = deployment["spec"]["template"]["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == context["runAsGroup"] == BENTO_UID_GID


def test_the_autoscalers_target_the_deployment(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for scaled in objects(rendered, "ScaledObject"):
        assert scaled["spec"]["scaleTargetRef"]["name"] == "vllm-llm"
    for hpa in objects(rendered, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": "vllm-llm"}
    (zero,) = objects({"z": rendered["scale-to-zero"]}, "ScaledObject")
    assert zero["spec"]["minReplicaCount"] == 0
    for monitor in objects(rendered, "ServiceMonitor"):
        labels = monitor["spec"]["selector"]["matchLabels"]
        for service in objects(rendered, "Service"):
            assert labels.items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["endpoints"][0]["port"] == "http"


def autoscaling_series(rendered: dict[str, list[dict[str, Any]]]) -> set[str]:
    """vLLM's series the KEDA queries and the HPA's metrics read."""
    series = {name for scaled in objects(rendered, "ScaledObject")
              for trigger in scaled["spec"]["triggers"]
              for name in re.findall(r"vllm:[a-z_]+", trigger["metadata"]["query"])}
    for hpa in objects(rendered, "HorizontalPodAutoscaler"):
        for metric in hpa["spec"]["metrics"]:
            series.add(ADAPTER_NAMES[metric["pods"]["metric"]["name"]])
    return series


@pytest.mark.e2e
def test_the_autoscaling_series_are_on_a_served_instances_metrics(
        rendered: dict[str, list[dict[str, Any]]], server: Served) -> None:
    served = httpx.get(f"{server.url}/metrics", timeout=30).text
    series = autoscaling_series(rendered)
    assert series == {"vllm:num_requests_running", "vllm:num_requests_waiting"}
    for name in series:
        assert re.search(rf"^{re.escape(name)}\{{", served, re.M), name
