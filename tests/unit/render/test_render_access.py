"""Who may reach and call what: the chart's NetworkPolicies (engines admit the router and Prometheus only)
and credentials that come only from Secrets (the router's API keys, the engines' key)."""

from __future__ import annotations

import pytest
from k8s_support import by_kind, rendered, validate

from orchestrator.render.helm import ENGINE_API_KEY_ENV, RenderError
from orchestrator.render.kubernetes import chart_dir, render_chart

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the k8s extra)")

ROUTER_PODS = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "moxin", "app.kubernetes.io/instance": "moxin",
                                               "app.kubernetes.io/component": "router"}}}
PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
              "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}


def _selects(selector: dict, labels: dict) -> bool:
    return selector["matchLabels"].items() <= labels.items()


def _pod_templates(obj: dict) -> list[dict]:
    if obj["kind"] == "Deployment":
        return [obj["spec"]["template"]]
    t = obj["spec"]["leaderWorkerTemplate"]
    return [t["leaderTemplate"], t["workerTemplate"]]


def _rules(objects: list[dict]) -> list[dict]:
    return [rule for o in objects if o["kind"] == "NetworkPolicy" for rule in o["spec"]["ingress"]]


# ---------------------------------------------------------------------------------- NetworkPolicies

def test_each_assignment_admits_the_router_and_prometheus_on_its_engine_port_only(example_name):
    values, objects = rendered(example_name)
    policies = by_kind(objects, "NetworkPolicy")
    router_labels = by_kind(objects, "Deployment")["moxin-router"]["spec"]["template"]["metadata"]["labels"]
    assert _selects(ROUTER_PODS["podSelector"], router_labels)
    for a in values["assignments"]:
        policy = policies[a["id"]]
        validate(policy)
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for template in _pod_templates(by_kind(objects, a["kind"])[a["id"]]):
            assert _selects(policy["spec"]["podSelector"], template["metadata"]["labels"])
        serving, *group = policy["spec"]["ingress"]
        assert serving == {"from": [ROUTER_PODS, PROMETHEUS], "ports": [{"port": a["port"], "protocol": "TCP"}]}
        if a["kind"] == "LeaderWorkerSet":  # Ray and NCCL between the pods of one replica, on ports they pick
            assert group == [{"from": [{"podSelector": policy["spec"]["podSelector"]}]}]
        else:
            assert group == []


def test_an_engine_policy_selects_no_other_assignments_pods():
    values, objects = rendered("maas")
    policies = by_kind(objects, "NetworkPolicy")
    for a in values["assignments"]:
        for b in values["assignments"]:
            if a["id"] != b["id"]:
                labels = by_kind(objects, "Deployment")[b["id"]]["spec"]["template"]["metadata"]["labels"]
                assert not _selects(policies[a["id"]]["spec"]["podSelector"], labels)


METRICS_RULE = {"from": [PROMETHEUS], "ports": [{"port": 9091, "protocol": "TCP"}]}


def test_the_router_admits_anyone_on_its_port_unless_told_whom_and_prometheus_on_its_metrics_port():
    values, objects = rendered("maas")
    router = by_kind(objects, "NetworkPolicy")["moxin-router"]
    validate(router)
    assert router["spec"]["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}, METRICS_RULE]
    gateway = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    objects = render_chart({**values, "networkPolicy": {"routerFrom": [gateway]}})
    router = by_kind(objects, "NetworkPolicy")["moxin-router"]
    validate(router)
    assert router["spec"]["ingress"] == [{"from": [gateway, PROMETHEUS], "ports": [{"port": 8080, "protocol": "TCP"}]},
                                         METRICS_RULE]


def test_a_single_router_process_has_no_metrics_port_and_without_prometheus_no_one_may_scrape_the_workers():
    values, _ = rendered("maas")
    single = render_chart({**values, "router": {**values["router"], "workers": 1}})
    assert by_kind(single, "NetworkPolicy")["moxin-router"]["spec"]["ingress"] == [
        {"ports": [{"port": 8080, "protocol": "TCP"}]}]
    blind = render_chart({**values, "networkPolicy": {"prometheus": []}})
    assert by_kind(blind, "NetworkPolicy")["moxin-router"]["spec"]["ingress"] == [
        {"ports": [{"port": 8080, "protocol": "TCP"}]}]


def test_prometheus_and_extra_engine_peers_are_configurable():
    values, _ = rendered("maas")
    prometheus = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}]
    gateway = {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}
    objects = render_chart({**values, "networkPolicy": {"prometheus": prometheus, "engineFrom": [gateway]}})
    for policy in by_kind(objects, "NetworkPolicy").values():
        validate(policy)
    a = values["assignments"][0]
    (serving,) = by_kind(objects, "NetworkPolicy")[a["id"]]["spec"]["ingress"]
    assert serving["from"] == [ROUTER_PODS, *prometheus, gateway]


