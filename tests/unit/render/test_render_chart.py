"""The helm/moxin chart rendered from real plans: every object valid (strict), and exactly what the plan says."""

from __future__ import annotations

import json
import math

import pytest
from k8s_support import BAD_VALUES, VENDOR_IMAGES, by_kind, crd_validator, example, rendered, validate

from orchestrator.observe.alerts import rules_document
from orchestrator.render.helm import (
    RenderError,
    assignment_ids,
    devices_per_pod,
    helm_values,
    router_config,
)
from orchestrator.render.kubernetes import chart_dir, render_chart
from orchestrator.spec.metrics import SCRAPE_JOBS

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the k8s extra)")


def _workload(objects, a_values):
    kind = a_values["kind"]
    return by_kind(objects, kind)[a_values["id"]]


def _engine_pod_specs(obj):
    """(role, pod spec) of a workload: the Deployment's pod, or the LeaderWorkerSet's leader and worker."""
    if obj["kind"] == "Deployment":
        return [("pod", obj["spec"]["template"]["spec"])]
    t = obj["spec"]["leaderWorkerTemplate"]
    return [("leader", t["leaderTemplate"]["spec"]), ("worker", t["workerTemplate"]["spec"])]


def test_helm_lint_reports_no_errors():
    report = helm.lint(str(chart_dir()), kube_version="v1.33.0")
    errors = [m for m in report["messages"] if m["severity"] >= 3] + report["errors"]
    assert errors == [], errors


def test_helm_lint_with_plan_values_reports_no_errors():
    values, _ = rendered("multinode")
    report = helm.lint(str(chart_dir()), values, kube_version="v1.33.0", namespace="moxin")
    assert [m for m in report["messages"] if m["severity"] >= 3] + report["errors"] == []


def test_chart_renders_with_its_default_values_alone():
    objects = render_chart(None, namespace="default")
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "ServiceMonitor"} <= kinds
    for obj in objects:
        validate(obj)


def test_each_dashboard_is_a_configmap_for_the_grafana_sidecar_holding_the_generated_json():
    from orchestrator.observe.dashboards import dashboards

    _, objects = rendered("local")
    maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap" and "grafana_dashboard" in
            o["metadata"]["labels"]}
    assert sorted(maps) == ["moxin-dashboard-controller", "moxin-dashboard-deployment-slo", "moxin-dashboard-engines",
                            "moxin-dashboard-fleet", "moxin-dashboard-pools"]
    shipped = {name: json.loads(text) for m in maps.values() for name, text in m["data"].items()}
    assert shipped == dashboards()
    assert all(m["metadata"]["annotations"] == {"grafana_folder": "moxin"} for m in maps.values())


def test_every_object_of_every_example_plan_validates_strictly(example_name):
    _, objects = rendered(example_name)
    assert objects
    for obj in objects:
        if obj["kind"] in ("LeaderWorkerSet", "PodMonitor", "ServiceMonitor", "PrometheusRule"):
            assert crd_validator(obj["apiVersion"], obj["kind"]) is not None, obj["kind"]
        validate(obj)


def test_strict_validation_rejects_an_unknown_field():
    _, objects = rendered("multinode")
    lws = dict(by_kind(objects, "LeaderWorkerSet").popitem()[1])
    lws["spec"] = {**lws["spec"], "replicaz": 3}
    with pytest.raises(Exception, match="replicaz"):
        validate(lws)
    dep = dict(by_kind(objects, "Deployment").popitem()[1])
    dep["spec"] = {**dep["spec"], "replicaz": 3}
    with pytest.raises(Exception, match="replicaz"):
        validate(dep)


