"""KubeRay rendering: a RayCluster shaped like the fleet (valid against KubeRay's CRD) and the controller Job."""

from __future__ import annotations

import json

import pytest
import yaml
from k8s_support import by_kind, crd_validator, example, rendered, validate

from orchestrator.render.helm import RenderError, deep_merge
from orchestrator.render.kuberay import RAY_CLIENT_PORT, kuberay_objects, kuberay_values, ray_start_params
from orchestrator.render.kubernetes import chart_dir, render_chart
from orchestrator.spec.plan import Plan

pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (the k8s extra)")
helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the k8s extra)")


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
    resources = gpu["template"]["spec"]["containers"][0]["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}  # engine.emulatedResources, as for emulated engine pods
    assert set(resources["limits"]) == {"memory"}
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


# ------------------------------------------------------------- the Ray pods share the engine pods' helpers

def _worker_groups(objects):
    (cluster,) = by_kind(objects, "RayCluster").values()
    return {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}, cluster["spec"]["headGroupSpec"]


def test_ray_worker_pods_are_placed_like_the_engine_pods_of_the_same_pool():
    plan, catalog, fleet = example("vendors")
    groups, _ = _worker_groups(kuberay_objects(plan, catalog, fleet=fleet).objects)
    values, objects = rendered("vendors")
    checked = 0
    for a in values["assignments"]:
        engine = by_kind(objects, a["kind"])[a["id"]]["spec"]["template"]["spec"]
        worker = groups[a["pool"]]["template"]["spec"]
        for key in ("nodeSelector", "tolerations", "runtimeClassName", "securityContext",
                    "automountServiceAccountToken", "enableServiceLinks"):
            assert worker.get(key) == engine.get(key), (a["pool"], key)
        (c,) = worker["containers"]
        (e,) = engine["containers"]
        assert a["deviceResource"] in c["resources"]["limits"]  # the node's devices (an engine pod: a replica's)
        assert {k: v for k, v in c["resources"]["requests"].items() if "/" not in k} == \
            {k: v for k, v in e["resources"]["requests"].items() if "/" not in k}
        assert c["securityContext"] == {k: v for k, v in e["securityContext"].items() if k != "readOnlyRootFilesystem"}
        checked += 1
    assert checked


def test_a_vendor_security_override_reaches_the_ray_workers_holding_those_devices():
    plan, catalog, fleet = example("vendors")
    values = kuberay_values(plan, catalog, fleet=fleet).values
    override = {"runAsUser": 0, "runAsNonRoot": False, "readOnlyRootFilesystem": True}
    objects = render_chart(deep_merge(values, {"engine": {"securityOverrides": {"huawei.com/Ascend910": override}}}))
    groups, _ = _worker_groups(objects)
    (ascend,) = groups["ascend"]["template"]["spec"]["containers"]
    assert ascend["securityContext"] == {"runAsUser": 0, "runAsNonRoot": False}  # Ray nodes keep a writable root
    (metax,) = groups["metax"]["template"]["spec"]["containers"]
    assert metax["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    (job,) = by_kind(objects, "Job").values()
    (apply,) = job["spec"]["template"]["spec"]["containers"]
    assert apply["securityContext"]["readOnlyRootFilesystem"] is True


def test_ray_pods_mount_shared_memory_and_the_models_claim_of_the_chart():
    plan, catalog, fleet = example("maas")
    values = kuberay_values(plan, catalog, fleet=fleet, model_root="/ckpt", models_claim="ckpts").values
    objects = render_chart(deep_merge(values, {"engine": {"sharedMemorySize": "64Gi"}}))
    groups, head = _worker_groups(objects)
    for spec in [head["template"]["spec"], *(g["template"]["spec"] for g in groups.values())]:
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
        assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "ckpts"
        (c,) = spec["containers"]
        assert {"name": "models", "mountPath": "/ckpt"} in c["volumeMounts"]


def test_every_kuberay_object_carries_the_charts_labels():
    plan, catalog, fleet = example("multinode")
    for obj in kuberay_objects(plan, catalog, fleet=fleet).objects:
        labels = obj["metadata"]["labels"]
        assert labels["moxin.dev/plan"] == plan.name
        assert labels["app.kubernetes.io/managed-by"] == "moxin"
        assert {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
                "helm.sh/chart"} <= set(labels)


def test_kuberay_mode_renders_no_engine_router_or_monitoring_objects():
    plan, catalog, fleet = example("maas")
    kinds = [o["kind"] for o in kuberay_objects(plan, catalog, fleet=fleet).objects]
    assert kinds == ["ConfigMap", "Service", "RayCluster", "Job"]


def test_kuberay_mode_refuses_object_storage_and_incomplete_values():
    plan, catalog, fleet = example("local")
    values = kuberay_values(plan, catalog, fleet=fleet).values
    store = {"modelStorage": {"type": "objectStore", "objectStore": {"remote": ":s3:models"}}}
    with pytest.raises(RenderError, match="kuberay needs modelStorage.type pvc"):
        render_chart(deep_merge(values, store))
    with pytest.raises(RenderError, match="refused"):
        render_chart({"kuberay": {"enabled": True}})


def test_helm_lint_with_kuberay_values_reports_no_errors():
    plan, catalog, fleet = example("vendors")
    values = kuberay_values(plan, catalog, fleet=fleet).values
    report = helm.lint(str(chart_dir()), values, kube_version="v1.33.0", namespace="moxin")
    assert [m for m in report["messages"] if m["severity"] >= 3] + report["errors"] == []
