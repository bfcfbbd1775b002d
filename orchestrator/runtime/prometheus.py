"""The embedded default's Prometheus: ``moxin up`` starts the ``prometheus`` binary (Debian's package or the release
tarball) on 127.0.0.1, scraping the targets of the controller's file_sd list (the controller, every router, vLLM
engines); ``moxin status`` shows its URL, ``moxin top`` queries it, ``moxin down`` stops it.

Everything lives under ``<home>/prometheus/``: the generated config, the TSDB, the log, and ``rules/*.yml``, alert
rules Prometheus loads when it starts (or on SIGHUP: ``reload``). ``<home>/prometheus.json`` records the server's
pid and URL. Prometheus is optional: without the binary, ``start`` raises ``PrometheusUnavailable`` with one line
saying how to install it, and the rest of ``moxin up`` runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import MoxinError
from orchestrator.output import write_atomic
from orchestrator.runtime import local
from orchestrator.runtime.guard import alive, stop_group

DEFAULT_PORT = 9090
"""Prometheus's own default; ``moxin up`` takes any free port when it is busy (a system Prometheus, say)."""
SCRAPE_INTERVAL_S = 5.0
RETENTION = "7d"
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
INSTALL = ("apt-get install prometheus, or the release tarball from https://prometheus.io/download/ "
           "(put `prometheus` on PATH)")


class PrometheusUnavailable(MoxinError):
    """Prometheus could not be started; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class Layout:
    """Where one MOXIN_HOME keeps its Prometheus."""

    home: Path

    @property
    def root(self) -> Path:
        return self.home / "prometheus"

    @property
    def config(self) -> Path:
        return self.root / "prometheus.yml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def rules(self) -> Path:
        """Alert and recording rule files (``*.yml``) Prometheus loads; none is fine."""
        return self.root / "rules"

    @property
    def log(self) -> Path:
        return self.root / "prometheus.log"

    @property
    def state(self) -> Path:
        return self.home / "prometheus.json"


def config(sd_file: Path, rules_dir: Path, scrape_interval_s: float = SCRAPE_INTERVAL_S) -> dict[str, Any]:
    """Prometheus's configuration: one file_sd job over the controller's target list (each target group names its
    own ``job``: moxin-controller, moxin-router, moxin-engine), re-read as often as it scrapes; rules from
    ``rules_dir/*.yml``, a glob that may match nothing. Pure."""
    interval = _duration(scrape_interval_s)
    return {"global": {"scrape_interval": interval, "evaluation_interval": interval,
                       "scrape_timeout": _duration(min(scrape_interval_s, 10.0))},
            "rule_files": [str(rules_dir / "*.yml")],
            "scrape_configs": [{"job_name": "moxin",
                                "file_sd_configs": [{"files": [str(sd_file)], "refresh_interval": interval}]}]}


def argv(binary: str, layout: Layout, port: int) -> list[str]:
    return [binary, f"--config.file={layout.config}", f"--storage.tsdb.path={layout.data}",
            f"--storage.tsdb.retention.time={RETENTION}", f"--web.listen-address=127.0.0.1:{port}"]


def _duration(seconds: float) -> str:
    """A Prometheus duration: whole seconds where it is, else milliseconds."""
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def missing_binary() -> str:
    return f"Prometheus not started: no `prometheus` on PATH; to get metrics history and `moxin top` from it: {INSTALL}"


def free_port(preferred: int = DEFAULT_PORT) -> int:
    """``preferred`` when nothing listens on it, else a port the kernel picks."""
    for candidate in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return s.getsockname()[1]
    raise PrometheusUnavailable("Prometheus not started: no free port on 127.0.0.1")


def running(home: Path | None = None) -> dict[str, Any] | None:
    """The recorded server (``url``, ``pid``, ``port``, ``scrapeIntervalSeconds``) if its process still runs."""
    layout = Layout(home or local.home())
    try:
        info = json.loads(layout.state.read_text())
    except (OSError, ValueError):
        return None
    return info if _ours(info["pid"], layout) else None


def _ours(pid: int, layout: Layout) -> bool:
    """The pid is alive and is our Prometheus (not a process that got the pid since): its command line names our
    config file. Where /proc is missing, alive is all we can tell."""
    if not alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return f"--config.file={layout.config}".encode() in cmdline.split(b"\0")


def start(sd_file: Path, port: int | None = None, scrape_interval_s: float = SCRAPE_INTERVAL_S,
          home: Path | None = None, binary: str | None = None, timeout_s: float = READY_TIMEOUT_S,
          rule_files: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Start Prometheus (replacing one this home already runs, which keeps its data), wait until it is ready and
    record it. ``port``: None takes 9090 if free, else any free port. ``rule_files``: file name -> rules YAML,
    written into ``rules/`` first (other files there are loaded too)."""
    layout = Layout(home or local.home())
    binary = binary or shutil.which("prometheus")
    if binary is None:
        raise PrometheusUnavailable(missing_binary())
    stop(layout.home)
    port = port or free_port()
    layout.rules.mkdir(parents=True, exist_ok=True)
    for name, text in (rule_files or {}).items():
        write_atomic(layout.rules / name, text)
    write_atomic(layout.config, yaml.safe_dump(config(sd_file, layout.rules, scrape_interval_s), sort_keys=False))
    with open(layout.log, "ab") as log:
        proc = subprocess.Popen(argv(binary, layout, port), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while not _ready(url):
        if proc.poll() is not None:
            raise PrometheusUnavailable(f"Prometheus exited ({proc.returncode}) on start: {_last_line(layout.log)} "
                                        f"(log: {layout.log})")
        if time.monotonic() > deadline:
            stop_group(proc.pid, STOP_GRACE_S, proc)
            raise PrometheusUnavailable(f"Prometheus was not ready within {timeout_s:.0f} s (log: {layout.log})")
        time.sleep(0.2)
    info = {"url": url, "pid": proc.pid, "port": port, "scrapeIntervalSeconds": scrape_interval_s,
            "config": str(layout.config)}
    write_atomic(layout.state, json.dumps(info) + "\n")
    return info


def instant_query(url: str, promql: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """``data`` of Prometheus's instant-query answer (``resultType`` and ``result``) for ``promql`` at ``url``.
    OSError when Prometheus cannot be reached; ValueError when it refuses the query."""
    query = f"{url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(query, timeout=timeout_s) as r:
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise ValueError(f"Prometheus at {url} refused {promql!r}: {body.get('error', body)}")
    return body["data"]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/-/ready", timeout=2) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][-300:] if lines else "no output"


def reload(home: Path | None = None) -> bool:
    """Make the running Prometheus read its config and rule files again (SIGHUP). False if none runs."""
    info = running(home)
    if info is None:
        return False
    os.kill(info["pid"], signal.SIGHUP)
    return True


def stop(home: Path | None = None, grace_s: float = STOP_GRACE_S) -> bool:
    """SIGTERM the recorded Prometheus, SIGKILL it after ``grace_s``; forget it. False if none ran."""
    layout = Layout(home or local.home())
    info = running(layout.home)
    layout.state.unlink(missing_ok=True)
    if info is None:
        return False
    _stop_pid(info["pid"], layout, grace_s)
    return True


def _stop_pid(pid: int, layout: Layout, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the server's process group (its own session, so the group is just it), SIGKILL after the grace."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while _ours(pid, layout) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _ours(pid, layout):
        os.killpg(pid, signal.SIGKILL)
    try:  # collect the exit status where this process started it (an interrupted `moxin up`): no zombie
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