def test_workloads_agree_with_the_plan(example_name):
    plan, catalog, _ = example(example_name)
    values, objects = rendered(example_name)
    engines = {a["id"]: a for a in values["assignments"]}
    external = {a["id"] for a in values["externalAssignments"]}
    assert len(engines) + len(external) == len(plan.spec.assignments)
    for a, name in zip(plan.spec.assignments, assignment_ids(plan.spec.assignments), strict=True):
        launch = a.launch
        if name in external:
            continue  # an external (Apple) assignment, checked below
        v = engines[name]
        assert (v["deployment"], v["variant"], v["pool"]) == (a.deployment, a.variant, a.pool)
        obj = _workload(objects, v)
        group = a.nodes_per_replica()
        assert obj["kind"] == ("LeaderWorkerSet" if group > 1 else "Deployment")
        assert obj["spec"]["replicas"] == a.replicas
        if group > 1:
            assert obj["spec"]["leaderWorkerTemplate"]["size"] == group
        profile = catalog.profile(a.hardware)
        resource = profile.spec.kubernetes.resource
        for role, pod in _engine_pod_specs(obj):
            (c,) = pod["containers"]
            assert c["image"] == (launch.image or VENDOR_IMAGES.get(f"{launch.engine}/{launch.platform}")
                                  or c["image"])
            if launch.image:
                assert c["image"] == launch.image
            limits = c["resources"].get("limits", {})
            if a.emulated or resource is None:
                assert not [k for k in limits if "/" in k], "emulated pools request no vendor device"
            else:
                assert limits[resource] == devices_per_pod(a)
                assert c["resources"]["requests"][resource] == devices_per_pod(a)
                assert sum(len(p.devices) for p in a.placements) == a.replicas * a.devices_per_replica
                assert {"key": resource, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            for k, val in launch.env.items():
                assert {"name": k, "value": val} in c["env"]
            if profile.spec.kubernetes.node_selector and not a.emulated:
                assert profile.spec.kubernetes.node_selector.items() <= pod["nodeSelector"].items()
            assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
            if role == "worker":
                assert '"$LWS_LEADER_ADDRESS"' in c["command"][2] and "--headless" not in c["command"][2]
                assert "orchestrator.engines.vllm_headless" in c["command"][2]
                continue
            if role == "pod":
                assert c["command"] == launch.argv
            else:
                assert c["command"][:2] == ["/bin/sh", "-c"] and "--node-rank 0" in c["command"][2]
                assert c["args"] == launch.argv
                assert launch.argv[launch.argv.index("--distributed-executor-backend") + 1] == "mp"
            assert c["ports"][0]["containerPort"] == launch.port
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert c[probe]["httpGet"]["path"] == launch.health_path
            start = c["startupProbe"]
            assert start["periodSeconds"] * start["failureThreshold"] >= launch.readiness_timeout_seconds


def test_emulated_pools_run_on_cpu_and_say_so():
    values, objects = rendered("local")
    for v in values["assignments"]:
        obj = _workload(objects, v)
        assert obj["metadata"]["labels"]["moxin.dev/emulated"] == "true"
        (c,) = obj["spec"]["template"]["spec"]["containers"]
        assert set(c["resources"]["requests"]) == {"cpu", "memory"}
        assert "nodeSelector" not in obj["spec"]["template"]["spec"]  # not the declared H100's node labels


def test_every_object_carries_the_labels_moxin_prunes_and_selects_by(example_name):
    plan, _, _ = example(example_name)
    _, objects = rendered(example_name)
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "moxin"
        assert labels["app.kubernetes.io/instance"] == "moxin"
        assert labels["app.kubernetes.io/managed-by"]
        assert labels["moxin.dev/plan"] == plan.metadata.name
        if obj["kind"] != "ServiceAccount" and labels.get("app.kubernetes.io/component") == "engine":
            assert {"moxin.dev/assignment", "moxin.dev/deployment", "moxin.dev/pool", "moxin.dev/variant"} <= set(labels)


def test_every_assignment_has_a_service_a_budget_and_a_monitor_when_it_serves_metrics(example_name):
    values, objects = rendered(example_name)
    services, pdbs, monitors = by_kind(objects, "Service"), by_kind(objects, "PodDisruptionBudget"), \
        by_kind(objects, "PodMonitor")
    for v in values["assignments"]:
        svc = services[v["id"]]
        assert svc["spec"]["ports"][0]["port"] == v["port"]
        assert svc["spec"]["selector"]["moxin.dev/assignment"] == v["id"]
        if v["kind"] == "LeaderWorkerSet":
            assert svc["spec"]["selector"]["moxin.dev/role"] == "leader"
        assert pdbs[v["id"]]["spec"]["maxUnavailable"] == 1
        assert (v["id"] in monitors) == bool(v["metricsPath"])
        if v["metricsPath"]:
            assert monitors[v["id"]]["spec"]["podMetricsEndpoints"][0]["path"] == v["metricsPath"]



def test_monitors_give_targets_the_job_names_file_sd_gives_them_on_ray():
    _, objects = rendered("multinode")
    relabel = {o["kind"]: [e["relabelings"] for e in o["spec"].get("podMetricsEndpoints", o["spec"].get("endpoints"))]
               for o in objects if o["kind"] in ("PodMonitor", "ServiceMonitor")}
    assert relabel["PodMonitor"] == [[{"targetLabel": "job", "replacement": SCRAPE_JOBS["engine"]}]]
    assert relabel["ServiceMonitor"] == [[{"targetLabel": "job", "replacement": SCRAPE_JOBS["router"]}]]


def test_the_router_is_scraped_on_the_parents_metrics_port_unless_it_runs_one_process():
    """router.workers auto (the default) or past 1: the http port answers with one worker's series, the parent's
    metrics port with every worker's."""
    values, objects = rendered("multinode")
    (monitor,) = by_kind(objects, "ServiceMonitor").values()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    for workers, port in ((4, "metrics"), (1, "http")):
        objects = render_chart({**values, "router": {**values["router"], "workers": workers}})
        (monitor,) = by_kind(objects, "ServiceMonitor").values()
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port]
        (c,) = by_kind(objects, "Deployment")["moxin-router"]["spec"]["template"]["spec"]["containers"]
        assert ("--workers" in c["command"]) == (workers != 1)


