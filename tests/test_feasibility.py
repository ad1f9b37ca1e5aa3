"""Feasibility on an autoscaling cluster, from fake node-type tables (no Ray)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from raydrift.config import build_config
from raydrift.errors import UserError
from raydrift.feasibility import (
    UNLIMITED,
    NodeType,
    check_feasible,
    node_types_from_autoscaling_config,
    node_types_from_cluster_config,
    pending_line,
)

HEAD = NodeType("head", {"CPU": 0.0}, 1)
CPU_NODE = NodeType("cpu", {"CPU": 2.0, "memory": 4e9}, 2)
GPU_NODE = NodeType("gpu", {"CPU": 1.0, "GPU": 1.0}, 1)
TYPES = [HEAD, CPU_NODE, GPU_NODE]


def cfg(*overrides: str):  # type: ignore[no-untyped-def]
    return build_config(None, ["ray.autoscaling=true", *overrides])


@pytest.mark.parametrize(
    "overrides",
    [
        ["monitor.num_monitors=2", "monitor.num_gpus=0.5", "monitor.num_cpus=0.5"],  # both on the GPU node
        ["monitor.num_monitors=5", "monitor.num_cpus=1", "train.num_workers=0"],  # 2+2+1 CPUs, three nodes
        ["train.num_workers=2", "train.use_gpu=false", "monitor.num_monitors=2", "monitor.num_cpus=0.5"],
    ],
)
def test_requests_some_node_types_can_hold_pass(overrides: list[str]) -> None:
    check_feasible(cfg(*overrides), TYPES)


def test_a_monitor_larger_than_every_node_type_is_refused_in_one_line() -> None:
    with pytest.raises(UserError) as err:
        check_feasible(cfg("monitor.num_gpus=2"), TYPES, "the test cluster")
    msg = str(err.value)
    assert "\n" not in msg
    assert "a monitor asks for {CPU: " in msg and "GPU: 2}" in msg and "the test cluster" in msg
    assert "gpu {CPU: 1, GPU: 1} x1" in msg and "monitor.num_cpus/num_gpus/resources" in msg
    assert "memory" not in msg  # memory is not what the user sets


def test_a_train_worker_larger_than_every_node_type_is_refused() -> None:
    with pytest.raises(UserError, match="a train worker asks for .*GPU: 2.*train.cpus_per_worker/gpus_per_worker"):
        check_feasible(cfg("train.num_workers=1", "train.use_gpu=true", "train.gpus_per_worker=2"), TYPES)


def test_a_custom_resource_no_node_type_declares_is_refused() -> None:
    with pytest.raises(UserError, match="a monitor asks for .*accel: 1"):
        check_feasible(cfg("monitor.resources={accel: 1}"), TYPES)


def test_more_in_total_than_all_node_types_at_their_maxima_is_refused() -> None:
    # each monitor fits on a node, but 6 x 1 CPU > 2 x 2 + 1 CPUs
    with pytest.raises(UserError, match=r"needs 6 CPU at once .* has 5 "):
        check_feasible(cfg("monitor.num_monitors=6", "monitor.num_cpus=1", "train.num_workers=0"), TYPES)
    # the same with no bound on the CPU node type is fine
    check_feasible(cfg("monitor.num_monitors=6", "monitor.num_cpus=1", "train.num_workers=0"), [HEAD, NodeType("cpu", {"CPU": 2.0}, UNLIMITED)])


def test_no_node_types_known_refuses_nothing() -> None:
    check_feasible(cfg("monitor.num_gpus=8"), [])
    check_feasible(cfg("monitor.num_gpus=8"), [NodeType("never", {"GPU": 8.0}, 0)])  # max 0: ignored, nothing left


def test_node_types_from_an_autoscaling_config_file() -> None:
    config = {
        "max_workers": 3,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 2}, "min_workers": 0, "max_workers": 8},  # capped by max_workers: 3
            "gpu": {"resources": {"CPU": 1, "GPU": 1}},  # no own max: the cluster's
        },
    }
    types = node_types_from_autoscaling_config(config)
    assert types == [
        NodeType("head", {"CPU": 0.0}, 1.0),
        NodeType("cpu", {"CPU": 2.0}, 3.0),
        NodeType("gpu", {"CPU": 1.0, "GPU": 1.0}, 3.0),
    ]
    # a type whose resources the autoscaler detects from the instance type: unknown, nothing is checked
    del config["available_node_types"]["gpu"]["resources"]  # type: ignore[index]
    assert node_types_from_autoscaling_config(config) is None


def test_node_types_from_the_gcs_cluster_config() -> None:
    groups = [
        SimpleNamespace(name="cpu", resources={"CPU": 4}, max_count=2),
        SimpleNamespace(name="", resources={"GPU": 1, "CPU": 8}, max_count=-1),
    ]
    types = node_types_from_cluster_config(SimpleNamespace(node_group_configs=groups))
    assert types == [NodeType("cpu", {"CPU": 4.0}, 2.0), NodeType("group-1", {"GPU": 1.0, "CPU": 8.0}, UNLIMITED)]
    assert node_types_from_cluster_config(None) is None


def test_pending_line_says_what_the_autoscaler_does() -> None:
    status = {
        "autoscaler_report": {
            "pending_launches": {"gpu_node": 1},
            "pending_nodes": [["10.0.0.3", "cpu_node", "waiting-for-ssh"]],
            "failed_nodes": [],
        },
        "load_metrics_report": {"resource_demand": [[{"CPU": 0.5, "GPU": 0.5}, 2]]},
    }
    line = pending_line(json.dumps(status))
    assert line == "demand {CPU: 0.5, GPU: 0.5} x2; launching gpu_node x1; 1 node(s) starting (cpu_node)"
    assert pending_line(json.dumps({"autoscaler_report": {}})) == ""
    assert pending_line(None) == "" and pending_line(b"not json") == ""


@pytest.mark.parametrize("launcher", ["aws.yaml", "gcp.yaml"])
def test_the_launcher_configs_refuse_two_gpus_per_monitor(launcher: str) -> None:
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[1] / "cluster" / launcher
    types = node_types_from_autoscaling_config(yaml.safe_load(path.read_text()))
    assert types is not None and max(t.resources.get("GPU", 0.0) for t in types) == 1.0
    check_feasible(cfg("monitor.num_gpus=0.5"), types)
    with pytest.raises(UserError, match="no node type"):
        check_feasible(cfg("monitor.num_gpus=2"), types)