def test_with_no_peers_an_engine_admits_nothing_never_everything():
    """An ingress rule with an empty `from` admits every source: the chart writes no rule instead."""
    values, _ = rendered("multinode")
    objects = render_chart({**values, "router": {"enabled": False}, "networkPolicy": {"prometheus": []}})
    (a,) = values["assignments"]
    policy = by_kind(objects, "NetworkPolicy")[a["id"]]
    validate(policy)
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": policy["spec"]["podSelector"]}]}]
    values, _ = rendered("maas")
    objects = render_chart({**values, "router": {"enabled": False}, "networkPolicy": {"prometheus": []}})
    assert all(p["spec"]["ingress"] == [] for p in by_kind(objects, "NetworkPolicy").values())


def test_no_rule_of_any_example_admits_everyone_to_an_engine(example_name):
    _, objects = rendered(example_name)
    for policy in by_kind(objects, "NetworkPolicy").values():
        if policy["metadata"]["name"] == "moxin-router":
            continue
        assert all(rule.get("from") for rule in policy["spec"]["ingress"])


def test_network_policies_can_be_turned_off():
    values, _ = rendered("maas")
    objects = render_chart({**values, "networkPolicy": {"enabled": False}})
    assert not by_kind(objects, "NetworkPolicy")


@pytest.mark.parametrize("peer", [
    {"podSelector": {"matchLabels": {"app\nhostNetwork: true": "x"}}},
    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "a b"}}},
    {"ipBlock": {"cidr": "everything"}},
    {"podSelector": {"matchLabelz": {}}},
])
def test_bad_peers_are_refused(peer):
    with pytest.raises(RenderError, match="refused"):
        render_chart({"networkPolicy": {"prometheus": [peer]}})
    with pytest.raises(RenderError, match="refused"):
        render_chart({"networkPolicy": {"prometheus": [peer]}}, check=False)


# ------------------------------------------------------------------------------------------ Secrets

def _router_container(objects: list[dict]) -> dict:
    (c,) = by_kind(objects, "Deployment")["moxin-router"]["spec"]["template"]["spec"]["containers"]
    return c


def _engine_containers(values: dict, objects: list[dict]) -> list[tuple[dict, dict]]:
    out = []
    for a in values["assignments"]:
        for template in _pod_templates(by_kind(objects, a["kind"])[a["id"]]):
            (c,) = template["spec"]["containers"]
            out.append((a, c))
    return out


def test_without_secrets_nothing_asks_for_a_key(example_name):
    values, objects = rendered(example_name)
    router = _router_container(objects)
    assert "--api-keys" not in router["command"] and "env" not in router
    volumes = by_kind(objects, "Deployment")["moxin-router"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "projected": {"sources": [{"configMap": {"name": "moxin-router"}}]}} in volumes
    for _, c in _engine_containers(values, objects):
        assert not {e["name"] for e in c["env"]} & set(ENGINE_API_KEY_ENV.values())


