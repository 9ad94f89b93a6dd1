"""infra/: KubeRay manifests against the real CRD schemas, the cluster launcher against Ray's
own schema, and every name they use (images, entrypoints, import paths, profiles, config
files) checked against the code. Nothing here needs Docker or Kubernetes."""

from __future__ import annotations

import copy
import functools
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

INFRA = REPO_ROOT / "infra"
CRDS = REPO_ROOT.parent / "shared" / "reference" / "kuberay-crds"
MANIFESTS = {"RayJob": INFRA / "kuberay" / "rayjob.yaml",
             "RayService": INFRA / "kuberay" / "rayservice.yaml"}
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml",
             "RayCluster": "ray.io_rayclusters.yaml"}
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
IMAGE = re.compile(rf"^ghcr\.io/rankbrew/rankbrew:{re.escape(VERSION)}-(cpu|cu\d+)$")


@functools.cache
def _crd(kind: str) -> dict[str, Any]:
    """A CRD file, parsed once per session (1-1.4 MB of YAML each: seconds with PyYAML)."""
    return yaml.load((CRDS / CRD_FILES[kind]).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def crd_schema(kind: str, version: str = "v1") -> dict[str, Any]:
    path = CRDS / CRD_FILES[kind]
    if not path.exists():
        pytest.skip(f"KubeRay CRDs not found at {CRDS} (they are read from ../shared/reference, "
                    f"not copied into the repository); get them from github.com/ray-project/"
                    f"kuberay helm-chart/kuberay-operator/crds/")
    crd = _crd(kind)
    return next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version)


def unknown_fields(doc: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """Keys the schema does not declare. The API server prunes those silently (structural
    schemas), so a misspelt field would be lost without an error: ``kubectl --validate=strict``
    refuses them, and so does this."""
    out: list[str] = []
    if isinstance(doc, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        if props is None or schema.get("x-kubernetes-preserve-unknown-fields"):
            return out
        for k, v in doc.items():
            if k not in props:
                if not schema.get("additionalProperties"):
                    out.append(f"{where}.{k}".lstrip("."))
                continue
            out += unknown_fields(v, props[k], f"{where}.{k}")
    elif isinstance(doc, list) and "items" in schema:
        for i, v in enumerate(doc):
            out += unknown_fields(v, schema["items"], f"{where}[{i}]")
    return out


def check_manifest(doc: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Every schema error (jsonschema) and every unknown field, as readable lines."""
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    return errors + [f"{f}: unknown field" for f in unknown_fields(doc, schema)]


def images_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k in ("image", "worker_image") and isinstance(v, str)] + \
            [i for v in node.values() for i in images_in(v)]
    if isinstance(node, list):
        return [i for v in node for i in images_in(v)]
    return []


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_kuberay_manifest_matches_the_crd(kind):
    doc = load(MANIFESTS[kind])
    assert doc["kind"] == kind and doc["apiVersion"] == "ray.io/v1"
    assert check_manifest(doc, crd_schema(kind)) == []
    # the embedded Ray cluster is a RayCluster spec: the RayCluster CRD agrees too
    cluster = doc["spec"]["rayClusterSpec" if kind == "RayJob" else "rayClusterConfig"]
    assert check_manifest(cluster, crd_schema("RayCluster")["properties"]["spec"]) == []


def test_the_checker_catches_a_misspelt_field_and_a_wrong_type():
    doc = copy.deepcopy(load(MANIFESTS["RayJob"]))
    doc["spec"]["entrypont"] = doc["spec"].pop("entrypoint")
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    problems = check_manifest(doc, crd_schema("RayJob"))
    assert any("spec.entrypont: unknown field" in p for p in problems), problems
    assert any("replicas" in p and "integer" in p for p in problems), problems


def test_images_are_pinned_to_this_release_and_ray_versions_agree():
    import ray

    launcher = load(INFRA / "cluster" / "aws.yaml")
    docs = [load(p) for p in MANIFESTS.values()] + [launcher]
    images = [i for d in docs for i in images_in(d)]
    assert images and all(IMAGE.match(i) for i in images), images
    assert {IMAGE.match(i).group(1) for i in images} == {"cpu", "cu128"}
    for doc in docs[:2]:
        cluster = doc["spec"].get("rayClusterSpec") or doc["spec"]["rayClusterConfig"]
        assert cluster["rayVersion"] == ray.__version__
    lock = (INFRA / "docker" / "requirements.lock").read_text()
    assert f"\nray=={ray.__version__}\n" in lock


def test_rayjob_entrypoint_and_environment_exist_in_the_code():
    from components.config import resolve_profile_path

    spec = load(MANIFESTS["RayJob"])["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] in PYPROJECT["project"]["scripts"]  # the console script the image installs
    from typer.main import get_command

    from pipelines.cli import app

    command = get_command(app)
    assert argv[1] in command.commands  # `rankbrew run`
    profile = argv[argv.index("--profile") + 1]
    text = resolve_profile_path(profile).read_text()
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    read = set(re.findall(r"\$\{([A-Z_]+)", text)) | {"MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY"}
    assert set(env) <= read, f"env vars the profile never reads: {set(env) - read}"


def test_rayservice_serves_the_serving_config_of_the_repo():
    import importlib

    from components.config import resolve_profile_path

    spec = load(MANIFESTS["RayService"])["spec"]
    serve = yaml.safe_load(spec["serveConfigV2"])
    assert serve == load(INFRA / "serve" / "cluster.yaml"), "serveConfigV2 != infra/serve/cluster.yaml"
    for app_cfg in serve["applications"]:
        module, attr = app_cfg["import_path"].split(":")
        assert callable(getattr(importlib.import_module(module), attr))
        resolve_profile_path(app_cfg["args"]["scorer"]["profile"])
    workers = spec["rayClusterConfig"]["workerGroupSpecs"]
    assert sum(w["minReplicas"] for w in workers) >= 2  # a rolling restart keeps one serving


def test_every_claim_names_the_shared_volume():
    claim = load(INFRA / "kuberay" / "storage.yaml")
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for path in MANIFESTS.values():
        names = re.findall(r"claimName: (\S+)\}", path.read_text())
        assert names and set(names) == {claim["metadata"]["name"]}, path


def test_cluster_launcher_matches_rays_schema():
    import json

    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = load(INFRA / "cluster" / "aws.yaml")
    jsonschema.validate(cfg, schema)
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert all(t.get("min_workers", 0) <= t.get("max_workers", cfg["max_workers"])
               for t in cfg["available_node_types"].values())


def test_dockerfile_pins_and_copies_what_exists():
    from packaging.requirements import Requirement

    text = (INFRA / "docker" / "Dockerfile").read_text()
    base = re.findall(r"^FROM (\S+)", text, re.M)
    assert base and all(re.search(r":\d+\.\d+\.\d+", b) for b in base), base  # no :latest
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for s in src.split():
            assert (REPO_ROOT / s).exists(), f"COPY {s}: not in the repository"
    torch_pin = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch=="))
    assert f"pip install {torch_pin} " in text
    pins = {}
    for line in (INFRA / "docker" / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned (name==version)"
            pins[name.lower().replace("_", "-")] = version
    deps = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["dev"]
    for dep in map(Requirement, deps):
        name = dep.name.lower().replace("_", "-")
        if name == "torch":
            continue
        assert name in pins, f"{dep.name} is a dependency but not in requirements.lock: rerun infra/docker/lock.sh"
        assert dep.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock pins {name}=={pins[name]}, outside {dep}: rerun infra/docker/lock.sh"