def test_the_prometheus_rule_holds_the_generated_rules_scoped_to_the_release_namespace():
    _, objects = rendered("multinode", namespace="serving")
    (rule,) = by_kind(objects, "PrometheusRule").values()
    assert rule["metadata"]["namespace"] == "serving"
    assert rule["spec"] == rules_document(namespace="serving")  # $labels templates untouched by Helm


def test_apple_pools_become_a_selectorless_service_and_an_endpointslice_of_the_placed_macs():
    plan, _, _ = example("maas")
    _, objects = rendered("maas")
    (mac,) = [a for a in plan.spec.assignments if a.pool == "mac-studio"]
    name = "qwen3-30b-mlx-3bit-mac-studio"
    svc = by_kind(objects, "Service")[name]
    assert "selector" not in svc["spec"]
    slices = [o for o in objects if o["kind"] == "EndpointSlice"
              and o["metadata"]["labels"]["kubernetes.io/service-name"] == name]
    assert [s["addressType"] for s in slices] == ["FQDN"]
    assert [e["addresses"][0] for e in slices[0]["endpoints"]] == [p.node for p in mac.placements]
    assert slices[0]["ports"][0]["port"] == mac.launch.port
    _, vendor_objects = rendered("vendors")
    ip_slices = [o for o in vendor_objects if o["kind"] == "EndpointSlice"]
    assert {s["addressType"] for s in ip_slices} == {"IPv4"}
    assert sorted(e["addresses"][0] for s in ip_slices for e in s["endpoints"]) == ["10.0.0.11", "10.0.0.12"]