def test_the_router_reads_its_api_keys_from_a_secret_mounted_read_only():
    values, _ = rendered("maas")
    objects = render_chart({**values, "router": {"apiKeys": {"secretName": "moxin-api-keys"}}})
    router = _router_container(objects)
    assert router["command"][-2:] == ["--api-keys", "/etc/moxin/keys/keys.yaml"]
    assert {"name": "config", "mountPath": "/etc/moxin", "readOnly": True} in router["volumeMounts"]
    pod = by_kind(objects, "Deployment")["moxin-router"]["spec"]["template"]["spec"]
    (config,) = [v for v in pod["volumes"] if v["name"] == "config"]
    assert config["projected"]["sources"] == [
        {"configMap": {"name": "moxin-router"}},
        {"secret": {"name": "moxin-api-keys", "items": [{"key": "keys.yaml", "path": "keys/keys.yaml"}]}}]
    objects = render_chart({**values, "router": {"apiKeys": {"secretName": "k", "key": "api.yaml"}}})
    (config,) = [v for v in by_kind(objects, "Deployment")["moxin-router"]["spec"]["template"]["spec"]["volumes"]
                 if v["name"] == "config"]
    assert config["projected"]["sources"][1]["secret"]["items"] == [{"key": "api.yaml", "path": "keys/keys.yaml"}]
    validate(by_kind(objects, "Deployment")["moxin-router"])


def test_vllm_engines_and_the_router_share_the_engine_key_from_one_secret(example_name):
    values, _ = rendered(example_name)
    objects = render_chart({**values, "engineAuth": {"secretName": "moxin-engine-key"}})
    ref = {"secretKeyRef": {"name": "moxin-engine-key", "key": "engine-key"}}
    assert _router_container(objects)["env"] == [{"name": "MOXIN_ENGINE_KEY", "valueFrom": ref}]
    engines = set()
    for a, c in _engine_containers(values, objects):
        engines.add(a["engine"])
        keyed = [e for e in c["env"] if e["name"] in ENGINE_API_KEY_ENV.values()]
        if a["engine"] in ENGINE_API_KEY_ENV:
            assert keyed == [{"name": ENGINE_API_KEY_ENV[a["engine"]], "valueFrom": ref}]
        else:
            assert keyed == []
    for obj in objects:
        if obj["kind"] in ("Deployment", "LeaderWorkerSet"):
            validate(obj)
    if example_name == "local":
        assert engines == {"vllm", "mlx-lm"}  # an engine that takes no key gets none


def test_the_engine_key_from_the_secret_wins_over_a_launch_variable_of_the_same_name():
    values, _ = rendered("maas")
    a = {**values["assignments"][0], "env": {"VLLM_API_KEY": "from-the-plan"}}
    objects = render_chart({**values, "assignments": [a], "engineAuth": {"secretName": "ek"}})
    (c,) = by_kind(objects, "Deployment")[a["id"]]["spec"]["template"]["spec"]["containers"]
    assert [e for e in c["env"] if e["name"] == "VLLM_API_KEY"][-1] == \
        {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "ek", "key": "engine-key"}}}


@pytest.mark.parametrize("change", [
    {"engineAuth": {"secretName": "Not_A_Name"}},
    {"engineAuth": {"secretName": "ek", "key": "a key"}},
    {"engineAuth": {"value": "s3cret"}},  # a key is never a value
    {"router": {"apiKeys": {"secretName": "k\nhostNetwork: true"}}},
    {"router": {"apiKeys": {"keys": ["s3cret"]}}},
])
def test_secret_settings_take_names_only(change):
    with pytest.raises(RenderError, match="refused"):
        render_chart(change)


def test_notes_say_when_nothing_asks_for_a_key():
    values, _ = rendered("maas")
    with helm.Chart.load(str(chart_dir())) as chart:
        open_notes = chart.render(values, name="moxin", namespace="moxin")["moxin/templates/NOTES.txt"]
        keyed = {**values, "engineAuth": {"secretName": "ek"}, "router": {**values["router"],
                                                                            "apiKeys": {"secretName": "k"}}}
        keyed_notes = chart.render(keyed, name="moxin", namespace="moxin")["moxin/templates/NOTES.txt"]
    assert "router.apiKeys.secretName" in open_notes and "engineAuth.secretName" in open_notes
    assert "router.apiKeys.secretName" not in keyed_notes and "engineAuth.secretName" not in keyed_notes


def test_network_policies_are_validated_strictly():
    _, objects = rendered("maas")
    policy = by_kind(objects, "NetworkPolicy")["moxin-router"]
    validate(policy)
    with pytest.raises(Exception, match="ingres"):
        validate({**policy, "spec": {**policy["spec"], "ingres": []}})
