"""The embedded default's Prometheus without a Prometheus: its configuration, its command line, and what `moxin up`
says and does when the binary is missing or does not start."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestrator.runtime import prometheus
from orchestrator.runtime.guard import alive
from orchestrator.runtime.prometheus import Layout, PrometheusUnavailable


def test_the_config_scrapes_the_file_sd_list_and_loads_rule_files_from_home(tmp_path):
    layout = Layout(tmp_path)
    config = prometheus.config(tmp_path / "prometheus-sd.json", layout.rules, 5)
    assert config == {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s", "scrape_timeout": "5s"},
        "rule_files": [f"{tmp_path}/prometheus/rules/*.yml"],
        "scrape_configs": [{"job_name": "moxin", "file_sd_configs": [
            {"files": [f"{tmp_path}/prometheus-sd.json"], "refresh_interval": "5s"}]}]}


def test_intervals_below_a_second_and_long_timeouts():
    config = prometheus.config(Path("/sd.json"), Path("/rules"), 0.5)
    assert config["global"]["scrape_interval"] == "500ms" and config["global"]["scrape_timeout"] == "500ms"
    config = prometheus.config(Path("/sd.json"), Path("/rules"), 60)
    assert config["global"]["scrape_interval"] == "60s" and config["global"]["scrape_timeout"] == "10s"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool comes with the prometheus package")
def test_promtool_accepts_the_config_with_and_without_rule_files(tmp_path):
    layout = Layout(tmp_path)
    layout.rules.mkdir(parents=True)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(prometheus.config(tmp_path / "sd.json", layout.rules, 5)))
    done = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    (layout.rules / "moxin.yml").write_text(
        "groups: [{name: moxin, rules: [{alert: NoReplica, expr: 'sum(moxin_replicas_ready) == 0'}]}]\n")
    done = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "1 rules found" in done.stdout, done.stdout + done.stderr


def test_the_server_listens_on_loopback_and_keeps_its_data_under_moxin_home(tmp_path):
    layout = Layout(tmp_path)
    argv = prometheus.argv("/usr/bin/prometheus", layout, 9123)
    assert argv[0] == "/usr/bin/prometheus"
    assert "--web.listen-address=127.0.0.1:9123" in argv
    assert f"--storage.tsdb.path={tmp_path}/prometheus/data" in argv
    assert f"--config.file={tmp_path}/prometheus/prometheus.yml" in argv


def test_without_the_binary_start_says_in_one_line_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(PrometheusUnavailable) as err:
        prometheus.start(tmp_path / "sd.json", home=tmp_path)
    message = str(err.value)
    assert "\n" not in message and "apt-get install prometheus" in message and "prometheus.io/download" in message
    assert not (tmp_path / "prometheus.json").exists()


def test_moxin_up_prints_that_line_once_and_carries_on(tmp_path, monkeypatch, capsys):
    from orchestrator.cli import _start_prometheus

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("MOXIN_HOME", str(tmp_path))
    assert _start_prometheus(True, tmp_path / "sd.json", None, 5.0) is None
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "apt-get install prometheus" in out, out


def fake_binary(tmp_path: Path, script: str) -> str:
    path = tmp_path / "bin" / "prometheus"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def test_a_server_that_exits_on_start_is_reported_with_its_last_log_line(tmp_path):
    binary = fake_binary(tmp_path, 'echo "starting"; echo "err: bind: address already in use" >&2; exit 1\n')
    with pytest.raises(PrometheusUnavailable) as err:
        prometheus.start(tmp_path / "sd.json", port=9123, home=tmp_path, binary=binary)
    assert "address already in use" in str(err.value) and "\n" not in str(err.value)
    assert prometheus.running(tmp_path) is None


def test_a_server_never_ready_is_stopped_not_left_behind(tmp_path):
    pidfile = tmp_path / "pid"
    binary = fake_binary(tmp_path, f"echo $$ > {pidfile}\nsleep 60\n")
    with pytest.raises(PrometheusUnavailable, match="not ready within 1 s"):
        prometheus.start(tmp_path / "sd.json", port=prometheus.free_port(0), home=tmp_path, binary=binary,
                         timeout_s=1)
    assert not alive(int(pidfile.read_text()))


def test_a_recorded_pid_that_is_not_our_server_is_never_signalled(tmp_path):
    """After a reboot the recorded pid may belong to anything: stop() checks the command line first."""
    (tmp_path / "prometheus.json").write_text(f'{{"url": "http://127.0.0.1:1", "pid": {os.getpid()}, "port": 1}}')
    assert prometheus.running(tmp_path) is None
    assert prometheus.stop(tmp_path) is False and alive(os.getpid())
    assert not (tmp_path / "prometheus.json").exists()
