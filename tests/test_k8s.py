"""The cluster deploy (k8s/, Dockerfile.backend, Dockerfile.bot): what `kubectl apply -k k8s/` would send.

The manifests are rendered with `kubectl kustomize` (as `kubectl apply -k` does), the built-in
objects validated with kubernetes-validate for a pinned Kubernetes version, the RayService with
KubeRay's CRD schema from ../shared/schemas, and the Serve config inside it compared with
serve/config.yaml.
"""
from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
CRD = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "ray.io_rayservices.yaml"
KUBERNETES_VERSION = "1.31.0"
KUBECTL = shutil.which("kubectl")
NAMESPACE = "chandler"
SECRET = "chandler-secrets"


def _renderer():
    spec = importlib.util.spec_from_file_location("render_serve_config", K8S / "render_serve_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


renderer = _renderer()


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: cannot render k8s/ (kubectl kustomize)")
    done = subprocess.run([KUBECTL, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def one(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in the rendered manifests"
    return found[0]


@pytest.fixture(scope="module")
def rayservice(objects) -> dict:
    return one(objects, "RayService", "chandler")


@pytest.fixture(scope="module")
def gpu_group(rayservice) -> dict:
    (group,) = [g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    return group


def worker_container(gpu_group) -> dict:
    (container,) = [c for c in gpu_group["template"]["spec"]["containers"] if c["name"] == "ray-worker"]
    return container


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    """(where, pod spec) of every workload, the Ray head and worker groups included."""
    specs = []
    for o in objects:
        where = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in ("Deployment", "StatefulSet"):
            specs.append((where, o["spec"]["template"]["spec"]))
        elif o["kind"] == "RayService":
            cluster = o["spec"]["rayClusterConfig"]
            specs.append((where + " head", cluster["headGroupSpec"]["template"]["spec"]))
            specs += [(f"{where} {g['groupName']}", g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
    return specs


def local_serve_config() -> dict:
    return yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())


def cluster_overrides() -> dict:
    return yaml.safe_load((K8S / "cluster-settings.yaml").read_text())["serve"]


def leaves(value, path=()) -> dict[tuple, object]:
    """Every scalar of a Serve config by path; list items with a `name` are keyed by it."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(leaves(item, path + (key,)))
        return out
    if isinstance(value, list) and all(isinstance(i, dict) and "name" in i for i in value):
        out = {}
        for item in value:
            out.update(leaves({k: v for k, v in item.items() if k != "name"}, path + (item["name"],)))
        return out
    return {path: value}


# --- rendering and schemas --------------------------------------------------------------------


def test_kustomize_renders_everything_into_the_namespace(objects):
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == [
        ("ConfigMap", "discord-bot"),
        ("Deployment", "discord-bot"),
        ("Namespace", NAMESPACE),
        ("RayService", "chandler"),
        ("Service", "redis"),
        ("Service", "redis-headless"),
        ("StatefulSet", "redis"),
    ]
    for o in objects:
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == NAMESPACE, o["metadata"]["name"]


def test_builtin_objects_validate_against_kubernetes(objects):
    builtin = [o for o in objects if not o["apiVersion"].startswith("ray.io/")]
    assert len(builtin) == len(objects) - 1
    for o in builtin:  # strict: an unknown (misspelt) field fails too; a missing schema raises
        kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)


def test_kubernetes_validation_catches_a_misspelt_field(objects):
    broken = copy.deepcopy(one(objects, "Deployment", "discord-bot"))
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = broken["spec"]["template"]["spec"]["containers"][0].pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.fixture(scope="module")
def crd_validator() -> jsonschema.protocols.Validator:
    """KubeRay's RayService schema, strict: where the CRD lists an object's fields, no others are
    allowed (the API server would silently drop them, so a misspelt field would go unnoticed)."""
    if not CRD.is_file():
        pytest.skip(f"KubeRay CRD schema not found at {CRD}: shared/ must sit beside the checkout")
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 18,000 lines
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])

    def close(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_rayservice_validates_against_the_kuberay_crd(rayservice, crd_validator):
    assert rayservice["apiVersion"] == "ray.io/v1"
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator.iter_errors(rayservice)]
    assert errors == []


@pytest.mark.parametrize("breakage", ["misspelt field", "wrong type"])
def test_crd_validation_catches_mistakes(rayservice, crd_validator, breakage):
    broken = copy.deepcopy(rayservice)
    cluster = broken["spec"]["rayClusterConfig"]
    if breakage == "misspelt field":
        cluster["workerGroupSpec"] = cluster.pop("workerGroupSpecs")
    else:
        cluster["workerGroupSpecs"][0]["maxReplicas"] = "two"
    assert list(crd_validator.iter_errors(broken))


# --- the Serve config: serve/config.yaml plus the declared cluster settings -------------------


def test_generated_serve_config_is_current():
    assert (K8S / "serve-config.yaml").read_text() == renderer.rendered_text(), (
        "k8s/serve-config.yaml is out of date: run python k8s/render_serve_config.py"
    )


def test_serve_config_in_the_rayservice_is_the_generated_file(rayservice):
    assert rayservice["spec"]["serveConfigV2"] == (K8S / "serve-config.yaml").read_text()


def test_serve_config_matches_local_except_the_declared_overrides(rayservice):
    local, cluster = local_serve_config(), yaml.safe_load(rayservice["spec"]["serveConfigV2"])

    def shape(config):
        return [(a["name"], a["import_path"], a.get("route_prefix"), [d["name"] for d in a["deployments"]])
                for a in config["applications"]]

    assert shape(cluster) == shape(local)
    declared = leaves(cluster_overrides())
    assert declared, "no cluster settings declared"
    before, after = leaves(local), leaves(cluster)
    changed = {path for path in before.keys() | after.keys() if before.get(path, "<absent>") != after.get(path, "<absent>")}
    assert changed <= declared.keys(), f"differences not declared in k8s/cluster-settings.yaml: {sorted(changed - declared.keys())}"
    assert {path: after.get(path) for path in declared} == declared


def test_cluster_settings_one_gpu_per_model_replica_4bit_and_replica_counts(rayservice, gpu_group):
    (app,) = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    model = {d["name"]: d for d in app["deployments"]}["ChandlerModel"]
    assert model["ray_actor_options"]["num_gpus"] == 1
    assert app["args"]["quantization"] == "4bit"
    bounds = model["autoscaling_config"]
    assert 1 <= bounds["min_replicas"] <= bounds["max_replicas"]
    # the GPU worker group follows: one pod, one GPU, one model replica
    assert gpu_group["minReplicas"] == gpu_group["replicas"] == bounds["min_replicas"]
    assert gpu_group["maxReplicas"] == bounds["max_replicas"]
    assert int(worker_container(gpu_group)["resources"]["limits"]["nvidia.com/gpu"]) == model["ray_actor_options"]["num_gpus"]


def test_backend_settings_load_from_the_serve_config_and_the_worker_env(rayservice, gpu_group, monkeypatch):
    import os

    from serve.settings import load

    (app,) = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    for name in [n for n in os.environ if n.startswith("CHANDLER_") or n == "REDIS_URL"]:
        monkeypatch.delenv(name)
    env = {e["name"]: e["value"] for e in worker_container(gpu_group)["env"] if "value" in e}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load(app["args"])  # as a worker's replicas will: the args, then the pod's environment
    assert settings.redis_url == env["REDIS_URL"]
    assert {name: getattr(settings, name) for name in app["args"]} == app["args"]


def test_renderer_refuses_a_deployment_serve_config_does_not_have():
    overrides = {"applications": {"chandler": {"deployments": {"NoSuchModel": {"num_replicas": 1}}}}}
    with pytest.raises(ValueError, match="NoSuchModel"):
        renderer.render(local_serve_config(), overrides)


# --- GPUs, services, probes, resources --------------------------------------------------------


def test_gpus_only_on_the_worker_group(rayservice, gpu_group):
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    for container in head["template"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {})
        assert "nvidia.com/gpu" not in container.get("resources", {}).get("requests", {})
    assert head.get("rayStartParams", {}).get("num-gpus", "0") == "0"


def test_services_are_cluster_ip_only(objects, rayservice):
    services = [o for o in objects if o["kind"] == "Service"]
    assert services
    for service in services:
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
    assert not [o for o in objects if o["kind"] == "Ingress"]
    spec = rayservice["spec"]
    assert spec["rayClusterConfig"]["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    assert spec.get("serveService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"


def test_every_container_has_requests_and_limits(objects):
    specs = pod_specs(objects)
    assert len(specs) == 4  # bot, redis, ray head, gpu workers
    for where, spec in specs:
        for container in spec["containers"]:
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= resources.get(kind, {}).keys(), f"{where} {container['name']} {kind}"


def test_backend_probes_use_the_app_health_routes_on_the_serve_port(rayservice, gpu_group):
    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    port = serve_config["http_options"]["port"]
    container = worker_container(gpu_group)
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"] == {"path": "/readyz", "port": port}
    assert probes["livenessProbe"] == probes["startupProbe"] == {"path": "/healthz", "port": port}
    assert {"containerPort": port, "name": "serve"} in container["ports"]
    # serve/config.yaml runs one proxy on the head; the cluster needs one per pod for these probes.
    assert serve_config["proxy_location"] == "EveryNode"


# --- Redis ------------------------------------------------------------------------------------


def test_redis_persists_append_only_on_a_volume_claim(objects):
    redis = one(objects, "StatefulSet", "redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert {"name": claim["metadata"]["name"], "mountPath": data_dir} in container["volumeMounts"]
    assert container["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    assert one(objects, "Service", redis["spec"]["serviceName"])["spec"]["clusterIP"] == "None"


def test_backend_redis_url_reaches_the_redis_service(objects, gpu_group):
    (url,) = [e["value"] for e in worker_container(gpu_group)["env"] if e["name"] == "REDIS_URL"]
    host, port = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", url).groups()
    service = one(objects, "Service", host.split(".")[0])
    assert host in (service["metadata"]["name"], f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local")
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    redis_pod = one(objects, "StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= redis_pod.items()


# --- the bot and the Secret -------------------------------------------------------------------


def test_bot_runs_one_replica_with_secrets_from_the_secret(objects):
    bot = one(objects, "Deployment", "discord-bot")
    assert bot["spec"]["replicas"] == 1
    assert bot["spec"]["strategy"]["type"] == "Recreate"  # never two gateway sessions, even in a rollout
    (container,) = bot["spec"]["template"]["spec"]["containers"]
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert secret_refs == {
        "DISCORD_TOKEN": {"name": SECRET, "key": "DISCORD_TOKEN"},
        "CHANDLER_API_KEY": {"name": SECRET, "key": "CHANDLER_API_KEY"},
    }
    assert not [e for e in container["env"] if "value" in e], "settings belong in the ConfigMap, secrets in the Secret"


def test_bot_config_map_is_a_valid_bot_configuration(objects, rayservice):
    from discord_bot.config import from_env

    bot = one(objects, "Deployment", "discord-bot")
    (container,) = bot["spec"]["template"]["spec"]["containers"]
    (source,) = container["envFrom"]
    settings = one(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
    known = set(re.findall(r'"([A-Z][A-Z_]+)"', (ROOT / "discord_bot" / "config.py").read_text()))
    assert set(settings) <= known, f"variables the bot does not read: {sorted(set(settings) - known)}"
    config = from_env({**settings, "DISCORD_TOKEN": "placeholder"})
    # the backend's serve Service: KubeRay names it <RayService>-serve-svc
    assert config.api_url == f"http://{rayservice['metadata']['name']}-serve-svc:8000"


def test_backend_secrets_come_from_the_secret(gpu_group):
    env = {e["name"]: e for e in worker_container(gpu_group)["env"]}
    assert env["CHANDLER_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "CHANDLER_API_KEY"}
    salt = env["CHANDLER_FEEDBACK_SALT"]["valueFrom"]["secretKeyRef"]
    assert (salt["name"], salt["key"]) == (SECRET, "CHANDLER_FEEDBACK_SALT")


def test_example_secret_holds_placeholders_and_is_not_applied(objects):
    example = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert (example["kind"], example["metadata"]["name"], example["metadata"]["namespace"]) == ("Secret", SECRET, NAMESPACE)
    kubernetes_validate.validate(example, KUBERNETES_VERSION, strict=True)
    referenced = set()
    for _, spec in pod_specs(objects):
        for container in spec["containers"]:
            referenced |= {e["valueFrom"]["secretKeyRef"]["key"] for e in container.get("env", [])
                           if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == SECRET}
    values = example.get("stringData", {})
    assert set(values) == referenced
    for key, value in values.items():
        assert re.fullmatch(r"REPLACE_WITH_[A-Z_]+", value), f"{key} is not a placeholder"
    assert "data" not in example
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"]
    assert not [o for o in objects if o["kind"] == "Secret"]


# --- images -----------------------------------------------------------------------------------


def dockerfile_arg(text: str, name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", text, re.MULTILINE).group(1)


def test_backend_image_matches_the_ray_version(rayservice):
    text = (ROOT / "Dockerfile.backend").read_text()
    ray_version = dockerfile_arg(text, "RAY_VERSION")
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == ray_version
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-gpu$", text, re.MULTILINE)
    assert '"ray[serve]==${RAY_VERSION}"' in text and '".[serve]"' in text
    images = {c["image"] for _, spec in pod_specs([rayservice]) for c in spec["containers"]}
    assert len(images) == 1, "the head and the workers must run the same image"


def test_bot_image_installs_the_bot_extra():
    text = (ROOT / "Dockerfile.bot").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.MULTILINE)
    assert "['optional-dependencies']['bot']" in text
    assert re.search(r'^CMD \["python", "-m", "discord_bot"\]$', text, re.MULTILINE)


def test_docker_copies_exist_and_are_not_ignored():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for required in (".venv", "build/", "models/*/checkpoints"):
        assert required in ignored
    for dockerfile in ("Dockerfile.backend", "Dockerfile.bot"):
        for line in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", (ROOT / dockerfile).read_text(), re.MULTILINE):
            for source in line.split():
                assert (ROOT / source).exists(), f"{dockerfile}: COPY {source}: no such file"
                top = source.rstrip("/").split("/")[0]
                assert not {top, top + "/"} & set(ignored), f"{dockerfile}: COPY {source} is excluded by .dockerignore"
