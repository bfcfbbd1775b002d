"""Runtime commands that need no cluster: node-resources, and clear errors where a cluster or input is missing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def test_node_resources_prints_the_json_for_ray_start_and_the_builtin_flags_apart():
    out = CliRunner().invoke(cli, ["node-resources", "--hardware", "nvidia-h100-sxm", "--node", "h100-3"])
    assert out.exit_code == 0, out.output
    first, *rest = out.stdout.splitlines()
    assert json.loads(first) == {"accelerator_type:H100": 1.0, "moxin-node-h100-3": 1.0}
    assert "--num-gpus=8" in out.stderr  # ray start refuses GPU in --resources


def test_node_resources_of_a_custom_resource_profile_carries_the_device_count():
    out = CliRunner().invoke(cli, ["node-resources", "-H", "apple-m3-ultra-512g"])
    assert out.exit_code == 0 and json.loads(out.stdout) == {"mlx": 1.0, "accelerator_type:M3-Ultra-512G": 1.0}
    assert out.stderr == ""
    bad = run("node-resources", "-H", "nvidia-h1000")
    assert bad.exit_code == 2 and "nvidia-h100" in bad.output


def test_commands_that_need_a_cluster_say_how_to_get_one(tmp_path):
    env = {"MOXIN_HOME": str(tmp_path), "RAY_ADDRESS": ""}
    for args in (["status"], ["logs", "x"]):
        out = run(*args, env=env)
        assert out.exit_code != 0 and "moxin up" in out.output and "--address" in out.output, out.output
    out = run("down", env=env)
    assert out.exit_code == 0 and "nothing is running" in out.output


def test_router_refuses_a_config_that_is_not_a_routing_table(tmp_path):
    config = tmp_path / "router.json"
    config.write_text(json.dumps({"routes": []}))
    out = run("router", "--config", str(config))
    assert out.exit_code == 2 and str(config) in out.output and "deployments" in out.output
    config.write_text(json.dumps({"deployments": {"d": [{"name": "a", "url": "http://x", "requestModel": "d",
                                                         "weight": 0}]}}))
    out = run("router", "--config", str(config))
    assert out.exit_code == 2 and "deployments.d[0].weight" in out.output


def test_keys_create_prints_the_key_once_and_list_shows_names_and_deployments_only(tmp_path):
    path = tmp_path / "keys.yaml"
    out = CliRunner().invoke(cli, ["keys", "create", "team-a", "--deployment", "tiny-chat", "--file", str(path)])
    assert out.exit_code == 0, out.output
    key = out.stdout.strip()
    assert key.startswith("mx-") and "\n" not in key and key not in out.stderr and key not in path.read_text()
    assert "team-a" in out.stderr and "shown once" in out.stderr
    assert run("keys", "create", "ops", "--file", str(path)).exit_code == 0
    listed = CliRunner().invoke(cli, ["keys", "list", "--file", str(path)])
    assert listed.exit_code == 0 and listed.stdout.split() == ["team-a", "tiny-chat", "ops", "all"]
    as_json = CliRunner().invoke(cli, ["keys", "list", "--file", str(path), "-o", "json"])
    assert json.loads(as_json.stdout) == [{"name": "team-a", "deployments": ["tiny-chat"]},
                                          {"name": "ops", "deployments": "all"}]
    again = run("keys", "create", "ops", "--file", str(path))
    assert again.exit_code == 2 and "already has a key named 'ops'" in again.output
    bad = run("keys", "create", "Team A", "--file", str(path))
    assert bad.exit_code == 2 and "name" in bad.output


def test_router_refuses_a_key_file_that_is_not_one(tmp_path):
    config = tmp_path / "router.json"
    config.write_text(json.dumps({"deployments": {"d": []}}))
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys: [{name: a, sha256: nothex}]")
    out = run("router", "--config", str(config), "--api-keys", str(keys))
    assert out.exit_code == 2 and "keys.0.sha256" in out.output and "moxin keys create" in out.output


def test_top_once_as_json_from_a_prometheus_query_api(tmp_path):
    """`moxin top --prometheus URL` needs no cluster: it asks the query API for each counter's rate and every
    gauge, and prints the rows."""
    import http.server
    import threading
    import urllib.parse

    labels = {"deployment": "tiny-chat", "model": "m", "variant": "bf16", "pool": "gpu-emu", "hardware": "h100",
              "engine": "vllm", "emulated": "true", "instance": "127.0.0.1:9", "job": "moxin-router"}
    answers = {"rate(moxin_router_requests_total[20s])": [{"metric": {**labels, "code": "200"}, "value": [0, "1.5"]}],
               "rate(moxin_generation_tokens_total[20s])": [{"metric": labels, "value": [0, "12"]}]}
    gauges = [{"metric": {"__name__": "moxin_predicted_cost_usd_per_hour", **labels}, "value": [0, "2.5"]},
              {"metric": {"__name__": "moxin_predicted_capacity_requests_per_second", **labels}, "value": [0, "3"]}]
    asked = []

    class Api(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # the stdlib names it
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["query"][0]
            asked.append(query)
            result = gauges if query.startswith("{__name__") else answers.get(query, [])
            body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    env = {"MOXIN_HOME": str(tmp_path), "RAY_ADDRESS": ""}
    try:
        out = run("top", "--once", "-o", "json", "--prometheus", url, "--window", "20", env=env)
        shown = run("top", "--once", "--prometheus", url, "--window", "20", env=env)
    finally:
        server.shutdown()
    assert shown.exit_code == 0 and "bf16 on gpu-emu (vllm, emulated)" in shown.stdout, shown.output
    assert "$57.87" in shown.stdout and "50%" in shown.stdout, shown.stdout
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert (doc["source"], doc["prometheus"], doc["windowSeconds"]) == ("prometheus", url, 20)
    (deployment,) = doc["deployments"]
    assert deployment["deployment"] == "tiny-chat" and deployment["requestsPerSecond"] == 1.5
    assert deployment["load"] == 0.5                                                  # 1.5 of 3 planned
    assert deployment["actualUsdPerMillionOutputTokens"] == pytest.approx(2.5 / (12 * 3600) * 1e6)  # $57.87
    assert [a["pool"] for a in deployment["assignments"]] == ["gpu-emu"]
    assert len(asked) == 10  # per frame: four counters' rates, and the gauges at once


def test_top_without_a_prometheus_or_a_cluster_says_what_to_do(tmp_path):
    env = {"MOXIN_HOME": str(tmp_path), "RAY_ADDRESS": "", "PATH": str(tmp_path)}
    out = run("top", "--once", "--source", "prometheus", env=env)
    assert out.exit_code != 0 and "moxin up" in out.output, out.output
    out = run("top", "--once", "--source", "prometheus", "--address", "127.0.0.1:1", env=env)
    assert out.exit_code != 0 and "apt-get install prometheus" in out.output and "--prometheus URL" in out.output


def test_up_starts_one_router_per_core_unless_told_and_routers_1_stays_possible(monkeypatch):
    """`moxin up --routers` defaults to auto: ``workers.worker_count`` (one per usable core, within the cgroup's
    limits), as `moxin router --workers auto` and the chart's `router.workers: auto` count them."""
    import click

    from orchestrator.cli import RouterCount, up
    from orchestrator.runtime import workers

    option = next(p for p in up.params if p.name == "routers")
    assert option.default == "auto"
    monkeypatch.setattr(workers, "worker_count", lambda value: {"auto": 3}[value])
    ctx = click.Context(up)
    assert option.type_cast_value(ctx, option.get_default(ctx)) == 3
    assert RouterCount().convert("1", None, None) == 1 and RouterCount().convert(" AUTO ", None, None) == 3
    for bad in ("0", "17", "two"):
        with pytest.raises(click.BadParameter):
            RouterCount().convert(bad, None, None)
    assert "[default: auto]" in run("up", "--help").output


