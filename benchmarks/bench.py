"""Benchmark: `moxin bench` beside guidellm on the same endpoint, and `moxin bench`'s own ceiling.

    python benchmarks/bench.py [--guidellm PATH] [--levels 1,2,4,8] [--requests 32] [--repeat 3]
                               [--url URL --model NAME --tokenizer CHECKPOINT_DIR] [--skip-ceiling]

1. Agreement: the same closed-loop sweep (concurrency levels, N requests each, synthetic prompts of
   --prompt-tokens, --output-tokens generated) measured by `moxin bench` and by guidellm, one after the
   other, against one endpoint, --repeat times (alternating): the median of each figure over the repeats
   of TTFT p50/p95, TPOT p50 (guidellm's "ITL": the same definition), output tokens/s. Differences over
   10% are flagged. Without --url the endpoint is a static SSE server started here
   (orchestrator.devtools.sse_server: first token after 50 ms, then one every 10 ms), whose pace is the
   ground truth and is printed beside both tools.
2. Ceiling: requests/s each tool drives against the static server with zero delay (16-token streams, 32
   concurrent streams, 1,000 requests); the server runs in its own process.
3. Cost: import time and peak memory of each tool's Python side, wall time of the sweep, install size.

guidellm runs from its own virtual environment (it pins click and multidict below moxin's and pulls torch):
    python -m venv /tmp/guidellm && /tmp/guidellm/bin/pip install guidellm
and needs a tokenizer for its synthetic prompts: --tokenizer, else the tiny model's (generated here).
Prints tables and the machine. Every request goes to 127.0.0.1 unless --url says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from _machine import describe

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
TTFT_S, ITL_S = 0.05, 0.01


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_static(ttft: float, itl: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.devtools.sse_server", "--port", str(port),
                             "--ttft", str(ttft), "--itl", str(itl)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the static server did not start")


def moxin_bench(url: str, model: str, levels: list[int], requests: int, prompt: int, output: int) -> tuple[dict, float]:
    argv = [sys.executable, "-m", "orchestrator", "bench", "--url", url, "--model", model, "--concurrency",
            ",".join(map(str, levels)), "--requests", str(requests), "--prompt-tokens", str(prompt),
            "--output-tokens", str(output), "--no-progress", "-o", "json"]
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=3600, check=True)
    wall = time.perf_counter() - t0
    data = json.loads(done.stdout)
    return {lv["concurrency"]: {
        "ttft_p50": lv["ttftSeconds"]["p50"] * 1000, "ttft_p95": lv["ttftSeconds"]["p95"] * 1000,
        "tpot_p50": lv["tpotSeconds"]["p50"] * 1000, "out_tps": lv["outputTokensPerSecond"],
        "req_s": lv["requestsPerSecond"], "errors": lv["requests"] - lv["succeeded"]} for lv in data["levels"]}, wall


def guidellm(exe: str, url: str, model: str, tokenizer: str, levels: list[int], requests: int, prompt: int,
             output: int, tmp: Path) -> tuple[dict, float]:
    out = tmp / f"guidellm-{time.monotonic_ns()}.json"
    argv = [exe, "run", "--backend", f"kind=openai_http,target={url},model={model}",
            "--tokenizer", f"kind=hf_auto,model={tokenizer}",
            "--data", f"kind=synthetic_text,prompt_tokens={prompt},output_tokens={output}",
            "--profile", f"kind=concurrent,streams={levels[0]}", "--override", "profile.streams",
            ",".join(map(str, levels)), "--constraint", f"kind=max_requests,count={requests}",
            "--output", f"kind=json,path={out}", "--disable-console"]
    t0 = time.perf_counter()
    subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=True, cwd=tmp)
    wall = time.perf_counter() - t0
    results = {}
    for b in json.loads(out.read_text())["benchmarks"]:
        m = b["metrics"]
        ok = {k: v["successful"] for k, v in m.items() if isinstance(v, dict) and "successful" in v}
        results[b["config"]["strategy"]["streams"]] = {
            "ttft_p50": ok["time_to_first_token_ms"]["median"],
            "ttft_p95": ok["time_to_first_token_ms"]["percentiles"]["p95"],
            "tpot_p50": ok["inter_token_latency_ms"]["median"], "out_tps": ok["output_tokens_per_second"]["mean"],
            "req_s": ok["requests_per_second"]["mean"],
            "errors": m["request_totals"]["errored"] + m["request_totals"]["incomplete"]}
    return results, wall


def guidellm_sweep(exe: str, url: str, model: str, tokenizer: str, levels: list[int], requests: int, prompt: int,
                   output: int, tmp: Path) -> tuple[dict, float]:
    """One guidellm run per level. Its multi-level run (``--override profile.streams``) reported figures no single
    request had against the tiny model behind moxin's router (ITL medians of 0.2 ms where every request's own
    ITL was 4-5 ms), while one run per level agrees with its per-request statistics."""
    results, wall = {}, 0.0
    for c in levels:
        one, seconds = guidellm(exe, url, model, tokenizer, [c], requests, prompt, output, tmp)
        results[c] = one[c]
        wall += seconds
    return results, wall


def import_cost(python: str, module: str) -> tuple[float, float]:
    """Seconds to import ``module`` in a fresh interpreter (median of 3) and the peak RSS in MB."""
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report this script's own peak.
    code = (f"import time; t = time.perf_counter(); import {module}; d = time.perf_counter() - t; "
            "hwm = next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')).split()[1]; "
            "print(d, int(hwm) / 1024)")
    runs = [subprocess.run([python, "-c", code], env=ENV, capture_output=True, text=True, check=True).stdout.split()
            for _ in range(3)]
    runs.sort(key=lambda r: float(r[0]))
    return float(runs[1][0]), float(runs[1][1])


def site_size_gb(python: str) -> float:
    prefix = subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                            check=True).stdout.strip()
    total = sum(f.stat().st_size for f in Path(prefix).rglob("*") if f.is_file() and not f.is_symlink())
    return total / 1e9


def median_of(runs: list[tuple[dict, float]]) -> tuple[dict, float]:
    """Each figure's median over the repeats, and the median wall time."""
    levels = runs[0][0]
    out = {c: {k: statistics.median(r[0][c][k] for r in runs) for k in levels[c]} for c in levels}
    return out, statistics.median(r[1] for r in runs)


