"""KubeRay rendering: a RayCluster shaped like the fleet (valid against KubeRay's CRD) and the controller Job."""

from __future__ import annotations

import json

import pytest
import yaml
from k8s_support import by_kind, crd_validator, example, validate

from orchestrator.render.kuberay import RAY_CLIENT_PORT, kuberay_objects, ray_start_params
from orchestrator.spec.plan import Plan

pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (the k8s extra)")


def test_every_kuberay_object_validates_strictly(example_name):
    plan, catalog, fleet = example(example_name)
    result = kuberay_objects(plan, catalog, fleet=fleet)
    assert crd_validator("ray.io/v1", "RayCluster") is not None
    for obj in result.objects:
        validate(obj)


def test_one_worker_group_per_kubernetes_pool_declaring_the_profiles_ray_resources():
    plan, catalog, fleet = example("vendors")
    (cluster,) = by_kind(kuberay_objects(plan, catalog, fleet=fleet).objects, "RayCluster").values()
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert sorted(groups) == ["ascend", "metax", "mlu370", "s4000"]  # the Macs are not pods
    for pool in fleet.spec.pools:
        if pool.name not in groups:
            continue
        profile = catalog.profile(pool.hardware)
        g = groups[pool.name]
        assert g["replicas"] == g["minReplicas"] == g["maxReplicas"] == pool.nodes
        devices = profile.spec.devices_per_node
        declared = profile.spec.ray.node_resources(devices)
        params = g["rayStartParams"]
        custom = json.loads(json.loads(params["resources"]))
        assert {k: v for k, v in declared.items() if k not in ("CPU", "GPU")} == custom
        if "GPU" in declared:
            assert float(params["num-gpus"]) == declared["GPU"]
        (c,) = g["template"]["spec"]["containers"]
        assert c["resources"]["limits"][profile.spec.kubernetes.resource] == devices


def test_emulated_pools_declare_the_declared_hardware_to_ray_but_request_no_device():
    plan, catalog, fleet = example("local")
    (cluster,) = by_kind(kuberay_objects(plan, catalog, fleet=fleet).objects, "RayCluster").values()
    gpu = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu-emu")
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    assert "limits" not in gpu["template"]["spec"]["containers"][0]["resources"]
    assert gpu["template"]["metadata"]["labels"]["moxin.dev/emulated"] == "true"


def test_the_job_runs_moxin_apply_on_the_plan_against_the_head():
    plan, catalog, fleet = example("maas")
    result = kuberay_objects(plan, catalog, fleet=fleet, namespace="serving")
    (job,) = by_kind(result.objects, "Job").values()
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"][:4] == ["moxin", "apply", "-f", "/etc/moxin/plan.yaml"]
    assert c["command"][-1] == f"ray://moxin-maas-head-svc.serving.svc:{RAY_CLIENT_PORT}"
    (cm,) = [o for o in result.objects if o["kind"] == "ConfigMap"]
    assert Plan.model_validate(yaml.safe_load(cm["data"]["plan.yaml"])) == plan
    assert any("mac-studio" in w and "ray start --address" in w for w in result.warnings)
    assert any("h200" in w and "--image h200=" in w for w in result.warnings)


def test_ray_start_params_never_put_cpu_or_gpu_in_resources():
    _, catalog, _ = example("maas")
    params = ray_start_params(catalog.profile("nvidia-h100-sxm"), 8)
    assert params["num-gpus"] == "8"
    assert "GPU" not in json.loads(json.loads(params["resources"]))
    cpu = ray_start_params(catalog.profile("cpu-x86"), 1)
    assert cpu["num-cpus"] == "1"