STATUS = {"routers": ["http://127.0.0.1:8000"], "metricsUrl": "http://10.0.0.1:9400/metrics",
          "routerMetricsUrls": ["http://127.0.0.1:41001/metrics", "http://127.0.0.1:41002/metrics"],
          "prometheusSd": "/h/prometheus-sd.json",
          "replicas": [{"desired": True, "labels": {"deployment": "tiny-chat"}}]}


def test_up_and_status_name_every_routers_metrics_not_the_shared_ports():
    """A scrape of the shared port reaches whichever router accepts it: `moxin up` and `moxin status` list each
    router's own /metrics."""
    from orchestrator.cli import _router_status_line, _up_summary

    text = _up_summary(STATUS, "10.0.0.1:6379", "http://127.0.0.1:8000", 2, None, None)
    assert "router (OpenAI API): http://127.0.0.1:8000/v1 (2 routers sharing the port)" in text, text
    assert ("router metrics:      http://127.0.0.1:41001/metrics, http://127.0.0.1:41002/metrics\n" in text and
            "controller metrics:  http://10.0.0.1:9400/metrics" in text and "8000/metrics" not in text), text
    one = _up_summary({**STATUS, "routerMetricsUrls": STATUS["routerMetricsUrls"][:1]}, "a", "http://h:1", 2, None,
                      None)
    assert "(1 router)" in one  # the routers serving: a rerun of `moxin up` keeps the running ones
    assert _router_status_line(STATUS) == (
        "router: http://127.0.0.1:8000 (2 routers sharing the port; metrics: http://127.0.0.1:41001/metrics, "
        "http://127.0.0.1:41002/metrics); controller metrics: http://10.0.0.1:9400/metrics")
    assert _router_status_line({**STATUS, "routers": [], "routerMetricsUrls": []}).startswith("router: not started;")