def test_router_configmap_holds_the_router_config_of_the_plan(example_name):
    plan, _, _ = example(example_name)
    _, objects = rendered(example_name)
    config = json.loads(by_kind(objects, "ConfigMap")["moxin-router"]["data"]["router.json"])
    assert config == router_config(plan, "moxin")
    by_id = dict(zip(assignment_ids(plan.spec.assignments), plan.spec.assignments, strict=True))
    for name, routes in config["deployments"].items():
        for route in routes:
            a = by_id[route["name"]]
            assert a.deployment == name
            assert route["url"] == f"http://{route['name']}.moxin.svc:{a.launch.port}"
            assert math.isclose(route["weight"], a.predicted.capacity_requests_per_second * a.replicas)
            assert route["requestModel"] == a.launch.request_model
            assert route["labels"]["emulated"] in ("true", "false")
    router = by_kind(objects, "Deployment")["moxin-router"]
    (c,) = router["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["moxin", "router", "--config", "/etc/moxin/router.json", "--host", "0.0.0.0",
                            "--port", "8080", "--circuit-cooldown-seconds", "10", "--circuit-failure-threshold", "5",
                            "--client-timeout-seconds", "60", "--connect-timeout-seconds", "5", "--drain-seconds", "25",
                            "--first-byte-timeout-seconds", "300", "--health-check-interval-seconds", "5",
                            "--health-check-timeout-seconds", "2", "--idle-timeout-seconds", "60", "--key-burst", "0",
                            "--key-requests-per-second", "0", "--max-concurrent-requests", "0",
                            "--max-connections-per-replica", "256", "--max-queued-requests", "0",
                            "--queue-timeout-seconds", "30", "--retry-attempts", "3",
                            "--retry-backoff-max-seconds", "0.5", "--retry-backoff-seconds", "0.005",
                            "--workers", "auto", "--metrics-port", "9091"]
    assert [p["name"] for p in c["ports"]] == ["http", "metrics"]
    service = by_kind(objects, "Service")["moxin-router"]
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("http", 8080), ("metrics", 9091)]
    # preStop sleeps 5 s (endpoints go first), then SIGTERM and 25 s of drain, then 5 s more before SIGKILL
    assert c["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "5"]}}}
    assert router["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 35


def test_router_limits_reach_moxin_router_as_flags_it_accepts(tmp_path, monkeypatch):
    """Every key of router.limits becomes the flag of the same name, which `moxin router` parses back into the same
    limits (one model, spec/router.py, on both sides)."""
    from click.testing import CliRunner

    import orchestrator.runtime.dataplane as router_module
    import orchestrator.runtime.workers as workers_module
    from orchestrator.cli import cli
    from orchestrator.spec.router import RouterLimits

    values, _ = rendered("multinode")
    limits = {"connectTimeoutSeconds": 0.5, "firstByteTimeoutSeconds": 1200, "idleTimeoutSeconds": 90.5,
              "maxConnectionsPerReplica": 8, "drainSeconds": 40.2}
    objects = render_chart({**values, "router": {**values["router"], "limits": limits}}, namespace="moxin")
    pod = by_kind(objects, "Deployment")["moxin-router"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 51  # preStopSeconds 5 + ceil(40.2) + 5
    (c,) = pod["containers"]
    flags = c["command"][c["command"].index("--port") + 2:]
    assert flags[-4:] == ["--workers", "auto", "--metrics-port", "9091"]
    parsed = {}
    monkeypatch.setattr(router_module, "run_from_config", lambda *_a, limits=None, **_k: parsed.update(limits=limits))
    # router.workers auto: the parent passes the limits on to each worker as JSON (runtime/router_worker.py)
    monkeypatch.setattr(workers_module, "supervise", lambda spec, n, host, port, metrics_port: parsed.update(
        workers=RouterLimits.model_validate(spec["limits"]), metrics_port=metrics_port))
    config = tmp_path / "router.json"
    config.write_text(json.dumps({"deployments": {}}))
    out = CliRunner().invoke(cli, ["router", "--config", str(config), *flags])
    assert out.exit_code == 0, out.output
    assert parsed == {"workers": RouterLimits.model_validate(limits), "metrics_port": 9091}
    out = CliRunner().invoke(cli, ["router", "--config", str(config), *flags[:-4]])  # router.workers 1
    assert out.exit_code == 0, out.output
    assert parsed["limits"] == RouterLimits.model_validate(limits)


def test_vendor_resources_and_runtime_settings_come_from_the_profiles():
    _, catalog, _ = example("vendors")
    values, objects = rendered("vendors")
    seen = set()
    for v in values["assignments"]:
        (c,) = _workload(objects, v)["spec"]["template"]["spec"]["containers"]
        resource = catalog.profile(v["hardware"]).spec.kubernetes.resource
        assert c["resources"]["limits"][resource] == v["devicesPerPod"]
        seen.add(resource)
    assert {"cambricon.com/mlu", "mthreads.com/gpu", "huawei.com/Ascend910", "metax-tech.com/gpu"} <= seen


def test_names_are_dns_labels_even_for_models_with_dots():
    plan, _, _ = example("maas")
    _, objects = rendered("maas")
    names = [o["metadata"]["name"] for o in objects]
    air = [n for n in assignment_ids(plan.spec.assignments) if n.startswith("glm-45-air-")]  # model glm-4.5-air
    assert air and set(air) <= set(names)
    assert all("." not in n and n == n.lower() and len(n) <= 63 for n in names)


def test_hub_token_comes_from_a_secret_never_inline():
    values, _ = rendered("maas")
    objects = render_chart({**values, "hubToken": {"secretName": "hf", "key": "token"}})
    for dep in by_kind(objects, "Deployment").values():
        if dep["metadata"]["labels"].get("app.kubernetes.io/component") != "engine":
            continue
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        (token,) = [e for e in c["env"] if e["name"] == "HF_TOKEN"]
        assert token == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token",
                                                                             "optional": True}}}


