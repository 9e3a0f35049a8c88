"""Kubernetes manifests (deploy/k8s): rendered by kubectl's kustomize, validated against the
API schemas and checked against the app's own settings, all offline (no API server here)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.config import ENV_PREFIX, Settings
from app.metrics import Metrics

Obj = dict[str, Any]

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
NAMESPACE = "textclf"
POD_LABELS = {"app.kubernetes.io/name": "textclf", "app.kubernetes.io/component": "server"}
OVERLAYS = ("cpu", "gpu")
# An overlay plus optional components, rendered through a throwaway kustomization.
COMPOSED = {
    "cpu+api-keys": ("overlays/cpu", ("components/api-keys",)),
    "gpu+api-keys": ("overlays/gpu", ("components/api-keys",)),
    "cpu+model-image": ("overlays/cpu", ("components/model-image",)),
}
VARIANTS = ("base", *OVERLAYS, *COMPOSED)
# The newest schemas kubernetes-validate bundles, and the release of the machine's kubectl.
KUBERNETES_VERSIONS = (kubernetes_validate.latest_version(), "1.32")
# The time a replica may take from start to /ready (model load, forward-pass choice, warm-up,
# self-test): the Compose healthcheck's start_period on the CPU (read from docker-compose.yml
# below), more on a GPU for the CUDA context and moving the weights.
MODEL_LOAD_BOUND_S = {"cpu": 180, "gpu": 300}
INGRESS_NGINX_UPSTREAM_KEEPALIVE_S = 60
# Restricted Pod Security's volume allow-list; API servers from 1.33 on also admit `image`.
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret", "image",
}  # fmt: skip
KEYS_SECRET = "textclf-api-keys"


def kustomize(path: Path) -> list[Obj]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is not on PATH: it is part of the machine image (kubectl >= 1.32 with "
            "kustomize 5.5 renders deploy/k8s); install it to run these checks"
        )
    run = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, f"kubectl kustomize {path} failed:\n{run.stderr}"
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    out = {"base": kustomize(K8S / "base")}
    out |= {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}
    for name, (overlay, components) in COMPOSED.items():
        root = tmp_path_factory.mktemp(name)
        # kustomize loads other kustomizations by relative paths only.
        rel = [os.path.relpath(K8S / part, root) for part in (overlay, *components)]
        kustomization = {"resources": rel[:1], "components": rel[1:]}
        (root / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        out[name] = kustomize(root)
    return out


def only(objects: list[Obj], kind: str) -> Obj:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(objects: list[Obj]) -> Obj:
    spec: Obj = only(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def app_container(objects: list[Obj]) -> Obj:
    (container,) = [c for c in pod_spec(objects)["containers"] if c["name"] == "textclf"]
    return container


def settings_data(objects: list[Obj]) -> dict[str, str]:
    data: dict[str, str] = only(objects, "ConfigMap")["data"]
    return data


def container_port(container: Obj, name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


def volume(objects: list[Obj], name: str) -> Obj:
    (found,) = [v for v in pod_spec(objects)["volumes"] if v["name"] == name]
    return found


def mount(container: Obj, name: str) -> Obj:
    (found,) = [m for m in container["volumeMounts"] if m["name"] == name]
    return found


def cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def pod_templates(objects: list[Obj]) -> Iterator[Obj]:
    for obj in objects:
        if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}:
            yield obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            yield obj["spec"]


# Schema validation


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_passes_strict_schema_validation(
    renders: dict[str, list[Obj]], variant: str, version: str
) -> None:
    # A kind without a bundled schema (a custom resource) raises SchemaNotFoundError: such
    # objects live in deploy/k8s/monitoring, outside the overlays.
    errors = []
    for obj in renders[variant]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_strict_validation_rejects_an_unknown_field(renders: dict[str, list[Obj]]) -> None:
    deployment = copy.deepcopy(only(renders["cpu"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("path", sorted(K8S.glob("examples/*.yaml")), ids=lambda p: p.name)
def test_examples_pass_strict_schema_validation(path: Path) -> None:
    for obj in yaml.safe_load_all(path.read_text()):
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_example_model_volume_binds_the_claim(renders: dict[str, list[Obj]]) -> None:
    pv = yaml.safe_load((K8S / "examples" / "model-pv-nfs.yaml").read_text())
    claim = only(renders["cpu"], "PersistentVolumeClaim")
    assert pv["spec"]["claimRef"] == {"namespace": NAMESPACE, "name": claim["metadata"]["name"]}
    assert pv["spec"]["storageClassName"] == claim["spec"]["storageClassName"]
    assert pv["spec"]["accessModes"] == claim["spec"]["accessModes"] == ["ReadOnlyMany"]


# Pod security


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_meet_the_restricted_profile(renders: dict[str, list[Obj]], variant: str) -> None:
    templates = list(pod_templates(renders[variant]))
    assert templates
    for spec in templates:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] == pod["runAsGroup"] == pod["fsGroup"] == 10001
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
        assert spec["automountServiceAccountToken"] is False
        for v in spec["volumes"]:
            assert set(v) - {"name"} <= RESTRICTED_VOLUME_TYPES, v
        for container in spec["containers"] + spec.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx.get("privileged", False) is False
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
            assert all("hostPort" not in p for p in container.get("ports", []))
            tmp = mount(container, "tmp")
            assert tmp["mountPath"] == "/tmp"
        assert volume(renders[variant], "tmp")["emptyDir"]["sizeLimit"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_pod_has_its_own_service_account_without_a_token(
    renders: dict[str, list[Obj]], variant: str
) -> None:
    account = only(renders[variant], "ServiceAccount")
    assert pod_spec(renders[variant])["serviceAccountName"] == account["metadata"]["name"]
    assert account["metadata"]["name"] != "default"
    assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("variant", VARIANTS)
def test_namespace_enforces_restricted(renders: dict[str, list[Obj]], variant: str) -> None:
    namespace = only(renders[variant], "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert labels[f"pod-security.kubernetes.io/{mode}-version"]
    enforce_version = labels["pod-security.kubernetes.io/enforce-version"]
    assert enforce_version.startswith("v1."), "enforce is pinned, not `latest`"
    for obj in renders[variant]:
        if obj["kind"] not in {"Namespace", "PersistentVolume"}:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]


# Probes, shutdown, rollout


def compose_start_period_s() -> int:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    period = str(compose["services"]["app"]["healthcheck"]["start_period"])
    assert period.endswith("s")
    return int(period[:-1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_the_right_routes_on_the_app_port(
    renders: dict[str, list[Obj]], overlay: str
) -> None:
    container = app_container(renders[overlay])
    settings = settings_data(renders[overlay])
    http_port = container_port(container, "http")
    assert http_port == int(settings["TEXTCLF_PORT"])
    routes = {"startupProbe": "/ready", "readinessProbe": "/ready", "livenessProbe": "/health"}
    for probe_name, route in routes.items():
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == route, probe_name
        assert probe["port"] in ("http", http_port), probe_name
    # Liveness asks the event loop only: a timeout short enough to notice a hung process,
    # a window long enough that one slow answer under load does not restart a replica.
    liveness = container["livenessProbe"]
    assert liveness["timeoutSeconds"] < liveness["periodSeconds"]
    assert liveness["failureThreshold"] >= 3


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_startup_probe_waits_for_a_model_load(renders: dict[str, list[Obj]], overlay: str) -> None:
    startup = app_container(renders[overlay])["startupProbe"]
    window = (
        startup.get("initialDelaySeconds", 0)
        + startup["periodSeconds"] * startup["failureThreshold"]
    )
    assert window >= MODEL_LOAD_BOUND_S[overlay]
    assert window >= compose_start_period_s()
    deployment = only(renders[overlay], "Deployment")
    assert deployment["spec"]["progressDeadlineSeconds"] > window


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_timeouts_are_ordered(renders: dict[str, list[Obj]], overlay: str) -> None:
    settings = settings_data(renders[overlay])
    request_s = float(settings["TEXTCLF_REQUEST_TIMEOUT_S"])
    graceful_s = float(settings["TEXTCLF_GRACEFUL_TIMEOUT_S"])
    pre_stop_s = app_container(renders[overlay])["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace_s = pod_spec(renders[overlay])["terminationGracePeriodSeconds"]
    assert pre_stop_s >= 5, "endpoints need a few seconds to drop a terminating pod"
    assert request_s < graceful_s < grace_s - pre_stop_s
    assert int(settings["TEXTCLF_KEEP_ALIVE_S"]) > INGRESS_NGINX_UPSTREAM_KEEPALIVE_S


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rollout_never_drops_below_the_ready_count(
    renders: dict[str, list[Obj]], overlay: str
) -> None:
    deployment = only(renders[overlay], "Deployment")
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the count"
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert deployment["spec"]["selector"]["matchLabels"] == POD_LABELS
    assert deployment["spec"]["template"]["metadata"]["labels"] == POD_LABELS
    budget = only(renders[overlay], "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"] == POD_LABELS
    assert budget["spec"]["maxUnavailable"] == 1
    autoscaler = only(renders[overlay], "HorizontalPodAutoscaler")
    assert autoscaler["spec"]["minReplicas"] > budget["spec"]["maxUnavailable"]


# Settings


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_configmap_key_is_a_real_setting_with_an_accepted_value(
    renders: dict[str, list[Obj]],
    variant: str,
    stub_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = settings_data(renders[variant])
    fields = {}
    for key in data:
        assert key.startswith(ENV_PREFIX), key
        field = key.removeprefix(ENV_PREFIX).lower()
        assert field in Settings.model_fields, f"{key} is not a setting of app.config.Settings"
        fields[key] = field
    env = dict(data)
    # Paths inside the container, replaced by local stand-ins for the settings' file checks.
    env["TEXTCLF_MODEL_PATH"] = str(stub_model)
    if "TEXTCLF_API_KEYS_FILE" in env:
        keys_file = tmp_path / "api_keys"
        keys_file.write_text("k" * 32 + "\n")
        env["TEXTCLF_API_KEYS_FILE"] = str(keys_file)
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name in {"MODEL_PATH", "HOST", "PORT"}:
            monkeypatch.delenv(name)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)
    assert set(fields.values()) <= settings.model_fields_set  # none ignored as empty
    assert settings.port == container_port(app_container(renders[variant]), "http")


@pytest.mark.parametrize("variant", VARIANTS)
def test_metrics_only_on_their_own_port(renders: dict[str, list[Obj]], variant: str) -> None:
    settings = settings_data(renders[variant])
    container = app_container(renders[variant])
    metrics_port = container_port(container, "metrics")
    assert int(settings["TEXTCLF_METRICS_PORT"]) == metrics_port
    assert settings["TEXTCLF_METRICS_ACCESS"] == "off"
    annotations = only(renders[variant], "Deployment")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_links_cannot_shadow_the_settings(
    renders: dict[str, list[Obj]], variant: str
) -> None:
    # A Service named textclf would inject TEXTCLF_PORT=tcp://<ip>:80 into every pod.
    assert pod_spec(renders[variant])["enableServiceLinks"] is False
    envs = app_container(renders[variant])["envFrom"]
    config_map = only(renders[variant], "ConfigMap")["metadata"]["name"]
    assert envs == [{"configMapRef": {"name": config_map}}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cpu_budget_matches_the_threads_the_app_runs(
    renders: dict[str, list[Obj]], overlay: str
) -> None:
    resources = app_container(renders[overlay])["resources"]
    assert resources["requests"] == resources["limits"], "Guaranteed QoS"
    cpu = cores(resources["limits"]["cpu"])
    assert cpu == int(cpu), "whole cores: the app rounds its CPU quota up"
    settings = settings_data(renders[overlay])
    workers = int(settings["TEXTCLF_INFERENCE_WORKERS"])
    threads = int(settings["TEXTCLF_TORCH_THREADS"])
    if settings["TEXTCLF_DEVICE"] == "cuda":
        assert workers == 1, "one stream of forward passes per GPU"
    else:
        assert workers * threads == cpu


# Model and keys


@pytest.mark.parametrize("variant", [v for v in VARIANTS if "model-image" not in v])
def test_model_comes_from_a_read_only_claim(renders: dict[str, list[Obj]], variant: str) -> None:
    claim = only(renders[variant], "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    model = volume(renders[variant], "model")
    assert model["persistentVolumeClaim"] == {
        "claimName": claim["metadata"]["name"],
        "readOnly": True,
    }
    model_mount = mount(app_container(renders[variant]), "model")
    assert model_mount["readOnly"] is True
    assert model_mount["mountPath"] == settings_data(renders[variant])["TEXTCLF_MODEL_PATH"]


def test_model_image_component_swaps_the_claim_for_an_image(
    renders: dict[str, list[Obj]],
) -> None:
    objects = renders["cpu+model-image"]
    assert not [obj for obj in objects if obj["kind"] == "PersistentVolumeClaim"]
    model = volume(objects, "model")
    assert set(model) == {"name", "image"}
    assert model["image"]["reference"]
    model_mount = mount(app_container(objects), "model")
    assert model_mount["readOnly"] is True
    assert model_mount["mountPath"] == settings_data(objects)["TEXTCLF_MODEL_PATH"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_key_is_ever_in_the_manifests(renders: dict[str, list[Obj]], variant: str) -> None:
    assert not [obj for obj in renders[variant] if obj["kind"] == "Secret"]
    assert "TEXTCLF_API_KEYS" not in settings_data(renders[variant])


@pytest.mark.parametrize("variant", ["base", *OVERLAYS])
def test_without_the_keys_component_nothing_needs_a_secret(
    renders: dict[str, list[Obj]], variant: str
) -> None:
    assert "TEXTCLF_API_KEYS_FILE" not in settings_data(renders[variant])
    assert not [v for v in pod_spec(renders[variant])["volumes"] if "secret" in v]


@pytest.mark.parametrize("variant", [v for v in COMPOSED if "api-keys" in v])
def test_keys_component_mounts_the_secret_where_the_setting_points(
    renders: dict[str, list[Obj]], variant: str
) -> None:
    objects = renders[variant]
    (keys_volume,) = [v for v in pod_spec(objects)["volumes"] if "secret" in v]
    secret = keys_volume["secret"]
    assert secret["secretName"] == KEYS_SECRET
    assert not secret.get("optional", False), "a missing Secret must stop the rollout"
    assert secret["defaultMode"] & 0o007 == 0, "not world-readable"
    (item,) = secret["items"]
    keys_mount = mount(app_container(objects), keys_volume["name"])
    assert keys_mount["readOnly"] is True
    expected = f"{keys_mount['mountPath']}/{item['path']}"
    assert settings_data(objects)["TEXTCLF_API_KEYS_FILE"] == expected


# Network


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_exposes_the_app_and_metrics_ports(
    renders: dict[str, list[Obj]], overlay: str
) -> None:
    service = only(renders[overlay], "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == POD_LABELS
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert (ports["http"]["port"], ports["http"]["targetPort"]) == (80, "http")
    assert (ports["metrics"]["port"], ports["metrics"]["targetPort"]) == (9000, "metrics")
    container = app_container(renders[overlay])
    for port in ports.values():
        container_port(container, port["targetPort"])  # each target is a named container port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_admits_the_proxy_and_the_scraper_only(
    renders: dict[str, list[Obj]], overlay: str
) -> None:
    policy = only(renders[overlay], "NetworkPolicy")["spec"]
    container = app_container(renders[overlay])
    assert policy["podSelector"]["matchLabels"] == POD_LABELS
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert policy["egress"] == [], "the app calls nothing, DNS included"
    by_port = {}
    for rule in policy["ingress"]:
        assert rule.get("from"), "a rule without `from` admits every source"
        assert len(rule["ports"]) == 1
        by_port[rule["ports"][0]["port"]] = rule["from"]
    assert set(by_port) == {container_port(container, "http"), container_port(container, "metrics")}
    (proxy,) = by_port[container_port(container, "http")]
    assert proxy["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }
    assert proxy["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "ingress-nginx"
    (scraper,) = by_port[container_port(container, "metrics")]
    assert scraper == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }


# Autoscaling


def adapter_rules() -> list[Obj]:
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    assert values["rules"]["default"] is False
    rules: list[Obj] = values["rules"]["custom"]
    return rules


def exported_metric_names() -> set[str]:
    return {family.name for family in Metrics().registry.collect()}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_scales_on_cpu_and_on_the_queue(renders: dict[str, list[Obj]], overlay: str) -> None:
    autoscaler = only(renders[overlay], "HorizontalPodAutoscaler")
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": only(renders[overlay], "Deployment")["metadata"]["name"],
    }
    assert autoscaler["spec"]["maxReplicas"] > autoscaler["spec"]["minReplicas"]
    by_type = {metric["type"]: metric for metric in autoscaler["spec"]["metrics"]}
    assert set(by_type) == {"Resource", "Pods"}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    assert by_type["Resource"]["resource"]["target"]["type"] == "Utilization"
    pods = by_type["Pods"]["pods"]
    assert pods["target"]["type"] == "AverageValue"
    settings = Settings.model_fields
    shedding_at = settings["max_queue_tokens"].default
    assert 0 < int(pods["target"]["averageValue"]) < shedding_at, "scale out before shedding"
    served = {rule["name"]["as"]: rule for rule in adapter_rules()}
    assert pods["metric"]["name"] in served, "the Prometheus Adapter serves the HPA's metric"


def test_adapter_rules_read_series_the_app_exports() -> None:
    exported = exported_metric_names()
    for rule in adapter_rules():
        series = rule["seriesQuery"].split("{", 1)[0]
        assert series in exported, f"{series} is not exported by app/metrics.py"
        assert rule["name"]["matches"].strip("^$") == series
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"]


# GPU


def test_gpu_overlay_runs_the_cuda_image_on_a_gpu_node(renders: dict[str, list[Obj]]) -> None:
    objects = renders["gpu"]
    container = app_container(objects)
    assert container["image"] == "textclf:cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    spec = pod_spec(objects)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    settings = settings_data(objects)
    assert settings["TEXTCLF_DEVICE"] == "cuda"
    assert settings["TEXTCLF_DTYPE"] == "float16"


def test_cpu_overlay_asks_for_no_gpu(renders: dict[str, list[Obj]]) -> None:
    container = app_container(renders["cpu"])
    assert container["image"] == "textclf:cpu"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "nodeSelector" not in pod_spec(renders["cpu"])
    assert settings_data(renders["cpu"])["TEXTCLF_DEVICE"] == "cpu"


# Optional custom resources


def test_podmonitor_scrapes_the_metrics_port(renders: dict[str, list[Obj]]) -> None:
    (monitor,) = kustomize(K8S / "monitoring")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    # No schema is bundled for custom resources: the reason it stays out of the overlays.
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(monitor, KUBERNETES_VERSIONS[0], strict=True)
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["spec"]["selector"]["matchLabels"] == POD_LABELS
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    container_port(app_container(renders["cpu"]), endpoint["port"])