def diff(a: float, b: float) -> str:
    d = (a - b) / b * 100 if b else float("inf")
    return f"{d:+.1f}%" + ("" if abs(d) <= 10 else " !")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--guidellm", default=shutil.which("guidellm") or "/tmp/guidellm/bin/guidellm")
    p.add_argument("--levels", default="1,2,4,8")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3, help="Sweeps per tool (alternating); figures are medians.")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--url", help="An endpoint to measure instead of the static server (e.g. moxin's router).")
    p.add_argument("--model", default="static", help="The model name requests carry (with --url).")
    p.add_argument("--tokenizer", help="A checkpoint directory with the tokenizer guidellm should count with.")
    p.add_argument("--ceiling-requests", type=int, default=1000)
    p.add_argument("--skip-ceiling", action="store_true")
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if not Path(args.guidellm).exists():
        sys.exit(f"guidellm not found at {args.guidellm}: python -m venv /tmp/guidellm && "
                 "/tmp/guidellm/bin/pip install guidellm, or pass --guidellm PATH")
    gpython = str(Path(args.guidellm).with_name("python"))
    print(f"Machine: {describe()}")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        tokenizer = args.tokenizer
        if tokenizer is None:
            from orchestrator.devtools.tiny_model import generate

            tokenizer = str(generate("llama", tmp / "tiny", layers=1, hidden=64, heads=2, kv_heads=1, head_dim=32,
                                     intermediate=64, vocab=8192))
        server = None
        url = args.url
        if url is None:
            server, url = start_static(TTFT_S, ITL_S)
        try:
            mox_runs, gl_runs = [], []
            for _ in range(args.repeat):  # alternating, so both see the same background load
                mox_runs.append(moxin_bench(url, args.model, levels, args.requests, args.prompt_tokens,
                                            args.output_tokens))
                gl_runs.append(guidellm_sweep(args.guidellm, url, args.model, tokenizer, levels, args.requests,
                                              args.prompt_tokens, args.output_tokens, tmp))
            mox, mox_wall = median_of(mox_runs)
            gl, gl_wall = median_of(gl_runs)
        finally:
            if server:
                server.kill()
        where = f"{url} (model {args.model})" if args.url else \
            f"static SSE server (first token {TTFT_S * 1000:.0f} ms, then {ITL_S * 1000:.0f} ms per token)"
        print(f"\n## Agreement: {where}; {args.requests} requests per level, {args.prompt_tokens} prompt / "
              f"{args.output_tokens} output tokens; medians of {args.repeat} sweeps per tool\n")
        truth = not args.url
        head = "| c | metric | moxin bench | guidellm | moxin - guidellm |" + (" server's pace |" if truth else "")
        print(head)
        print("|" + "---:|" * (head.count("|") - 1))
        worst = 0.0
        e2e = TTFT_S + ITL_S * (args.output_tokens - 1)
        for c in levels:
            m, g = mox[c], gl[c]
            pace = {"ttft_p50": TTFT_S * 1000, "ttft_p95": TTFT_S * 1000, "tpot_p50": ITL_S * 1000,
                    "out_tps": c * args.output_tokens / e2e}
            for key, label in (("ttft_p50", "TTFT p50 ms"), ("ttft_p95", "TTFT p95 ms"), ("tpot_p50", "TPOT p50 ms"),
                               ("out_tps", "output tok/s")):
                worst = max(worst, abs(m[key] - g[key]) / g[key] * 100)
                row = f"| {c} | {label} | {m[key]:,.1f} | {g[key]:,.1f} | {diff(m[key], g[key])} |"
                print(row + (f" {pace[key]:,.1f} |" if truth else ""))
            if m["errors"] or g["errors"]:
                print(f"| {c} | errors | {m['errors']} | {g['errors']} | |" + (" |" if truth else ""))
        print(f"\nLargest difference: {worst:.1f}% ({'within' if worst <= 10 else 'OVER'} 10%). Sweep wall time: "
              f"moxin bench {mox_wall:.1f} s, guidellm {gl_wall:.1f} s.")

        if not args.skip_ceiling:
            server, url = start_static(0.0, 0.0)
            try:
                n, c = args.ceiling_requests, 32
                mc, _ = moxin_bench(url, "static", [c], n, 16, 16)
                gc, _ = guidellm(args.guidellm, url, "static", tokenizer, [c], n, 16, 16, tmp)
            finally:
                server.kill()
            print(f"\n## Ceiling: static server with zero delay (own process), {c} streams, {n} requests of 16 "
                  "tokens\n")
            print("| tool | requests/s | output tok/s | TTFT p50 ms |")
            print("|---|---:|---:|---:|")
            for name, r in (("moxin bench", mc[c]), ("guidellm", gc[c])):
                print(f"| {name} | {r['req_s']:,.0f} | {r['out_tps']:,.0f} | {r['ttft_p50']:.2f} |")

        print("\n## Cost\n")
        print("| tool | import s | peak RSS MB | environment GB |")
        print("|---|---:|---:|---:|")
        t, rss = import_cost(sys.executable, "orchestrator.bench.load")
        print(f"| moxin bench (orchestrator.bench.load: aiohttp) | {t:.2f} | {rss:.0f} | (aiohttp: in moxin[ray]) |")
        t, rss = import_cost(gpython, "guidellm.benchmark")
        print(f"| guidellm (guidellm.benchmark) | {t:.2f} | {rss:.0f} | {site_size_gb(gpython):.1f} |")


if __name__ == "__main__":
    main()