def test_object_store_option_fetches_local_checkpoints_in_an_init_container():
    values, _ = rendered("local")
    store = {"type": "objectStore", "objectStore": {"remote": ":s3:models", "secretName": "s3"}}
    objects = render_chart({**values, "modelStorage": store})
    for v in values["assignments"]:
        pod = by_kind(objects, "Deployment")[v["id"]]["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        assert init["args"][-2:] == [f":s3:models/{v['modelSubPath']}", f"/models/{v['modelSubPath']}"]
        assert {"name": "models", "emptyDir": {"sizeLimit": "500Gi"}} in pod["volumes"]
    for obj in objects:
        validate(obj)


def test_engine_containers_are_restricted_unless_a_vendor_override_says_otherwise():
    values, objects = rendered("vendors")
    for v in values["assignments"]:
        (c,) = _workload(objects, v)["spec"]["template"]["spec"]["containers"]
        assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}}
    override = {"huawei.com/Ascend910": {"runAsUser": 0, "runAsNonRoot": False}}
    objects = render_chart({**values, "engine": {"securityOverrides": override}})
    ascend = next(v for v in values["assignments"] if v["deviceResource"] == "huawei.com/Ascend910")
    (c,) = by_kind(objects, "Deployment")[ascend["id"]]["spec"]["template"]["spec"]["containers"]
    assert c["securityContext"] == override["huawei.com/Ascend910"]


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_values_schema_rejects_bad_values(bad):
    with pytest.raises(RenderError, match="refused"):
        render_chart(bad)


def test_values_schema_rejects_a_bad_assignment():
    values, _ = rendered("maas")
    good = values["assignments"][0]
    for change in ({"replicas": -1}, {"kind": "StatefulSet"}, {"image": ""}, {"id": "Has.Dots"},
                   {"argv": []}, {"kind": "LeaderWorkerSet"}, {"extra": 1}):
        with pytest.raises(RenderError, match="refused"):
            render_chart({**values, "assignments": [{**good, **change}]})
    missing = {k: v for k, v in good.items() if k != "readinessTimeoutSeconds"}
    with pytest.raises(RenderError):
        render_chart({**values, "assignments": [missing]})


def test_the_chart_refuses_a_namespace_other_than_the_plans():
    values, _ = rendered("maas")
    with pytest.raises(RenderError, match="namespace"):
        render_chart(values, namespace="elsewhere")


def test_a_vendor_without_an_image_is_an_error_that_says_how_to_fix_it():
    plan, catalog, fleet = example("vendors")
    with pytest.raises(RenderError, match="--image vllm/"):
        helm_values(plan, catalog, fleet=fleet)


def test_serving_engine_containers_sleep_before_sigterm_within_their_grace_period():
    """The pod that answers the Service (a Deployment's, a LeaderWorkerSet's leader) sleeps engine.preStopSeconds
    before SIGTERM, so the router stops sending it requests first; a worker, which serves no Service, does not. The
    grace period counts the sleep, so it must be longer; values where it is not are refused."""
    roles = set()
    for name in ("maas", "multinode"):
        values, objects = rendered(name)
        for v in values["assignments"]:
            for role, pod in _engine_pod_specs(_workload(objects, v)):
                (c,) = pod["containers"]
                roles.add(role)
                if role == "worker":
                    assert "lifecycle" not in c
                else:
                    assert c["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "5"]}}}
                assert pod["terminationGracePeriodSeconds"] == 60
    assert roles == {"pod", "leader", "worker"}
    none = render_chart({**values, "engine": {"preStopSeconds": 0}, "router": {**values["router"], "preStopSeconds": 0}})
    assert "preStop" not in json.dumps([o for o in none if o["kind"] in ("Deployment", "LeaderWorkerSet")])
    with pytest.raises(RenderError, match="refused|preStopSeconds"):
        render_chart({**values, "engine": {"terminationGracePeriodSeconds": 5, "preStopSeconds": 5}})
