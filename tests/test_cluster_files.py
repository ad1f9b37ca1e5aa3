"""The files in cluster/ (launcher YAMLs, KubeRay manifests, Grafana dashboard, Dockerfile), the
dashboard metrics module and the cluster-related config and storage helpers. No Ray cluster."""

from __future__ import annotations

import copy
import json
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from raydrift.config import all_keys, build_config
from raydrift.errors import ConfigError
from raydrift.metrics import METRICS, MonitorMetrics, RunMetrics
from raydrift.update import copy_run_outputs, is_uri, normalize_storage, run_storage, train_storage

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHERS = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]
RAY_VERSION = ray.__version__
PY_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"  # the images need raydrift's Python


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text(encoding="utf-8"))


# --- cluster launcher -------------------------------------------------------------------------


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_yaml_validates_against_rays_schema(path: Path) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load_yaml(path)
    jsonschema.validate(cfg, ray_schema())  # the file as written
    validate_config(prepare_config(copy.deepcopy(cfg)))  # what `ray up` checks after filling defaults


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_schema_check_rejects_a_broken_copy(path: Path) -> None:
    cfg = load_yaml(path)
    gpu = cfg["available_node_types"]["gpu_worker"]
    gpu["resources"]["GPU"] = 0.5  # the schema wants whole resources
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, ray_schema())
    cfg = load_yaml(path)
    del cfg["available_node_types"]["gpu_worker"]["node_config"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, ray_schema())


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_has_cpu_head_and_autoscaling_gpu_workers(path: Path) -> None:
    cfg = load_yaml(path)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0
    gpu = types["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert gpu["resources"]["GPU"] >= 1
    assert cfg["max_workers"] >= gpu["max_workers"]
    assert cfg["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_images_match_the_installed_ray(path: Path) -> None:
    docker = load_yaml(path)["docker"]
    assert docker["image"] == f"rayproject/ray:{RAY_VERSION}-{PY_TAG}-gpu"
    assert docker["head_image"] == f"rayproject/ray:{RAY_VERSION}-{PY_TAG}-cpu"
    assert "ray-ml" not in path.read_text(encoding="utf-8").replace("ray-ml images", "")


# --- KubeRay ----------------------------------------------------------------------------------
# Required fields of the KubeRay v1 CRDs (ray-project/kuberay ray-operator/config/crd/bases,
# ray.io_rayclusters.yaml and ray.io_rayjobs.yaml). rayStartParams is required before KubeRay 1.4 and
# optional after; the manifests carry it so that they apply to both.
POD_TEMPLATE = {"spec": {"containers": [{"name": None, "image": None}]}}
HEAD_GROUP = {"rayStartParams": None, "template": POD_TEMPLATE}
WORKER_GROUP = {"groupName": None, "minReplicas": None, "maxReplicas": None, "rayStartParams": None, "template": POD_TEMPLATE}
RAYCLUSTER_SPEC = {"headGroupSpec": HEAD_GROUP, "workerGroupSpecs": [WORKER_GROUP]}
REQUIRED = {
    "RayCluster": {"apiVersion": None, "kind": None, "metadata": {"name": None}, "spec": RAYCLUSTER_SPEC},
    "RayJob": {
        "apiVersion": None,
        "kind": None,
        "metadata": {"name": None},
        "spec": {"entrypoint": None, "rayClusterSpec": RAYCLUSTER_SPEC},
    },
}


def missing_fields(doc: Any, required: Any, where: str = "") -> list[str]:
    """Dotted paths of the ``required`` fields absent (or empty) in ``doc``."""
    out: list[str] = []
    if isinstance(required, dict):
        if not isinstance(doc, dict):
            return [where or "."]
        for key, sub in required.items():
            path = f"{where}.{key}" if where else key
            if key not in doc or doc[key] is None or doc[key] == "":
                out.append(path)
            elif sub is not None:
                out.extend(missing_fields(doc[key], sub, path))
    elif isinstance(required, list):
        if not isinstance(doc, list) or not doc:
            return [where]
        for i, item in enumerate(doc):
            out.extend(missing_fields(item, required[0], f"{where}[{i}]"))
    return out


def kuberay_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((CLUSTER / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs.append((path.name, doc))
    return docs


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def test_kuberay_has_a_raycluster_and_a_rayjob() -> None:
    kinds = sorted(doc["kind"] for _, doc in kuberay_docs())
    assert kinds == ["RayCluster", "RayJob"]


@pytest.mark.parametrize("name,doc", kuberay_docs(), ids=lambda x: x if isinstance(x, str) else "")
def test_kuberay_manifest_has_the_crd_required_fields(name: str, doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "ray.io/v1"
    assert missing_fields(doc, REQUIRED[doc["kind"]]) == []


def test_required_field_check_reports_what_is_missing() -> None:
    _, doc = next((n, d) for n, d in kuberay_docs() if d["kind"] == "RayCluster")
    broken = copy.deepcopy(doc)
    del broken["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    del broken["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert missing_fields(broken, REQUIRED["RayCluster"]) == [
        "spec.headGroupSpec.template.spec.containers[0].image",
        "spec.workerGroupSpecs[0].maxReplicas",
    ]


@pytest.mark.parametrize("name,doc", kuberay_docs(), ids=lambda x: x if isinstance(x, str) else "")
def test_kuberay_autoscales_gpu_workers_from_zero(name: str, doc: dict[str, Any]) -> None:
    spec = cluster_spec(doc)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == RAY_VERSION
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (gpu,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1


def test_kuberay_images_are_built_from_the_matching_ray_image() -> None:
    dockerfile = (CLUSTER / "Dockerfile").read_text(encoding="utf-8")
    (base,) = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.M)
    assert base == f"rayproject/ray:{RAY_VERSION}-{PY_TAG}-gpu"
    for _, doc in kuberay_docs():
        spec = cluster_spec(doc)
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for g in groups:
            for c in g["template"]["spec"]["containers"]:
                assert c["image"].endswith(f"-ray{RAY_VERSION}-{PY_TAG}-gpu"), c["image"]


def test_rayjob_runs_raydrift_on_cifar_with_valid_overrides() -> None:
    (doc,) = [d for _, d in kuberay_docs() if d["kind"] == "RayJob"]
    words = doc["spec"]["entrypoint"].split()
    assert words[:3] == ["raydrift", "run", "configs/cifar.yaml"]
    overrides = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    assert any(o.startswith("ray.storage_path=s3://") for o in overrides)
    assert "ray.autoscaling=true" in overrides  # GPU workers start at 0
    cfg = build_config(ROOT / words[2], overrides)  # the config and every override are valid
    assert cfg.ray.autoscaling and cfg.ray.storage_path is not None


# --- Grafana ----------------------------------------------------------------------------------


def grafana_exprs() -> list[str]:
    dash = json.loads((CLUSTER / "grafana" / "raydrift-dashboard.json").read_text(encoding="utf-8"))
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_grafana_dashboard_plots_every_raydrift_metric_and_nothing_else() -> None:
    exprs = grafana_exprs()
    used = {m for e in exprs for m in re.findall(r"\bray_raydrift_[a-z_]+", e)}
    known = set()
    for spec in METRICS.values():
        base = spec.prometheus_name
        known |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"} if spec.kind == "histogram" else {base}
    assert used <= known, f"unknown metrics in the dashboard: {sorted(used - known)}"
    for spec in METRICS.values():
        assert any(spec.prometheus_name in e for e in exprs), f"{spec.name} is not plotted"


# --- metrics module ---------------------------------------------------------------------------


def test_metric_names_are_prometheus_safe_and_prefixed() -> None:
    for name, spec in METRICS.items():
        assert name == spec.name and re.fullmatch(r"raydrift_[a-z_]+", name)
        assert spec.kind != "histogram" or list(spec.boundaries) == sorted(spec.boundaries)
    assert METRICS["raydrift_updates"].prometheus_name == "ray_raydrift_updates_total"
    assert METRICS["raydrift_model_version"].prometheus_name == "ray_raydrift_model_version"


def test_recorders_are_no_ops_outside_ray_and_pickle() -> None:
    assert not ray.is_initialized()
    run = RunMetrics("r", "accuracy")
    mon = MonitorMetrics("monitor-0")
    run.interval(0.5)
    run.throughput(10.0)
    run.drift("adwin")
    run.update({"version": 1, "strategy": "replay", "total_seconds": 1.0})
    mon.batch(64, 0.01)
    mon.version(1)
    assert not run.enabled and not mon.enabled
    clone = pickle.loads(pickle.dumps(run))
    assert (clone.run, clone.metric, clone._handles, clone._gauges) == ("r", "accuracy", {}, {})
    assert not RunMetrics("r", "accuracy", enabled=False).enabled


# --- config and storage -----------------------------------------------------------------------


def test_cluster_config_keys_exist() -> None:
    keys = set(all_keys())
    assert {"monitor.resources", "monitor.scheduling", "ray.storage_path"} <= keys
    cfg = build_config(
        None, ["monitor.resources={monitor_node: 1}", "monitor.scheduling=spread", "ray.storage_path=gs://b/p"]
    )
    assert cfg.monitor.resources == {"monitor_node": 1.0} and cfg.monitor.scheduling == "spread"


@pytest.mark.parametrize(
    "override,needle",
    [
        ("monitor.resources={GPU: 1}", "monitor.num_gpus"),
        ("monitor.resources={slot: -1}", ">= 0"),
        ("monitor.scheduling=pack", "'default' or 'spread'"),
        ("ray.storage_path=ftp://host/x", "unsupported scheme 'ftp://'"),
    ],
)
def test_cluster_config_mistakes_are_one_line_errors(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(None, [override])
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


def test_storage_paths(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "demo-1"
    assert is_uri("s3://b/p") and is_uri("gs://b") and not is_uri("/data/x")
    assert normalize_storage("s3://bucket/prefix/") == "s3://bucket/prefix"
    assert run_storage(None, run_dir) == str(run_dir.resolve())
    assert train_storage("s3://bucket/raydrift/", run_dir) == "s3://bucket/raydrift/demo-1/train"
    assert train_storage("rel", run_dir) == str(Path("rel").resolve() / "demo-1" / "train")


def test_copy_run_outputs_to_a_local_storage_path(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "demo-1"
    (run_dir / "plots").mkdir(parents=True)
    (run_dir / "summary.json").write_text("{}")
    (run_dir / "plots" / "a.png").write_bytes(b"png")
    store = tmp_path / "store"
    (store / "demo-1" / "train").mkdir(parents=True)  # the checkpoints Ray Train put there
    dest = copy_run_outputs(run_dir, str(store))
    assert dest == str(store / "demo-1")
    got = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
    assert got == ["demo-1/plots/a.png", "demo-1/summary.json"]
    assert (store / "demo-1" / "train").is_dir()
    assert copy_run_outputs(run_dir, None) is None
    assert copy_run_outputs(run_dir, str(tmp_path / "runs")) is None  # storage is the runs dir itself


def test_every_metric_is_tagged_with_its_run_and_every_panel_filters_by_it() -> None:
    from raydrift.metrics import METRICS

    assert all("run" in spec.tag_keys for spec in METRICS.values())
    for expr in grafana_exprs():
        assert 'run=~"$run"' in expr, expr


def test_the_image_copies_every_file_pyproject_names_as_a_license() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    dockerfile = (CLUSTER / "Dockerfile").read_text(encoding="utf-8")
    copied = {w for line in dockerfile.splitlines() if line.startswith("COPY") for w in line.split()}
    assert set(project.get("license-files", [])) <= copied
