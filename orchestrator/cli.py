"""The `moxin` command: parse arguments, call one layer, format the result. No logic of its own.

Heavy libraries (ray, vllm, torch, kubernetes) are imported only inside the commands that need them,
so `moxin --help` and the catalog commands start fast.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from orchestrator import __version__
from orchestrator.cli_options import choice, option_from, options_from
from orchestrator.errors import InfeasibleError, MoxinError, Problem, SpecError
from orchestrator.observe.alerts import AlertSettings, rules_text
from orchestrator.spec.defaults import CONTROLLER_METRICS_PORT, ENGINE_PORT, MODEL_ROOT, ROUTER_PORT
from orchestrator.spec.deployment import ModelDeploymentSpec
from orchestrator.spec.engine import ENGINE_DEFAULTS, EngineName, EngineSettings, KvCacheDtype
from orchestrator.spec.plan import PlanOptions
from orchestrator.spec.router import RouterLimits

OUTPUT = click.option("-o", "--output", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table",
                      show_default=True, help="table for people; json/yaml print the full documents.")
DEFAULT_CONTEXT = f"[default: min({ENGINE_DEFAULTS.default_context_tokens}, model max)]"
ROUTER_LIMIT_FIELDS = list(RouterLimits.model_fields)
KV_DTYPE = option_from(ModelDeploymentSpec, "kv_cache_dtype", "--kv-dtype")


class MoxinGroup(click.Group):
    """Turns every error into a message and an exit code: 2 for bad input, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MoxinError as exc:
            text = str(exc) + "".join(f"\n  - {r}" for r in getattr(exc, "reasons", None) or [])
            click.echo(f"error: {text}" if "\n" not in text else f"error:\n{text}", err=True)
            sys.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # the CLI boundary: a bug, reported without a wall of frames
            if os.environ.get("MOXIN_DEBUG"):
                traceback.print_exc()
            click.echo(f"internal error: {type(exc).__name__}: {exc}\n"
                       "  This is a bug in moxin; run again with MOXIN_DEBUG=1 for the traceback.", err=True)
            sys.exit(1)


@click.group(cls=MoxinGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="moxin")
def cli() -> None:
    """moxin: which variant of which model runs on which hardware, and then run it."""


def _catalog(paths: tuple[Path, ...]) -> Any:
    from orchestrator.spec import load_catalog

    return load_catalog(list(paths))


def _dump(doc: Any) -> dict[str, Any]:
    return doc.model_dump(mode="json", by_alias=True, exclude_none=True)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(paths: tuple[Path, ...]) -> None:
    """Check documents (files or directories): syntax, fields, and every reference between them."""
    from collections import Counter

    from orchestrator.spec import load_documents
    from orchestrator.spec.catalog import build_catalog, builtin_documents

    docs = load_documents(list(paths))
    build_catalog(builtin_documents(), docs)
    counts = Counter(d.kind for d in docs)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no documents"
    click.echo(f"valid: {summary}")


@cli.command()
@click.option("-f", "--file", "paths", multiple=True, type=click.Path(path_type=Path),
              help="Extra documents (profiles of your own) beside the built-in ones.")
@OUTPUT
def profiles(paths: tuple[Path, ...], fmt: str) -> None:
    """List hardware profiles."""
    from orchestrator.output import as_list, emit, table

    items = list(_catalog(paths).profiles.values())
    if fmt != "table":
        return emit(as_list("HardwareProfile", [_dump(p) for p in items]), fmt)
    rows = []
    for p in items:
        s = p.spec
        rows.append([p.name, s.vendor, s.product, s.memory_gb, s.memory_bandwidth_gbps, s.peak_tflops.bf16,
                     s.peak_tflops.fp8, s.devices_per_node, ",".join(e.engine for e in s.engines),
                     ",".join(sorted({e.platform for e in s.engines}))])
    table(["NAME", "VENDOR", "PRODUCT", "MEM GB", "BW GB/s", "BF16 TF", "FP8 TF", "DEV/NODE", "ENGINES", "PLATFORM"],
          rows)


@cli.command()
@click.argument("name", required=False)
@click.option("-f", "--file", "paths", multiple=True, type=click.Path(path_type=Path),
              help="Extra documents (models of your own) beside the built-in catalog.")
@OUTPUT
def models(name: str | None, paths: tuple[Path, ...], fmt: str) -> None:
    """List models, or show one with its parameter accounting and variants."""
    from orchestrator.estimate.summary import model_status
    from orchestrator.output import as_list, billions, emit, gb, table

    catalog = _catalog(paths)
    items = [catalog.model(name)] if name else list(catalog.models.values())
    docs = [{**_dump(m), "status": model_status(m)} for m in items]
    if fmt != "table":
        return emit(docs[0] if name else as_list("Model", docs), fmt)
    if name:
        status = docs[0]["status"]
        p = status["parameters"]
        table(["MODULE", "PARAMETERS"], [[k, billions(v)] for k, v in p["byModule"].items()]
              + [["total (main model)", billions(p["total"])], ["active per token", billions(p["active"])]],
              title=f"{name} parameters")
        table(["VARIANT", "WEIGHTS GB", "CHECKPOINT GB", "BITS/WEIGHT", "FORMATS"],
              [[v["name"], gb(v["weightsBytes"]), gb(v["checkpointBytes"]), v["bitsPerWeight"],
                ", ".join(f"{k}={f.split(' ')[0]}" for k, f in v["formats"].items())] for v in status["variants"]],
              title=f"{name} variants")
        return None
    rows = []
    for m, d in zip(items, docs, strict=True):
        p = d["status"]["parameters"]
        a = m.spec.architecture
        rows.append([m.name, a.family, billions(p["total"]), billions(p["active"]), a.layers,
                     a.max_position_embeddings, ",".join(v.name for v in m.spec.variants)])
    table(["NAME", "FAMILY", "TOTAL", "ACTIVE", "LAYERS", "MAX CTX", "VARIANTS"], rows)
    return None


@cli.command()
@click.argument("kind")
def schema(kind: str) -> None:
    """Print the JSON Schema of a document kind (HardwareProfile, Model, Fleet, ModelDeployment, Rollout)."""
    from orchestrator.errors import Problem, SpecError
    from orchestrator.output import to_json
    from orchestrator.spec import KINDS
    from orchestrator.spec.suggest import did_you_mean

    match = next((k for k in KINDS if k.lower() == kind.lower()), None)
    if match is None:
        raise SpecError([Problem(f"unknown kind {kind!r}", hint=did_you_mean(kind, KINDS))])
    schema_doc = KINDS[match].model_json_schema(by_alias=True)
    schema_doc = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                  "$id": f"https://moxin.dev/schemas/v1alpha1/{match}.json", **schema_doc}
    click.echo(to_json(schema_doc))


def _pick_variant(model: Any, name: str) -> Any:
    from orchestrator.errors import Problem, SpecError
    from orchestrator.spec.suggest import did_you_mean

    variant = model.spec.variant(name)
    if variant is None:
        names = [v.name for v in model.spec.variants]
        raise SpecError([Problem(f"model {model.name!r} has no variant {name!r}", hint=did_you_mean(name, names))])
    return variant


def _replica_options(command: Any) -> Any:
    """The options that name one replica: model, variant, hardware, parallelism, context."""
    for option in reversed([
        click.option("--model", "-m", "model_name", required=True, help="Model name (moxin models)."),
        click.option("--variant", "-v", "variant_name", required=True, help="Variant of the model."),
        click.option("--hardware", "-H", "hardware", required=True, help="Hardware profile (moxin profiles)."),
        click.option("--tp", type=click.IntRange(1), help="Tensor-parallel degree; default: the smallest that fits."),
        click.option("--pp", type=click.IntRange(1), help="Pipeline stages; default: the smallest that fits."),
        click.option("--ep/--no-ep", default=False, help="Expert parallelism (whole experts per device)."),
        click.option("--context", type=click.IntRange(1), help=f"Context tokens per sequence {DEFAULT_CONTEXT}."),
    ]):
        command = option(command)
    return command


@cli.command()
@_replica_options
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True, help="Concurrent sequences.")
@KV_DTYPE
@click.option("--engine", type=choice(EngineName),
              help="Default: the profile's first engine that takes the variant.")
@options_from(EngineSettings,
              ["gpu_memory_utilization", "max_num_batched_tokens", "max_num_seqs", "cpu_kv_cache_gib"])
@click.option("--usd-per-device-hour", type=click.FloatRange(0), help="Price, for cost per hour and per token.")
@click.option("-f", "--file", "paths", multiple=True, type=click.Path(path_type=Path), help="Extra documents.")
@OUTPUT
def estimate(model_name: str, variant_name: str, hardware: str, tp: int | None, pp: int | None, ep: bool,
             context: int | None, batch: int, kv_cache_dtype: str, engine: str | None,
             usd_per_device_hour: float | None, paths: tuple[Path, ...], fmt: str, **settings: Any) -> None:
    """Does a variant fit on a hardware profile, at what context and concurrency, how fast, at what cost."""
    from orchestrator.estimate.estimator import estimate as run_estimate
    from orchestrator.output import emit, table

    catalog = _catalog(paths)
    model = catalog.model(model_name)
    variant = _pick_variant(model, variant_name)
    benchmarks, fits = _measurements(catalog)
    result = run_estimate(model, variant, catalog.profile(hardware), tp=tp, pp=pp, ep=ep, context=context,
                          batch=batch, kv_dtype=kv_cache_dtype, engine=engine,
                          settings=EngineSettings(**settings), usd_per_device_hour=usd_per_device_hour,
                          benchmarks=benchmarks, calibrations=fits.calibrations)
    if fmt != "table":
        emit(result.to_json(), fmt)
    else:
        from orchestrator.output import gb

        r = result
        speed = (lambda x: None if x is None else f"{x:,.1f}")
        table(["", ""], [
            ["fits", "yes" if r.fits else "NO"], ["support", r.support_label],
            ["engine", f"{r.engine} ({r.platform})" if r.engine else "none"],
            ["parallelism", f"tp={r.tensor_parallel} pp={r.pipeline_parallel}" + (" ep" if r.expert_parallel else "")
             + f" ({r.devices} devices)"],
            ["context x batch", f"{r.context_tokens} x {r.batch} tokens, KV {r.kv_cache_dtype}"],
            ["weights", f"{gb(r.weights_bytes, 2)} GB ({gb(r.weights_bytes_per_device, 2)} GB per device)"],
            ["KV per token", f"{r.kv_bytes_per_token:,} B ({r.kv_bytes_per_token_per_device:,} B per device)"],
            ["KV cache", f"{gb(r.kv_bytes, 2)} GB"],
            ["overhead per device", f"{gb(r.overhead_bytes_per_device, 2)} GB"],
            ["peak per device", f"{gb(r.peak_bytes_per_device, 2)} GB of {gb(r.usable_bytes_per_device, 2)} GB usable"],
            ["max context", r.max_context_tokens], ["max concurrency", r.max_concurrency],
            ["speed from", r.speed_label],
            ["decode tok/s", f"{speed(r.decode_tokens_per_second)} per sequence, "
             f"{speed(r.aggregate_decode_tokens_per_second)} total ({r.bound}-bound, datasheet roofline)"
             if r.decode_tokens_per_second is not None else None],
            ["prefill tok/s", speed(r.prefill_tokens_per_second)],
            ["calibration", f"{r.calibration['key']} ({'measured' if r.calibration['measured'] else 'NOT measured'})"
             if r.calibration else None],
            *_measured_rows(r),
            ["cost", f"${r.usd_per_hour:.2f}/h, ${r.usd_per_million_output_tokens:.3f} per 1M output tokens"
             if r.usd_per_million_output_tokens else None],
        ], title=f"{r.model} {r.variant} on {r.hardware}")
        for reason in r.reasons:
            click.echo(f"- {reason}")
        for figure in r.uncertain_inputs:
            click.echo(f"- {figure}")
        for name, why in fits.not_fitted:
            if catalog.benchmarks[name].spec.hardware == hardware:
                click.echo(f"- Benchmark {name} calibrates nothing: {why}")


def _measurements(catalog: Any) -> tuple[list[Any], Any]:
    """The catalog's Benchmark documents and the calibration entries fitted to them (estimate/fit.py)."""
    from orchestrator.estimate.fit import Fits, fit_benchmarks

    benchmarks = list(catalog.benchmarks.values())
    return benchmarks, fit_benchmarks(benchmarks, catalog.models, catalog.profiles) if benchmarks else Fits()


def _measured_rows(r: Any) -> list[list[Any]]:
    """The table rows of an estimate's measured figures (a Benchmark of exactly its replica)."""
    m = r.measured
    if m is None:
        return []
    if m.reading is None:
        return [["measured", f"Benchmark {m.benchmark}: nothing read at batch {r.batch} (measured concurrency "
                             f"{m.measured_range[0]}-{m.measured_range[1]})" if m.measured_range else
                 f"Benchmark {m.benchmark}: no usable level"]]
    g = m.reading

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1000:,.1f} ms"

    return [["measured", f"Benchmark {m.benchmark} at concurrency {g.concurrency} ({g.how})"],
            ["measured TTFT", f"p50 {ms(g.ttft_p50_s)}, p95 {ms(g.ttft_p95_s)}"],
            ["measured TPOT", f"p50 {ms(g.tpot_p50_s)}, p95 {ms(g.tpot_p95_s)}"],
            ["measured tok/s", (f"{g.decode_tokens_per_second or 0:,.1f} per sequence, "
                                f"{g.output_tokens_per_second:,.1f} output total, {g.requests_per_second:.3g} req/s")]]


@cli.command()
@click.option("--model", "-m", "model_name", required=True)
@click.option("--context", type=click.IntRange(1), help=f"Context tokens {DEFAULT_CONTEXT}.")
@click.option("--hardware", "-H", "hardware", multiple=True, help="Only these profiles (repeatable).")
@click.option("-f", "--file", "paths", multiple=True, type=click.Path(path_type=Path), help="Extra documents.")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json", "yaml", "svg"]), default="table",
              show_default=True)
def matrix(model_name: str, context: int | None, hardware: tuple[str, ...], paths: tuple[Path, ...], fmt: str) -> None:
    """Variants x hardware profiles: supported, fits, minimum devices, max context, decode tok/s, or why not."""
    from orchestrator.estimate.matrix import matrix as run_matrix
    from orchestrator.output import emit, table

    catalog = _catalog(paths)
    model = catalog.model(model_name)
    profiles = [catalog.profile(h) for h in hardware] if hardware else list(catalog.profiles.values())
    benchmarks, fits = _measurements(catalog)
    cells = run_matrix(model, profiles, context, benchmarks=benchmarks, calibrations=fits.calibrations)
    if fmt == "svg":
        from orchestrator.render.heatmap import heatmap_svg

        ctx = cells[0].estimate.context_tokens if cells else context
        click.echo(heatmap_svg(f"{model.name}: decode speed by variant and hardware at {ctx} tokens of context",
                               cells), nl=False)
    elif fmt != "table":
        emit({"model": model.name, "contextTokens": cells[0].estimate.context_tokens if cells else context,
              "cells": [c.to_json() for c in cells]}, fmt)
    else:
        rows = []
        notes: dict[str, None] = {}
        for c in cells:
            tps = None if c.decode_tokens_per_second is None else f"{c.decode_tokens_per_second:,.0f}"
            rows.append([c.variant, c.hardware, c.status, c.engine, c.devices if c.fits else None, c.max_context_tokens,
                         tps, c.speed_source, ", ".join(u.field for u in c.uncertain_inputs) or None,
                         (c.why_not or "")[:110]])
            if c.measured_by:
                notes[f"{c.hardware}: {c.variant} decode speed measured by Benchmark {c.measured_by} (median TPOT at "
                      "one sequence)"] = None
            elif c.speed_source == "calibrated":
                notes[f"{c.hardware}: {c.variant} decode speed is the datasheet roofline, bandwidth efficiency "
                      f"calibrated from Benchmark {c.estimate.calibration['benchmark']}"] = None
            if c.declared_by:
                notes[f"{c.hardware}: {c.variant} is supported as declared by {c.declared_by}, not by moxin's rules "
                      f"({c.estimate.declared_source})"] = None
            for u in c.uncertain_inputs:
                notes[f"{c.hardware}: {u}"] = None
        table(["VARIANT", "HARDWARE", "STATUS", "ENGINE", "DEVICES", "MAX CTX", "DECODE TOK/S", "SPEED", "UNCERTAIN",
               "WHY NOT"], rows)
        for note in notes:
            click.echo(f"- {note}")


@cli.command("engine-args")
@_replica_options
@click.option("--concurrency", type=click.IntRange(1),
              help=f"Concurrent sequences [default: {ENGINE_DEFAULTS.max_num_seqs} on vLLM, "
                   f"{ENGINE_DEFAULTS.cpu_max_num_seqs} on vLLM's CPU platform, as many as fit up to "
                   f"{ENGINE_DEFAULTS.mlx_decode_concurrency} on mlx-lm].")
@KV_DTYPE
@click.option("--engine", type=choice(EngineName),
              help="Default: the profile's first engine that runs the variant.")
@options_from(EngineSettings, ["gpu_memory_utilization", "max_num_batched_tokens"])
@click.option("--port", type=click.IntRange(1, 65535), default=ENGINE_PORT, show_default=True)
@click.option("--model-path", help="Where the engine reads the weights [default: the variant's checkpoint].")
@click.option("-f", "--file", "paths", multiple=True, type=click.Path(path_type=Path), help="Extra documents.")
@OUTPUT
def engine_args(model_name: str, variant_name: str, hardware: str, tp: int | None, pp: int | None, ep: bool,
                context: int | None, concurrency: int | None, kv_cache_dtype: str, engine: str | None, port: int,
                model_path: str | None, paths: tuple[Path, ...], fmt: str, **settings: Any) -> None:
    """The engine command line, environment and probes for one replica (exit 2 if it cannot run there)."""
    import shlex

    from orchestrator.engines.launch import engine_launch, fitted_parallelism
    from orchestrator.output import emit

    catalog = _catalog(paths)
    model = catalog.model(model_name)
    variant = _pick_variant(model, variant_name)
    profile = catalog.profile(hardware)
    engine_settings = EngineSettings(**settings)
    tp, pp = fitted_parallelism(model, variant, profile, tp=tp, pp=pp, ep=ep, context=context,
                                kv_dtype=kv_cache_dtype, engine=engine, settings=engine_settings)
    launch = engine_launch(model, variant, profile, tp=tp, pp=pp, ep=ep, context=context, concurrency=concurrency,
                           kv_dtype=kv_cache_dtype, engine=engine, port=port, model_path=model_path,
                           settings=engine_settings)
    if fmt != "table":
        emit(launch.model_dump(mode="json", by_alias=True), fmt)
        return
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in launch.env.items())
    click.echo((env + " " if env else "") + shlex.join(launch.argv))
    click.echo(f"# health {launch.health_path}, metrics {launch.metrics_path or 'none'}, ready within "
               f"{launch.readiness_timeout_seconds} s, image {launch.image or 'none'}, devices via "
               f"{launch.visibility_env or 'none'}")
    for note in launch.notes:
        click.echo(f"# {note}")


def _load_plan(path: Path) -> Any:
    from orchestrator.spec.loader import load_plan

    return load_plan(path)


@cli.command()
@click.option("-f", "--file", "paths", multiple=True, type=click.Path(path_type=Path),
              help="Fleet and ModelDeployment documents (files or directories).")
@click.option("--fleet", "fleet_name", help="The Fleet to plan for, when the files hold several.")
@click.option("--previous", type=click.Path(dir_okay=False, path_type=Path),
              help="The plan now running: keep replicas where they are unless moving pays.")
@options_from(PlanOptions, ["objective", "churn_weight", "gap", "time_limit_s"],
              flags={"time_limit_s": "--time-limit"})
@click.option("--diff", "diff_paths", nargs=2, type=click.Path(dir_okay=False, path_type=Path),
              help="OLD NEW: show what moves between two plans (no planning).")
@OUTPUT
def plan(paths: tuple[Path, ...], fleet_name: str | None, previous: Path | None,
         diff_paths: tuple[Path, Path] | None, fmt: str, **options: Any) -> None:
    """Place every deployment on the fleet: variant, pool, parallelism, replicas, nodes, with the reasons."""
    from orchestrator.output import emit, table
    from orchestrator.planner import diff, plan_catalog

    if diff_paths:
        old, new = (_load_plan(p) for p in diff_paths)
        changes = diff(old, new)
        if fmt != "table":
            cost = {"before": old.status and old.status.cost_usd_per_hour,
                    "after": new.status and new.status.cost_usd_per_hour}
            emit({"changes": [c.to_json() for c in changes], "costUsdPerHour": cost}, fmt)
            return
        if not changes:
            click.echo("no changes")
        for c in changes:
            click.echo(_change_line(c))
        return
    if not paths:
        raise click.UsageError("give the fleet and deployments with -f (or two plans with --diff)")
    prev = _load_plan(previous) if previous else None
    doc = plan_catalog(_catalog(paths), fleet_name, prev, PlanOptions(**options))
    if fmt != "table":
        emit(doc.to_json(), fmt)
        return
    rows = []
    for a in doc.spec.assignments:
        p = a.predicted
        nodes = sorted({pl.node for pl in a.placements})
        rows.append([a.deployment, a.variant, a.pool + (" (emulated)" if a.emulated else ""), a.engine,
                     f"tp={a.tensor_parallel} pp={a.pipeline_parallel}", a.replicas,
                     p.capacity_requests_per_second, p.ttft_seconds, p.tpot_seconds, a.cost_usd_per_hour,
                     ", ".join(nodes[:3]) + (f" +{len(nodes) - 3}" if len(nodes) > 3 else "")])
    table(["DEPLOYMENT", "VARIANT", "POOL", "ENGINE", "PARALLEL", "REPLICAS", "REQ/S EACH", "TTFT S", "TPOT S",
           "USD/H", "NODES"], rows, title=f"plan for fleet {doc.spec.fleet}")
    for a in doc.spec.assignments:
        click.echo(f"- {a.deployment}: {a.why.summary}")
    for u in doc.spec.unplaced:
        click.echo(f"UNPLACED {u.deployment} ({u.served_requests_per_second} of {u.demand_requests_per_second} "
                   "req/s served):")
        for r in u.reasons[:8]:
            click.echo(f"    {r}")
    st = doc.status
    if st is not None:
        click.echo(f"cost ${st.cost_usd_per_hour}/h; served {st.served_requests_per_second} of "
                   f"{st.demand_requests_per_second} req/s; {st.solver}: {st.solver_status}, gap "
                   f"{st.optimality_gap}, {st.solve_seconds} s over {st.candidates} candidates")


def _change_line(c: Any) -> str:
    if c.change == "moved":
        return f"~ {c.assignment}: replica {c.replica} stage {c.stage} {c.from_} -> {c.to}"
    sign = {"added": "+", "removed": "-", "scaled": "~"}[c.change]
    return f"{sign} {c.assignment}: {c.replicas_before} -> {c.replicas_after} replicas"


# -- the Ray runtime -------------------------------------------------------------------------------------------------
ADDRESS = click.option("--address", help="Ray cluster address [default: $RAY_ADDRESS, else the local cluster].")


def _unplaced_error(doc: Any) -> None:
    if doc.spec.unplaced:
        lines = [f"{u.deployment}: {'; '.join(u.reasons[:3])}" for u in doc.spec.unplaced]
        raise InfeasibleError("the plan leaves deployments unplaced, nothing was applied:\n  " + "\n  ".join(lines))


class RouterCount(click.ParamType):
    """``--routers``: a count from 1 to 16, or ``auto`` (one per core this process may use, within its cgroup's CPU
    quota and memory limit, at most 16: ``workers.worker_count``)."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":  # as `moxin router --workers auto` counts them
            from orchestrator.runtime.workers import worker_count

            return worker_count("auto")
        try:
            count = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a count (1-16) nor auto", param, ctx)
        if not 1 <= count <= 16:
            self.fail(f"{count} is not in 1-16 (auto: one per core)", param, ctx)
        return count


@cli.command()
@click.option("-f", "--file", "paths", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Fleet + deployments to run [default: the local example, emulated on this machine's CPU].")
@click.option("--port", type=click.IntRange(1, 65535), default=ROUTER_PORT, show_default=True, help="Router port.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=CONTROLLER_METRICS_PORT, show_default=True,
              help="Controller metrics port (0: any free port).")
@click.option("--routers", type=RouterCount(), default="auto", show_default=True,
              help="Router instances sharing the port (one listening socket, one accept queue), 1-16, or `auto`: "
                   "one per core this process may use, within its cgroup's CPU quota and memory limit (at most 16). "
                   "Each serves its own /metrics (`moxin status` lists them; Prometheus and `moxin top` sum them).")
@click.option("--timeout", type=click.FloatRange(1), default=900, show_default=True,
              help="Seconds to wait for every replica to serve.")
@click.option("--api-keys", "api_keys", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Key file (moxin keys create): the router then needs a key on /v1 and listens on every "
                   "interface. Without it, the router listens on 127.0.0.1 only.")
@click.option("--prometheus/--no-prometheus", "with_prometheus", default=True, show_default=True,
              help="Start a Prometheus (the `prometheus` binary on PATH) on 127.0.0.1 scraping the controller, "
                   "routers and engines; `moxin top` reads it.")
@click.option("--prometheus-port", type=click.IntRange(1, 65535),
              help="Prometheus's port [default: 9090, or any free port when it is busy].")
@click.option("--scrape-interval", type=click.FloatRange(0.1), default=5.0, show_default=True,
              help="Seconds between Prometheus's scrapes.")
@options_from(RouterLimits, ROUTER_LIMIT_FIELDS, {f: "--router-" + f.replace("_", "-") for f in ROUTER_LIMIT_FIELDS})
def up(paths: tuple[Path, ...], port: int, metrics_port: int, routers: int, timeout: float,
       api_keys: Path | None, with_prometheus: bool, prometheus_port: int | None, scrape_interval: float,
       **limits: Any) -> None:
    """Start the embedded default: a local multi-node Ray cluster with one node per fleet node (emulated pools),
    the tiny demo model, the controller, the routers (one per core by default, sharing the port) and a Prometheus;
    then wait until every replica serves."""
    from orchestrator.runtime import client, local, prometheus
    from orchestrator.spec.catalog import local_example_dir

    paths = paths or (local_example_dir(),)
    if api_keys is not None:
        _read_keys(api_keys)
    root = local.home() / "models"
    catalog = _catalog(paths)
    for name in local.prepare_checkpoints(catalog, root):  # the demo's model exists nowhere: generate it
        click.echo(f"prepared {name} checkpoints under {root}")
    doc = _plan_inputs(paths, None, str(root), catalog=catalog).plan
    _unplaced_error(doc)
    nodes = local.layout(doc.spec.pools, host_cpus=local.host_cpus())
    click.echo(f"starting a local Ray cluster: head + {len(nodes)} node(s): " +
               ", ".join(f"{n.name} {dict(n.resources, **({'GPU': n.num_gpus} if n.num_gpus else {}))}"
                         + (f" on CPUs {','.join(map(str, n.cpus))}" if n.cpus else "") for n in nodes))
    info = local.start(nodes)
    address = info["address"]
    options = {"routerPort": port, "metricsPort": metrics_port, "routers": routers, "logDir": str(local.home() / "logs"),
               "prometheusSd": str(local.home() / "prometheus-sd.json"),
               # No keys, no network: a keyless router answers anyone who can reach it.
               "routerHost": "0.0.0.0" if api_keys else "127.0.0.1",
               "apiKeys": str(api_keys.resolve()) if api_keys else None,
               "routerLimits": RouterLimits(**limits).model_dump(by_alias=True)}
    try:
        client.apply(address, doc, options)
        prometheus_url = _start_prometheus(with_prometheus, Path(options["prometheusSd"]), prometheus_port,
                                           scrape_interval)
        client.set_prometheus_url(address, prometheus_url)  # rollout gates query it (None: the routers' /metrics)
        seen: dict[str, str] = {}

        def progress(st: dict[str, Any]) -> None:
            for r in st["replicas"]:
                if seen.get(r["id"]) != r["state"]:
                    seen[r["id"]] = r["state"]
                    where = f" {r['url']}" if r.get("url") and r["state"] == "ready" else ""
                    click.echo(f"  {time.strftime('%H:%M:%S')} {r['id']}: {r['state']}{where}")

        st = client.wait_ready(address, timeout, progress)
    except KeyboardInterrupt:
        click.echo("interrupted: tearing everything down")
        for line in client.down(address):
            click.echo(line)
        prometheus.stop()
        raise SystemExit(130) from None
    router = st["routers"][0] if api_keys else f"http://127.0.0.1:{port}"
    click.echo(_up_summary(st, address, router, routers, api_keys, prometheus_url))


def _routers_phrase(count: int) -> str:
    return "1 router" if count == 1 else f"{count} routers sharing the port"


def _up_summary(st: dict[str, Any], address: str, router: str, routers: int, api_keys: Path | None,
                prometheus_url: str | None) -> str:
    """What `moxin up` prints once every replica serves. A scrape of the router port reaches whichever router
    accepts it: each router's own /metrics is listed (Prometheus scrapes them all, `moxin top` sums them)."""
    deployment = next(r["labels"]["deployment"] for r in st["replicas"] if r["desired"])
    auth = " -H \"Authorization: Bearer $MOXIN_API_KEY\"" if api_keys else ""
    access = (f"API keys: {api_keys} (every /v1 request needs Authorization: Bearer KEY)" if api_keys else
              "listening on 127.0.0.1 only: pass --api-keys FILE (moxin keys create) to serve other hosts")
    urls = st.get("routerMetricsUrls") or []  # the routers serving (a rerun of up keeps those running)
    router_metrics = ", ".join(urls) or f"{router}/metrics"
    return f"""
moxin is up (Ray at {address}).
  router (OpenAI API): {router}/v1 ({_routers_phrase(len(urls) or routers)})
  router metrics:      {router_metrics}
  controller metrics:  {st['metricsUrl']}
  Prometheus targets:  {st['prometheusSd']} (file_sd, kept current)
  Prometheus:          {prometheus_url or 'not started'}
  {access}
try:
  curl -s {router}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\
    -d '{{"model": "{deployment}", "messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 16}}'
  moxin bench --url {router} --model {deployment} --concurrency 1,2,4 --requests 8   # measure it
then: moxin status | moxin top | moxin logs REPLICA | moxin down"""


ALERT_RULES_FILE = "moxin.rules.yml"
"""moxin's alert rules (``moxin render alerts``) in the rules directory of `moxin up`'s Prometheus."""


def _start_prometheus(wanted: bool, sd_file: Path, port: int | None, scrape_interval_s: float) -> str | None:
    """Prometheus is optional: when it cannot start, one line says why and how to get it; nothing else stops."""
    from orchestrator.runtime import prometheus

    if not wanted:
        prometheus.stop()  # a Prometheus of an earlier `moxin up` would scrape on unasked
        return None
    try:
        info = prometheus.start(sd_file, port, scrape_interval_s, rule_files={ALERT_RULES_FILE: rules_text()})
    except prometheus.PrometheusUnavailable as exc:
        click.echo(str(exc))
        return None
    click.echo(f"Prometheus at {info['url']} (scraping every {scrape_interval_s:g} s, moxin's alert rules loaded)")
    return info["url"]


@cli.command()
@click.option("-f", "--file", "paths", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              help="Fleet + deployments (planned now), or one Plan document.")
@click.option("--fleet", "fleet_name", help="The Fleet to plan for, when the files hold several.")
@ADDRESS
@option_from(PlanOptions, "model_root")
@click.option("--kubernetes", is_flag=True, help="Apply to the Kubernetes cluster of $KUBECONFIG instead of Ray.")
@click.option("--namespace", default="moxin", show_default=True, help="Kubernetes namespace (with --kubernetes).")
@click.option("--image", "images", multiple=True, metavar="KEY=IMAGE",
              help="With --kubernetes: engine image where the profile names none (KEY: ENGINE/PLATFORM).")
@click.option("--dry-run", is_flag=True, help="Show what would change, change nothing.")
def apply(paths: tuple[Path, ...], fleet_name: str | None, address: str | None, model_root: str, kubernetes: bool,
          namespace: str, images: tuple[str, ...], dry_run: bool) -> None:
    """Make a cluster run the plan: on Ray (the controller reconciles) or on Kubernetes (server-side apply)."""
    if kubernetes:
        from orchestrator.render.kubernetes import render_objects
        from orchestrator.runtime.kubernetes import apply_objects

        _check_namespace(namespace)
        inputs = _plan_inputs(paths, fleet_name, model_root)
        _unplaced_error(inputs.plan)
        objects = render_objects(inputs.plan, {"managedBy": "moxin"}, namespace, catalog=inputs.catalog,
                                 fleet=inputs.fleet, images=_parse_images(images))
        for line in apply_objects(objects, namespace=namespace, plan_name=inputs.plan.name, dry_run=dry_run):
            click.echo(line)
        return
    from orchestrator.planner import diff
    from orchestrator.runtime import client

    addr, _ = client.resolve_address(address)
    previous = client.current_plan(addr)
    doc = _plan_inputs(paths, fleet_name, model_root, previous).plan
    _unplaced_error(doc)
    changes = diff(previous, doc)
    for c in changes:
        click.echo(_change_line(c))
    if not changes:
        click.echo("no changes to the plan")
    if dry_run:
        return
    result = client.apply(addr, doc)
    click.echo(f"applied: {len(result['replicas'])} replica(s) desired; watch with `moxin status`")


@cli.command()
@ADDRESS
@click.option("--prometheus-sd", "sd_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the Prometheus file_sd target list here; the controller keeps it current.")
@OUTPUT
def status(address: str | None, sd_file: Path | None, fmt: str) -> None:
    """Replicas: state, pool, node, emulated or not, endpoint, engine PID, restarts."""
    from orchestrator.output import emit, table
    from orchestrator.runtime import client

    addr, is_local = client.resolve_address(address)
    if sd_file is not None:
        client.set_prometheus_sd(addr, sd_file)
    st = client.status(addr)
    st["prometheus"] = _local_prometheus(is_local)
    if fmt != "table":
        emit(st, fmt)
        return
    rows = []
    for r in st["replicas"]:
        labels = r.get("labels", {})
        state = r["state"] + (" (draining)" if r["draining"] else "") + ("" if r["desired"] else " (extra)") + \
            (" (unschedulable)" if r.get("unschedulable") else "")
        rows.append([r["id"], state, labels.get("deployment", "-"), labels.get("variant", "-"),
                     labels.get("pool", "-") + (" (emulated)" if labels.get("emulated") == "true" else ""),
                     labels.get("engine", "-"), ",".join(r.get("nodes", [])) or "-", r["url"] or "-",
                     r["enginePid"] or "-", r["restarts"]])
    table(["REPLICA", "STATE", "DEPLOYMENT", "VARIANT", "POOL", "ENGINE", "NODE", "ENDPOINT", "PID", "RESTARTS"], rows,
          title=f"plan {st['plan']}")
    click.echo(_router_status_line(st))
    for line in _stage_lines(st["replicas"]):
        click.echo(line)
    for r in st["replicas"]:
        if r["lastError"]:
            click.echo(f"{r['id']}: {r['lastError']}")
    if st["prometheusSd"]:
        click.echo(f"Prometheus file_sd: {st['prometheusSd']}")
    if st["prometheus"]:
        click.echo(f"Prometheus: {st['prometheus']['url']} (moxin top reads it)")


def _router_status_line(st: dict[str, Any]) -> str:
    """The routers' port, how many serve it and each one's /metrics (a scrape of the port reaches one of them)."""
    urls = st.get("routerMetricsUrls") or []
    routers = f"{', '.join(st['routers'])} ({_routers_phrase(len(urls))}; metrics: {', '.join(urls)})" if urls else \
        ", ".join(st["routers"]) or "not started"
    return f"router: {routers}; controller metrics: {st['metricsUrl']}"


def _stage_lines(replicas: list[dict[str, Any]]) -> list[str]:
    """Where each node of a multi-node replica runs: node rank, the plan's node, host, devices, process."""
    out = []
    for r in replicas:
        stages = r.get("stages") or []
        if len(stages) < 2:
            continue
        out.append(f"{r['id']}: {len(stages)} nodes")
        for s in stages:
            devices = ",".join(str(d) for d in s.get("devices") or []) or "-"
            out.append(f"  node rank {s['nodeRank']}: {s.get('node') or '-'} (host {s.get('host') or '-'}, "
                       f"devices {devices}, pid {s.get('enginePid') or '-'})")
    return out


def _local_prometheus(is_local: bool) -> dict[str, Any] | None:
    """The Prometheus `moxin up` started, when the cluster asked about is moxin up's: its URL, pid, interval."""
    from orchestrator.runtime import prometheus

    info = prometheus.running() if is_local else None
    return None if info is None else {k: info[k] for k in ("url", "pid", "scrapeIntervalSeconds")}


@cli.command()
@click.argument("replica")
@ADDRESS
@click.option("--tail", type=click.IntRange(1), default=200, show_default=True, help="Lines from the end.")
def logs(replica: str, address: str | None, tail: int) -> None:
    """The engine log of one replica (stdout and stderr, every restart)."""
    from orchestrator.runtime import client

    addr, _ = client.resolve_address(address)
    click.echo(client.logs(addr, replica, tail), nl=False)


@cli.command()
@ADDRESS
def down(address: str | None) -> None:
    """Stop every replica, router and the controller; and the local cluster if `moxin up` started it."""
    from orchestrator.runtime import client

    for line in client.down(address):
        click.echo(line)


@cli.command()
@ADDRESS
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts and tests).")
@click.option("--interval", type=click.FloatRange(0.5), default=5.0, show_default=True,
              help="Seconds between frames; reading /metrics directly, the rates are over this gap.")
@click.option("--window", type=click.FloatRange(1), default=30.0, show_default=True,
              help="With Prometheus: seconds of history each rate is taken over.")
@click.option("--source", type=click.Choice(["auto", "prometheus", "metrics"]), default="auto", show_default=True,
              help="prometheus: its query API; metrics: every router's and the controller's /metrics, read twice; "
                   "auto: Prometheus when `moxin up` started one or --prometheus is given.")
@click.option("--prometheus", "prometheus_url", help="A Prometheus that scrapes this cluster (e.g. http://HOST:9090).")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json: one document per frame, with every number.")
def top(address: str | None, once: bool, interval: float, window: float, source: str, prometheus_url: str | None,
        fmt: str) -> None:
    """Live view of deployments and their replicas: requests/s against planned capacity, in flight, TTFT/TPOT p95
    against the SLO, error ratio, and the planned against the actual cost per 1M output tokens."""
    from orchestrator.output import to_json

    reader = _top_source(address, source, prometheus_url, window, interval)
    if fmt == "json":
        while True:
            click.echo(to_json({**reader.describe(), "time": time.time(),
                                "deployments": [d.to_json() for d in reader.frame()]}))
            if once:
                return
            time.sleep(interval)
    if once:
        _print(_top_table(reader.frame(), reader.describe()))
        return
    from rich.live import Live

    try:
        with Live(_top_table([], reader.describe()), auto_refresh=False) as live:
            while True:
                live.update(_top_table(reader.frame(), reader.describe()), refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        return


def _top_source(address: str | None, source: str, prometheus_url: str | None, window: float, interval: float) -> Any:
    from orchestrator.runtime import client
    from orchestrator.runtime.top_sources import MetricsSource, PrometheusSource

    if source != "metrics":
        if prometheus_url is None:
            _, is_local = client.resolve_address(address)
            prometheus_url = (_local_prometheus(is_local) or {}).get("url")
        if prometheus_url:
            return PrometheusSource(prometheus_url, window)
        if source == "prometheus":
            raise MoxinError("no Prometheus: `moxin up` starts one when the `prometheus` binary is installed "
                             "(apt-get install prometheus); or pass --prometheus URL, or --source metrics")
    addr, _ = client.resolve_address(address)
    st = client.status(addr)
    return MetricsSource([st["metricsUrl"], *st["routerMetricsUrls"]], interval)


def _top_table(views: list[Any], described: dict[str, Any]) -> Any:
    from rich.table import Table

    def num(x: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if x is None else fmt.format(x)

    def ms(x: float | None, target: float | None = None) -> str:
        text = num(x if x is None else x * 1000, "{:.0f} ms")
        return f"[red]{text}[/red]" if x is not None and target is not None and x > target else text

    what = (f"Prometheus {described['prometheus']}, rates over {described['windowSeconds']:g} s"
            if described["source"] == "prometheus" else f"/metrics every {described['intervalSeconds']:g} s")
    t = Table(title=f"moxin top: {what}  {time.strftime('%H:%M:%S')}", header_style="bold", box=None,
              pad_edge=False)
    for c in ("DEPLOYMENT / ASSIGNMENT", "READY", "REQ/S", "CAPACITY", "LOAD", "IN FLIGHT", "TTFT p95",
              "TPOT p95", "ERRORS", "TOK/S", "$/1M OUT plan", "$/1M OUT now"):
        t.add_column(c, justify="left" if c.startswith("DEPLOYMENT") else "right")
    for view in views:
        for row in (view.total, *view.assignments):
            labels = row.labels
            name = (f"[bold]{labels['deployment']}[/bold]" if row is view.total else
                    f"  {labels['variant']} on {labels['pool']} ({labels['engine']}"
                    f"{', emulated' if labels['emulated'] == 'true' else ''})")
            t.add_row(name, f"{row.replicas_ready}/{row.replicas_desired}", num(row.requests_per_second),
                      num(row.capacity_requests_per_second), num(row.load, "{:.0%}"), num(row.in_flight, "{:g}"),
                      ms(row.ttft_p95_seconds, view.slo_seconds.get("ttft_p95")),
                      ms(row.tpot_p95_seconds, view.slo_seconds.get("tpot_p95")), num(row.error_ratio, "{:.1%}"),
                      num(row.output_tokens_per_second, "{:.1f}"),
                      num(row.predicted_usd_per_million_output_tokens, "${:.2f}"),
                      num(row.actual_usd_per_million_output_tokens, "${:.2f}"))
    if not views:
        t.caption = "no deployment reported yet"
    return t


def _print(renderable: Any) -> None:
    from rich.console import Console

    Console(width=200 if not sys.stdout.isatty() else None).print(renderable)


@cli.command("node-resources")
@click.option("--hardware", "-H", "hardware", required=True, help="Hardware profile of the node.")
@click.option("--devices", type=click.IntRange(1), help="Devices in this node [default: the profile's per node].")
@click.option("--node", "node_name", help="The node's name in the fleet (lets the plan pin replicas to it).")
@click.option("-f", "--file", "paths", multiple=True, type=click.Path(path_type=Path), help="Extra documents.")
def node_resources(hardware: str, devices: int | None, node_name: str | None, paths: tuple[Path, ...]) -> None:
    """Print the JSON for `ray start --resources` on a node of this hardware (CPU/GPU go to their own flags)."""
    profile = _catalog(paths).profile(hardware)
    flags, custom = profile.spec.ray.start_flags(devices or profile.spec.devices_per_node, node_name)
    click.echo(json.dumps(custom))
    if flags:
        click.echo(f"# also pass: {' '.join(f'--{flag}={v:g}' for flag, v in flags.items())}", err=True)


@cli.command(hidden=False)
@click.option("--config", "config", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='Routing table: {"deployments": {name: [{name, url, requestModel, weight, labels}]}}.')
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--api-keys", "api_keys", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Key file (moxin keys create): every /v1 request then needs Authorization: Bearer KEY. "
                   "Reloaded when it changes.")
@click.option("--max-body-mib", type=click.FloatRange(0.001, 1024), default=4, show_default=True,
              help="Largest request body accepted (413 above).")
@click.option("--access-log", is_flag=True,
              help="Log a line per request (logger orchestrator.access: its id, method, path, status, time, deployment "
                   "and replica; never a header, key or body). Off by default: it costs ~25 us of CPU per request, "
                   "about a fifth of the router's own.")
@click.option("--workers", default="1", show_default=True, metavar="N|auto",
              help="Router processes sharing the port (one listening socket, one accept queue); auto: one per CPU "
                   "this process may use (affinity, cgroup CPU quota; no more than its memory limit holds at 128 "
                   "MiB each), at most 16. Past 1, and with auto, a parent restarts a worker that dies and serves "
                   "every worker's /metrics, labelled worker=SLOT, on --metrics-port.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=9091, show_default=True,
              help="With --workers past 1 or auto: the port of the parent's /metrics (all workers).")
@options_from(RouterLimits, ROUTER_LIMIT_FIELDS)
def router(config: Path, host: str, port: int, api_keys: Path | None, max_body_mib: float, access_log: bool,
           workers: str, metrics_port: int, **limits: Any) -> None:
    """Run the OpenAI-compatible router outside Ray, from a routing-table file (reloaded when it changes).
    Upstream requests carry $MOXIN_ENGINE_KEY, when set, as the engines' bearer token. SIGTERM drains: the port
    closes, requests in flight get --drain-seconds to finish (with --workers: in every worker, then it exits)."""
    from orchestrator.runtime.balance import parse_table

    try:
        parse_table(json.loads(config.read_text()))
    except ValueError as exc:
        raise SpecError([Problem(f"not a routing table: {exc}", str(config),
                                 hint='{"deployments": {"NAME": [{"name", "url", "requestModel", "weight"}]}}')]) from None
    if api_keys is not None:
        _read_keys(api_keys)
    try:
        from orchestrator.runtime.dataplane import run_from_config
    except ImportError as exc:
        raise MoxinError(f"{exc.name} is not installed: pip install 'moxin[ray]'") from None
    from orchestrator.runtime.workers import supervise, worker_count

    try:
        count = worker_count(workers)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--workers") from None
    if count > 1 or workers == "auto":  # auto: the same shape (and metrics port) whatever it comes to
        spec = {"config": str(config), "host": host, "port": port, "accessLog": access_log,
                "apiKeys": str(api_keys) if api_keys else None, "maxBodyBytes": int(max_body_mib * 2**20),
                "limits": RouterLimits(**limits).model_dump(mode="json")}
        try:
            supervise(spec, count, host, port, metrics_port)
        except OSError as exc:
            raise MoxinError(f"cannot listen on {host}:{port}: {exc}") from None
        return
    run_from_config(config, host, port, api_keys=api_keys, max_body_bytes=int(max_body_mib * 2**20),
                    limits=RouterLimits(**limits), access_log=access_log)


def _read_keys(path: Path) -> Any:
    from orchestrator.runtime.keys import read_key_file

    try:
        return read_key_file(path)
    except (OSError, ValueError) as exc:
        raise SpecError([Problem(f"not a key file: {exc}", hint="create one with `moxin keys create NAME --file "
                                 f"{path}`")]) from None


@cli.group()
def dev() -> None:
    """Developer tools: tiny models for tests and the demo."""


@dev.command("tiny-model")
@click.option("--arch", type=click.Choice(["llama", "glm4-moe", "qwen3-moe"]), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for the HF checkpoint.")
@click.option("--layers", type=click.IntRange(1), default=2, show_default=True)
@click.option("--hidden", type=click.IntRange(8), default=128, show_default=True)
@click.option("--heads", type=click.IntRange(1), default=4, show_default=True)
@click.option("--kv-heads", type=click.IntRange(1), default=2, show_default=True)
@click.option("--head-dim", type=click.IntRange(8), default=64, show_default=True,
              help="vLLM's CPU attention kernel rejects 16; 64 works.")
@click.option("--intermediate", type=click.IntRange(1), default=256, show_default=True)
@click.option("--moe-intermediate", type=click.IntRange(1), default=64, show_default=True)
@click.option("--experts", type=click.IntRange(1), default=4, show_default=True)
@click.option("--experts-per-token", type=click.IntRange(1), default=2, show_default=True)
@click.option("--vocab", type=click.IntRange(64), default=512, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mlx-bits", type=click.Choice(["3", "4", "8"]), help="Also write an MLX checkpoint, OUT-mlx-Nbit.")
def tiny_model(arch: str, out: Path, layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int,
               intermediate: int, moe_intermediate: int, experts: int, experts_per_token: int, vocab: int, seed: int,
               mlx_bits: str | None) -> None:
    """Write a deterministic random-weight checkpoint the real engines can serve (no hub download)."""
    from orchestrator.devtools import tiny_model as tm
    from orchestrator.errors import MoxinError, Problem, SpecError

    try:
        tm.generate(arch, out, layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                    intermediate=intermediate, moe_intermediate=moe_intermediate, experts=experts,
                    experts_per_token=experts_per_token, vocab=vocab, seed=seed)
    except ValueError as exc:
        raise SpecError([Problem(str(exc), hint="see moxin dev tiny-model --help")]) from None
    except ImportError as exc:
        raise MoxinError(f"{exc.name or exc} is not installed: install the cpu extra "
                         "(pip install 'moxin[cpu]', or make test)") from None
    size = tm.checkpoint_size(out)
    click.echo(f"{out}: {arch}, {size.parameters:,} parameters, {size.payload_bytes:,} bytes of weights")
    if mlx_bits:
        mlx_out = out.with_name(f"{out.name}-mlx-{mlx_bits}bit")
        tm.convert_mlx(out, mlx_out, int(mlx_bits))
        click.echo(f"{mlx_out}: MLX {mlx_bits}-bit, {tm.checkpoint_size(mlx_out).payload_bytes:,} bytes of weights")


# -- Kubernetes: render a plan as Helm values, the chart's objects, or KubeRay objects (issue #7) -------------------
_RENDER_PATHS = click.option("-f", "--file", "paths", multiple=True, required=True,
                             type=click.Path(exists=True, path_type=Path),
                             help="Fleet + deployments (planned now), or a Plan document (plus any custom profiles).")
_RENDER_FLEET = click.option("--fleet", "fleet_name", help="The Fleet to plan for, when the files hold several.")
_RENDER_NAMESPACE = click.option("--namespace", default="moxin", show_default=True,
                                 help="Kubernetes namespace the objects go to (router URLs name it).")
_RENDER_IMAGES = click.option("--image", "images", multiple=True, metavar="KEY=IMAGE",
                              help="Engine image where the profile names none; KEY is ENGINE/PLATFORM (helm, k8s) "
                                   "or a pool name (kuberay worker images). Repeatable.")


def _render_options(command: Any) -> Any:
    """-f, --fleet, --namespace, --image: what every `moxin render` command takes."""
    for option in (_RENDER_IMAGES, _RENDER_NAMESPACE, _RENDER_FLEET, _RENDER_PATHS):
        command = option(command)
    return command


@dataclass(frozen=True)
class _Inputs:
    plan: Any
    catalog: Any
    fleet: Any


def _plan_inputs(paths: tuple[Path, ...], fleet_name: str | None, model_root: str = MODEL_ROOT,
                 previous: Any = None, catalog: Any = None) -> _Inputs:
    """The plan (a Plan file as it is, or the fleet and deployments planned now), its catalog and fleet; warns
    about deployments the plan leaves unplaced. ``catalog``: the documents of ``paths``, where already loaded."""
    from orchestrator.planner import plan_or_given

    catalog = catalog or _catalog(paths)
    found = plan_or_given(catalog, fleet_name, previous, PlanOptions(model_root=model_root))
    for u in found.plan.spec.unplaced:
        click.echo(f"warning: {u.deployment} is not (fully) placed by the plan: {'; '.join(u.reasons[:2])}", err=True)
    return _Inputs(found.plan, catalog, found.fleet)


def _parse_images(images: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in images:
        key, sep, image = item.partition("=")
        if not sep or not key or not image:
            raise SpecError([Problem(f"--image {item!r} is not KEY=IMAGE", hint="e.g. --image vllm/mlu=REGISTRY/vllm-mlu:TAG")])
        out[key] = image
    return out


def _check_namespace(namespace: str) -> None:
    import re

    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", namespace):
        raise SpecError([Problem(f"namespace {namespace!r} is not a DNS label",
                                 hint="lowercase letters, digits and '-', at most 63 characters")])


def _emit_objects(objects: list[dict[str, Any]], out_dir: Path | None) -> None:
    """One file per object in ``out_dir`` (stale files of an earlier render removed), or a YAML stream."""
    from orchestrator.output import to_yaml
    from orchestrator.render.kubernetes import write_objects

    if out_dir is None:
        sys.stdout.write("".join("---\n" + to_yaml(o) for o in objects))
        return
    write_objects(objects, out_dir)
    click.echo(f"wrote {len(objects)} objects to {out_dir}", err=True)


def _helm_values(paths: tuple[Path, ...], fleet_name: str | None, namespace: str, images: tuple[str, ...]) -> Any:
    from orchestrator.render.helm import helm_values

    _check_namespace(namespace)
    inputs = _plan_inputs(paths, fleet_name)
    result = helm_values(inputs.plan, inputs.catalog, fleet=inputs.fleet, namespace=namespace,
                         images=_parse_images(images))
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    return result


@cli.group()
def render() -> None:
    """Render a plan for Kubernetes (Helm values for helm/moxin, the chart's objects, or KubeRay objects), or
    moxin's Grafana dashboards and Prometheus alert rules."""


@render.command("helm")
@_render_options
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="values.yaml to write [default: stdout].")
def render_helm(paths: tuple[Path, ...], fleet_name: str | None, namespace: str, images: tuple[str, ...],
                out: Path | None) -> None:
    """Values for the helm/moxin chart from the plan: `helm install moxin helm/moxin -n NS -f values.yaml`."""
    from orchestrator.output import to_yaml, write_atomic

    text = "# Rendered by `moxin render helm` from the plan; install with helm install -n NAMESPACE -f THIS_FILE.\n" \
           + to_yaml(_helm_values(paths, fleet_name, namespace, images).values)
    if out is None:
        sys.stdout.write(text)
    else:
        write_atomic(out, text)
        click.echo(f"wrote {out}", err=True)


@render.command("k8s")
@_render_options
@click.option("--values", "values_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Extra chart values (YAML) over the plan's, e.g. monitoring or model storage. Repeatable.")
@click.option("-o", "--output", "out", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for one file per object [default: a YAML stream on stdout].")
def render_k8s(paths: tuple[Path, ...], fleet_name: str | None, namespace: str, images: tuple[str, ...],
               values_files: tuple[Path, ...], out: Path | None) -> None:
    """Kubernetes objects: the helm/moxin chart rendered (Helm SDK, no cluster) with the plan's values."""
    from orchestrator.render.helm import deep_merge
    from orchestrator.render.kubernetes import read_values, render_chart

    values = deep_merge(_helm_values(paths, fleet_name, namespace, images).values, read_values(values_files))
    _emit_objects(render_chart(values, namespace=namespace), out)


@render.command("kuberay")
@_render_options
@click.option("-o", "--output", "out", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for one file per object [default: a YAML stream on stdout].")
def render_kuberay(paths: tuple[Path, ...], fleet_name: str | None, namespace: str, images: tuple[str, ...],
                   out: Path | None) -> None:
    """A KubeRay RayCluster shaped like the fleet, and a Job that runs `moxin apply` (controller + router) on it."""
    from orchestrator.render.kuberay import kuberay_objects

    _check_namespace(namespace)
    inputs = _plan_inputs(paths, fleet_name)
    result = kuberay_objects(inputs.plan, inputs.catalog, fleet=inputs.fleet, namespace=namespace,
                             images=_parse_images(images))
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    _emit_objects(result.objects, out)


@render.command("dashboards")
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for one JSON file per dashboard (moxin-*.json of an earlier render removed).")
def render_dashboards(out: Path) -> None:
    """moxin's Grafana dashboards (Fleet, Deployment SLO, Pools and hardware, Engines, Controller) as JSON to
    import into Grafana; the chart ships the same files as ConfigMaps for the Grafana sidecar."""
    from orchestrator.observe.dashboards import write_dashboards

    try:
        written = write_dashboards(out)
    except OSError as exc:
        raise SpecError([Problem(f"cannot write the dashboards to {out}: {exc.strerror or exc}",
                                 hint="give -o a directory you can write to")]) from None
    click.echo(f"wrote {len(written)} dashboards to {out}", err=True)


@render.command("alerts")
@options_from(AlertSettings, list(AlertSettings.model_fields))
@click.option("--namespace", help="Restrict every series to this Kubernetes namespace (the chart does so for its "
                                  "release) [default: none, as on Ray].")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Rules file to write [default: stdout].")
def render_alerts(namespace: str | None, out: Path | None, **settings: Any) -> None:
    """Prometheus alert rules for moxin's metrics: load the file with rule_files in prometheus.yml (check it with
    promtool check rules). Each rule links to its section of the README's runbook."""
    from pydantic import ValidationError

    from orchestrator.observe.alerts import rules_text
    from orchestrator.output import write_atomic

    if namespace is not None:
        _check_namespace(namespace)
    try:
        alert_settings = AlertSettings(**settings)
    except ValidationError as exc:
        raise SpecError([Problem(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}") for e in exc.errors()]
                        ) from None
    text = rules_text(alert_settings, namespace)
    if out is None:
        sys.stdout.write(text)
    else:
        write_atomic(out, text)
        click.echo(f"wrote {out}", err=True)


@cli.group()
def keys() -> None:
    """The router's API keys. The key file holds names and sha256 digests, never keys; pass it to
    `moxin router --api-keys` or `moxin up --api-keys`."""


KEY_FILE = click.option("--file", "path", required=True, type=click.Path(dir_okay=False, path_type=Path),
                        help="Key file: YAML, or JSON when its name ends in .json.")


@keys.command("create")
@click.argument("name")
@click.option("--deployment", "deployments", multiple=True,
              help="A deployment the key may use and see (repeatable) [default: every deployment].")
@KEY_FILE
def keys_create(name: str, deployments: tuple[str, ...], path: Path) -> None:
    """Create a random key named NAME, add its digest to the key file (created if absent, mode 0600) and print the
    key: once, on stdout. It is stored nowhere else."""
    from orchestrator.runtime.keys import create_key

    try:
        key = create_key(path, name, deployments)
    except (OSError, ValueError) as exc:
        raise SpecError([Problem(f"cannot add key {name!r}: {exc}")]) from None
    click.echo(key)
    scope = ", ".join(deployments) or "every deployment"
    click.echo(f"added key {name!r} ({scope}) to {path}; the key above is shown once: store it now", err=True)


@keys.command("list")
@KEY_FILE
@OUTPUT
def keys_list(path: Path, fmt: str) -> None:
    """The keys of a key file: names and deployments (digests stay in the file)."""
    from orchestrator.output import emit
    from orchestrator.runtime.keys import summary

    rows = summary(_read_keys(path))
    if fmt != "table":
        emit(rows, fmt)
        return
    for row in rows:
        scope = row["deployments"] if isinstance(row["deployments"], str) else ", ".join(row["deployments"])
        click.echo(f"{row['name']:<24} {scope}")


# -- moxin bench: load an OpenAI-compatible endpoint, print or record the curve (issue "Measured performance") ------
def _numbers(kind: type) -> Any:
    """A click callback: '1,2,4' -> [1, 2, 4] (each > 0)."""

    def parse(_ctx: click.Context, param: click.Parameter, value: str | None) -> list[Any] | None:
        if value is None:
            return None
        try:
            items = [kind(v) for v in value.split(",") if v.strip()]
        except ValueError:
            items = []
        if not items or any(v <= 0 for v in items):
            raise click.BadParameter(f"expected a comma-separated list of numbers > 0, e.g. 1,2,4 (got {value!r})")
        return items

    return parse


def _api_key(key_file: Path | None) -> str | None:
    """The API key: from --api-key-file, else $MOXIN_API_KEY. Never printed, never recorded."""
    if key_file is not None:
        try:
            return key_file.read_text().strip() or None
        except OSError as exc:
            raise MoxinError(f"cannot read the API key file {key_file}: {exc.strerror or exc}") from None
    return os.environ.get("MOXIN_API_KEY") or None


def _command_line(ctx: click.Context) -> str:
    """The command as typed, rebuilt from the options given (defaults left out; no secrets are options)."""
    import shlex

    words = ["moxin", "bench"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if not isinstance(param, click.Option) or ctx.get_parameter_source(param.name or "") in (
                click.core.ParameterSource.DEFAULT, None) or value is None:
            continue
        name = max(param.opts, key=len)
        if param.is_flag:
            words.append(name if value else (max(param.secondary_opts, key=len) if param.secondary_opts else ""))
            continue
        for v in value if param.multiple else [value]:
            v = ",".join(f"{x:g}" for x in v) if isinstance(v, list) else v
            words += [name, str(v)]
    return shlex.join(w for w in words if w)


def _bench_rows(sweep: Any) -> list[list[Any]]:
    def ms(d: Any, q: str) -> str | None:
        return None if d is None else f"{getattr(d, q) * 1000:,.1f}"

    rows = []
    for lv in sweep.levels:
        errors = sum(lv.errors.values())
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(lv.errors.items()))
        rows.append([f"c={lv.concurrency}" if lv.concurrency is not None else f"{lv.rate:g}/s", lv.requests,
                     f"{errors} ({kinds})" if errors else 0, ms(lv.ttft_s, "p50"), ms(lv.ttft_s, "p95"),
                     ms(lv.ttft_s, "p99"), ms(lv.tpot_s, "p50"), ms(lv.tpot_s, "p95"), ms(lv.itl_s, "p95"),
                     ms(lv.e2e_s, "p50"), ms(lv.e2e_s, "p95"), f"{lv.output_tokens_per_second:,.1f}",
                     f"{lv.requests_per_second:,.2f}"])
    return rows


@cli.command()
@click.option("--url", required=True, help="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000.")
@click.option("--model", "request_model", help="Model name the requests carry [default: the --deployment name].")
@click.option("--api-key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File holding the API key [default: $MOXIN_API_KEY; none if unset]. The key is never printed.")
@click.option("--endpoint", type=click.Choice(["chat", "completions"]), default="chat", show_default=True,
              help="/v1/chat/completions or /v1/completions.")
@click.option("--concurrency", callback=_numbers(int), metavar="N,N,..",
              help="Closed-loop levels: concurrent streams [default: 1,2,4,8 unless --rate is given].")
@click.option("--rate", callback=_numbers(float), metavar="R,R,..",
              help="Open-loop levels: Poisson arrivals at R requests/s (after the concurrency levels).")
@click.option("--requests", type=click.IntRange(1), help="Requests per level [default: 32 unless --duration].")
@click.option("--duration", type=click.FloatRange(0.1), help="Seconds per level (with --requests: the first to "
              "end a level ends it).")
@click.option("--prompt-tokens", type=click.IntRange(1), help="Synthetic prompt length [default: the deployment's "
              "traffic, else 128].")
@click.option("--output-tokens", type=click.IntRange(1), help="Tokens to generate per request (max_tokens) "
              "[default: the deployment's traffic, else 64].")
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='JSONL prompts, one per line: {"prompt": "..."} or {"messages": [...]} (instead of synthetic).')
@click.option("-f", "--file", "paths", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Documents: the ModelDeployment of --deployment, and models/profiles that --record names.")
@click.option("--deployment", help="Take prompt/output tokens (and the model name) from this ModelDeployment.")
@click.option("--ignore-eos/--no-ignore-eos", default=True, show_default=True,
              help="Ask for exactly --output-tokens (vLLM honours ignore_eos; mlx-lm ignores the field).")
@click.option("--warmup", type=click.IntRange(0), default=1, show_default=True, help="Requests before the first "
              "level, not counted (the first also sizes synthetic prompts to the server's token count).")
@click.option("--timeout", type=click.FloatRange(1), default=120, show_default=True, help="Seconds per request.")
@click.option("--seed", type=int, default=0, show_default=True, help="Prompts and Poisson arrivals.")
@click.option("-o", "--output", "out", default="table", show_default=True,
              help="table, json or yaml on stdout; or a FILE.yaml / FILE.json to write (the table still printed).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write the latency-throughput "
              "curve (TTFT and TPOT p95 against output tokens/s) as SVG.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="A progress bar on stderr.")
@click.option("--record", is_flag=True, help="Output a Benchmark document (for the estimator and planner) "
              "instead of the raw results.")
@click.option("--name", "doc_name", help="The Benchmark's metadata.name [default: model-variant-hardware-time].")
@click.option("--from-status", is_flag=True, help="Take the replica's labels (model, variant, hardware, engine, "
              "emulated) from the router at --url (GET /moxin/routes): the --replica, or the deployment's only one.")
@click.option("--replica", "replica_name", help="Through moxin's router: measure this replica alone (`moxin status` "
              "names them); the router sends every request to it.")
@click.option("--model-name", help="Record: the Model measured (moxin models).")
@click.option("--variant", help="Record: the variant served.")
@click.option("--hardware", help="Record: the hardware profile of the replica (moxin profiles).")
@click.option("--engine", type=choice(EngineName), help="Record: the engine.")
@click.option("--engine-version", help="Record: the engine's release.")
@click.option("--tp", type=click.IntRange(1), help="Record: tensor-parallel degree [mlx-lm: 1].")
@click.option("--pp", type=click.IntRange(1), help="Record: pipeline stages [mlx-lm: 1].")
@click.option("--ep/--no-ep", default=False, help="Record: expert parallelism.")
@click.option("--emulated", is_flag=True, help="Record: the replica ran on CPU in place of --hardware.")
@click.option("--through-router", is_flag=True, help="Record: --url is moxin's router [implied by --from-status].")
@click.option("--context", type=click.IntRange(1), help="Record: the replica's context length [default: the "
              "deployment's contextTokens].")
@click.option("--kv-dtype", type=choice(KvCacheDtype),
              help="Record: KV-cache data type [default: the deployment's, else auto].")
@click.option("--max-num-seqs", type=click.IntRange(1), help="Record: the engine's concurrent-sequence limit.")
@click.pass_context
def bench(ctx: click.Context, url: str, request_model: str | None, api_key_file: Path | None, endpoint: str,
          concurrency: list[int] | None, rate: list[float] | None, requests: int | None, duration: float | None,
          prompt_tokens: int | None, output_tokens: int | None, prompts_file: Path | None, paths: tuple[Path, ...],
          deployment: str | None, ignore_eos: bool, warmup: int, timeout: float, seed: int, out: str,
          plot: Path | None, progress: bool, record: bool, doc_name: str | None, from_status: bool,
          replica_name: str | None,
          model_name: str | None, variant: str | None, hardware: str | None, engine: str | None,
          engine_version: str | None, tp: int | None, pp: int | None, ep: bool, emulated: bool,
          through_router: bool, context: int | None, kv_dtype: str | None, max_num_seqs: int | None) -> None:
    """Load an OpenAI-compatible endpoint (moxin's router, or any engine) level by level; print TTFT, TPOT, ITL
    and end-to-end percentiles, throughput and errors per level, or record them as a Benchmark document."""
    import asyncio

    from orchestrator.output import to_json, to_yaml, write_atomic

    fmt, out_file = (out, None) if out in ("table", "json", "yaml") else (None, Path(out))
    if out_file is not None:
        fmt = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}.get(out_file.suffix)
        if fmt is None:
            raise click.BadParameter("expected table, json, yaml, or a file ending in .yaml, .yml or .json",
                                     param_hint="-o")
    if from_status and not record:
        raise click.UsageError("--from-status reads the labels --record writes: add --record")
    if record and fmt == "table":
        raise click.UsageError("--record writes a Benchmark document: add -o FILE.yaml (or -o yaml / -o json)")
    if prompts_file is not None and prompt_tokens is not None:
        raise click.UsageError("--prompts and --prompt-tokens exclude each other")
    if deployment is None and request_model is None:
        raise click.UsageError("give --model (the name requests carry), or --deployment")
    try:
        from orchestrator.bench.load import sweep as run_sweep
    except ImportError as exc:
        raise MoxinError(f"{exc.name} is not installed: pip install 'moxin[ray]'") from None
    from orchestrator.bench import record as rec
    from orchestrator.bench.workload import Level, Stop, Synthetic, Target, read_prompts

    catalog = _catalog(paths) if (paths or deployment or record) else None
    dep = None
    if deployment is not None:
        from orchestrator.spec.suggest import did_you_mean

        dep = catalog.deployments.get(deployment)
        if dep is None:
            raise SpecError([Problem(f"unknown ModelDeployment {deployment!r}",
                                     hint=did_you_mean(deployment, catalog.deployments) + " (pass its file with -f)")])
    traffic = dep.spec.traffic if dep else None
    prompt_tokens = prompt_tokens or (traffic.prompt_tokens if traffic else 128)
    output_tokens = output_tokens or (traffic.output_tokens if traffic else 64)
    target = Target(url=url, model=request_model or str(deployment), api_key=_api_key(api_key_file),
                    endpoint=endpoint, ignore_eos=ignore_eos, timeout_s=timeout,  # type: ignore[arg-type]
                    replica=replica_name)
    levels = [Level(concurrency=c) for c in concurrency or ([] if rate else [1, 2, 4, 8])]
    levels += [Level(rate=r) for r in rate or []]
    stop = Stop(requests=requests if requests or duration else 32, duration_s=duration)
    workload = read_prompts(prompts_file) if prompts_file else Synthetic(prompt_tokens, seed)

    replica = None
    if record:
        replica = rec.Replica(
            model=model_name, variant=variant, hardware=hardware, engine=engine, engine_version=engine_version,
            tensor_parallel=tp, pipeline_parallel=pp, expert_parallel=ep, emulated=emulated,
            deployment=deployment if dep else None, context_tokens=context or (dep.spec.context_tokens if dep else None),
            kv_cache_dtype=kv_dtype or (dep.spec.kv_cache_dtype if dep else "auto"), max_num_seqs=max_num_seqs)
        if from_status:
            from orchestrator.bench.routes import read_routes, replica_labels

            labels = replica_labels(read_routes(url, target.api_key), target.model, replica_name)
            replica = rec.from_labels(labels, replica)
        if rec.missing(replica):
            raise click.UsageError(f"--record needs the replica's {', '.join(rec.missing(replica))}"
                                   + ("" if from_status else " (or --from-status, through moxin's router)"))
        model = catalog.model(replica.model)
        _pick_variant(model, replica.variant)
        profile = catalog.profile(replica.hardware)
        if profile.spec.engine(replica.engine) is None:
            raise SpecError([Problem(f"hardware profile {replica.hardware!r} has no engine {replica.engine!r}",
                                     hint=f"its engines: {', '.join(e.engine for e in profile.spec.engines)}")])

    def go(on_level: Any = None, on_request: Any = None) -> Any:
        return asyncio.run(run_sweep(target, levels, stop, workload, output_tokens, warmup=warmup, seed=seed,
                                     on_level=on_level, on_request=on_request))

    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("warm-up", total=None)

            def on_level(_n: int, level: Any) -> None:
                label = f"concurrency {level.concurrency}" if level.concurrency else f"rate {level.rate:g}/s"
                bar.reset(task, description=label, total=stop.requests if not stop.duration_s else None)

            result = go(on_level, lambda _r: bar.advance(task))
    else:
        result = go()

    if plot is not None:
        from orchestrator.bench.plot import curve_svg

        write_atomic(plot, curve_svg(f"{target.model} at {target.public_url}", result.levels))
        click.echo(f"wrote {plot}", err=True)
    if record:
        from orchestrator.bench.host import describe, host_name

        assert replica is not None
        context_info = rec.Context(command=_command_line(ctx), tool=f"moxin bench {__version__}", host=host_name(),
                                   machine=describe(), through_router=through_router or from_status)
        try:
            doc = rec.benchmark_document(result, replica, context_info, name=doc_name,
                                         prompt_tokens=None if prompts_file else prompt_tokens)
        except ValueError as exc:
            raise MoxinError(f"cannot record: {exc}") from None
        data = _dump(doc)
    else:
        data = result.to_json()
    text = (to_json(data) + "\n") if fmt == "json" else to_yaml(data)
    if out_file is not None:
        write_atomic(out_file, text)
    if fmt == "table" or out_file is not None:
        from orchestrator.output import table

        table(["LEVEL", "REQS", "ERRORS", "TTFT p50", "TTFT p95", "TTFT p99", "TPOT p50", "TPOT p95", "ITL p95",
               "E2E p50", "E2E p95", "OUT TOK/S", "REQ/S"], _bench_rows(result),
              title=f"{target.model} at {target.public_url} (latencies in ms)")
        if out_file is not None:
            click.echo(f"wrote {out_file}", err=True)
    else:
        sys.stdout.write(text)
    if any(lv.succeeded == 0 for lv in result.levels):
        click.echo("warning: a level had no successful request; see ERRORS", err=True)


@cli.group()
def rollout() -> None:
    """Progressive delivery on the running cluster: a canary or blue-green move of one deployment to another
    variant or pool, with gates on latency, errors, throughput and output quality (see manifests/rollouts)."""


def _kubernetes_rollout(f: Any) -> Any:
    """--kubernetes, --namespace, --release: the rollout's ConfigMap (``<release>-rollout-<name>``) and workloads."""
    from orchestrator.render.kubernetes import RELEASE

    f = click.option("--release", default=RELEASE, show_default=True,
                     help="With --kubernetes: the chart's release the plan was applied as.")(f)
    f = click.option("--namespace", default="moxin", show_default=True, help="With --kubernetes: its namespace.")(f)
    return click.option("--kubernetes", is_flag=True,
                        help="The rollout on the Kubernetes cluster of $KUBECONFIG instead of Ray.")(f)


def _kubernetes_api() -> Any:
    from orchestrator.runtime.kubernetes import KubernetesError, _client

    api = _client()
    if api is None:
        raise KubernetesError("no Kubernetes configuration: set $KUBECONFIG (or run inside a pod)")
    return api


@rollout.command("apply")
@ADDRESS
@click.option("-f", "--file", "file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The Rollout document.")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--model-root", default=None, help="Where the new side's checkpoints are [default: moxin up's, else "
              f"{MODEL_ROOT}].")
@_kubernetes_rollout
@click.option("--running", "running_paths", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="With --kubernetes: what the cluster runs now, as `moxin apply --kubernetes -f` was given it "
                   "(fleet + deployments, or one Plan document).")
@click.option("--prometheus", "prometheus_url", default=None, metavar="URL",
              help="With --kubernetes: the Prometheus the gates query (their PromQL on the routers' series).")
@click.option("--image", "images", multiple=True, metavar="KEY=IMAGE",
              help="With --kubernetes: engine image where the profile names none (KEY: ENGINE/PLATFORM).")
@click.option("--interval", "interval_s", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="With --kubernetes: seconds between passes.")
@OUTPUT
def rollout_apply(address: str | None, file: Path, paths: tuple[Path, ...], model_root: str | None, kubernetes: bool,
                  namespace: str, release: str, running_paths: tuple[Path, ...], prometheus_url: str | None,
                  images: tuple[str, ...], interval_s: float, fmt: str) -> None:
    """Start the Rollout in FILE against the plan the cluster runs. PATHS: the fleet, models and deployments the
    new side is planned from [default: the embedded example]. Refused, with the reasons, when the new side does not
    fit even with the old side removed. On Ray the controller runs it; with --kubernetes this command runs it, a
    pass every --interval until it ends (interrupted, run it again: it goes on from its ConfigMap)."""
    from orchestrator.spec.catalog import local_example_dir

    catalog_paths = tuple(paths or (local_example_dir(),))
    inside = any(file.resolve() == p.resolve() or p.resolve() in file.resolve().parents for p in catalog_paths)
    catalog = _catalog(catalog_paths if inside else (*catalog_paths, file))
    import yaml

    names = [d["metadata"]["name"] for d in yaml.safe_load_all(file.read_text())
             if isinstance(d, dict) and d.get("kind") == "Rollout"]
    if len(names) != 1:
        raise MoxinError(f"{file}: expected one Rollout, found {len(names)}")
    doc = catalog.rollouts[names[0]]
    if not kubernetes and (running_paths or prometheus_url or images):
        raise MoxinError("--running, --prometheus and --image go with --kubernetes (on Ray the controller knows the "
                         "plan and its Prometheus)")
    if kubernetes:
        _rollout_apply_kubernetes(doc, catalog, running_paths, namespace, release, prometheus_url,
                                  _parse_images(images), model_root or MODEL_ROOT, interval_s, fmt)
        return
    _rollout_apply_ray(address, file, doc, catalog, model_root, fmt)


def _rollout_apply_kubernetes(doc: Any, catalog: Any, running_paths: tuple[Path, ...], namespace: str, release: str,
                              prometheus_url: str | None, images: dict[str, str], model_root: str, interval_s: float,
                              fmt: str) -> None:
    """The running plan from --running, the new side beside it (``k8s_rollout.make_target``), then passes until the
    rollout ends; its gates read from --prometheus."""
    from orchestrator.render.rollout import renderer
    from orchestrator.rollout.machine import Phase
    from orchestrator.runtime import k8s_rollout
    from orchestrator.runtime.rollout_probe import HttpProbe

    _check_namespace(namespace)
    spec = doc.spec
    metrics = {g.metric for _, analysis in spec._analyses() for g in analysis.gates}
    if "quality" in metrics:
        raise MoxinError(f"rollout {doc.name!r} has a quality gate, which `moxin rollout apply --kubernetes` cannot "
                         "measure yet (it needs both sides' engines)\n  To fix: gate on latency and errors here, or "
                         "run the rollout on Ray")
    if metrics and prometheus_url is None:
        raise MoxinError(f"rollout {doc.name!r} gates on {', '.join(sorted(metrics))}: pass --prometheus URL (the "
                         "Prometheus that scrapes the routers)")
    if not running_paths:
        raise MoxinError("--kubernetes needs --running FILE...: what `moxin apply --kubernetes -f` applied (the "
                         "plan the new side is rolled out beside)")
    inputs = _plan_inputs(running_paths, None, model_root)
    fleet = catalog.fleets.get(inputs.plan.spec.fleet)
    if fleet is None:
        raise MoxinError(f"the running plan is for fleet {inputs.plan.spec.fleet!r}, which PATHS do not hold")
    api = _kubernetes_api()
    target = k8s_rollout.make_target(namespace, release, inputs.plan, fleet, catalog, spec,
                                     renderer(inputs.plan, catalog, namespace=namespace, fleet=fleet, images=images,
                                              release=release))
    probe = HttpProbe()
    measure = None if prometheus_url is None else k8s_rollout.prometheus_measure(
        lambda q: probe.query(prometheus_url, q), spec, target)

    def show(done: Any) -> None:
        for line in done.lines:
            click.echo(line, err=True)

    done = k8s_rollout.drive(api, doc, target, measure=measure, interval_s=interval_s, on_pass=show)
    _show_rollouts({doc.name: k8s_rollout.read_status(api, target, doc.name)}, fmt)
    if done.state.phase != Phase.SUCCEEDED:  # a script (CI) learns that the rollout did not go through
        raise MoxinError(f"rollout {doc.name!r} ended {done.state.phase.value}: {done.state.message}")


def _rollout_apply_ray(address: str | None, file: Path, doc: Any, catalog: Any, model_root: str | None,
                       fmt: str) -> None:
    from orchestrator.rollout import capacity
    from orchestrator.runtime import client, local
    from orchestrator.runtime.quality_probe import load_prompts

    addr, is_local = client.resolve_address(address)
    plan = client.current_plan(addr)
    if plan is None:
        raise MoxinError("the cluster runs no plan: `moxin up` or `moxin apply` first")
    fleet = catalog.fleets.get(plan.spec.fleet)
    if fleet is None:
        raise MoxinError(f"the cluster's plan runs on fleet {plan.spec.fleet!r}, which PATHS do not hold")
    found = capacity.check(plan, fleet, catalog, doc.spec)
    if found.mode == "none":
        raise InfeasibleError(f"rollout {doc.metadata.name!r} does not fit", list(found.reasons))
    root = model_root or (str(local.home() / "models") if is_local else MODEL_ROOT)
    new_side = capacity.new_side(fleet, catalog, doc.spec, found, PlanOptions(model_root=root))
    q = doc.spec.quality
    prompts = None if q is None or q.prompts == "builtin" else load_prompts(q, file.parent)
    st = client.rollout(addr, "apply", doc.metadata.name, doc.spec.model_dump(mode="json", by_alias=True),
                        new_side.model_dump(mode="json", by_alias=True), list(found.fits_beside),
                        float(new_side.launch.readiness_timeout_seconds), prompts)
    click.echo(f"capacity: {found.mode}: {'; '.join(found.reasons)}", err=True)
    _show_rollouts(st, fmt)


@rollout.command("status")
@ADDRESS
@click.argument("name", required=False)
@_kubernetes_rollout
@OUTPUT
def rollout_status(address: str | None, name: str | None, kubernetes: bool, namespace: str, release: str,
                   fmt: str) -> None:
    """Phase, step, weight, each side's replicas, every gate's value against its threshold, the decision log
    (NAME is needed with --kubernetes)."""
    if kubernetes:
        from orchestrator.runtime import k8s_rollout

        where = k8s_rollout.Where(namespace, release)
        _show_rollouts({name: k8s_rollout.read_status(_kubernetes_api(), where, _named(name))}, fmt)
        return
    from orchestrator.runtime import client

    addr, _ = client.resolve_address(address)
    _show_rollouts(client.rollout(addr, "status", name), fmt)


def _named(name: str | None) -> str:
    if name is None:
        raise MoxinError("name the rollout: with --kubernetes NAME is not taken from the running one")
    return name


def _send(address: str | None, name: str | None, verb: str, kubernetes: bool, namespace: str, release: str,
          fmt: str) -> None:
    """An operator's command: to the Ray controller, or into the rollout's ConfigMap for the next pass of
    `moxin rollout apply --kubernetes`."""
    if kubernetes:
        from orchestrator.runtime import k8s_rollout

        api, where = _kubernetes_api(), k8s_rollout.Where(namespace, release)
        k8s_rollout.read_status(api, where, _named(name))  # an unknown rollout is refused, not given a ConfigMap
        number = k8s_rollout.send_command(api, where, _named(name), verb)  # type: ignore[arg-type]
        click.echo(f"sent {verb} (command {number}) to rollout {name}: the next pass applies it", err=True)
        _show_rollouts({name: k8s_rollout.read_status(api, where, _named(name))}, fmt)
        return
    from orchestrator.runtime import client

    addr, _ = client.resolve_address(address)
    _show_rollouts(client.rollout(addr, "command", _running_rollout(addr, name), verb), fmt)


def _rollout_command(verb: str, help_text: str) -> None:
    @rollout.command(verb, help=help_text)
    @ADDRESS
    @click.argument("name", required=False)
    @_kubernetes_rollout
    @OUTPUT
    def command(address: str | None, name: str | None, kubernetes: bool, namespace: str, release: str,
                fmt: str) -> None:
        _send(address, name, verb, kubernetes, namespace, release, fmt)


@rollout.command("promote")
@ADDRESS
@click.argument("name", required=False)
@click.option("--full", is_flag=True, help="Skip the remaining steps: all traffic to the new side now.")
@_kubernetes_rollout
@OUTPUT
def rollout_promote(address: str | None, name: str | None, full: bool, kubernetes: bool, namespace: str,
                    release: str, fmt: str) -> None:
    """End the current pause (or, with --full, every remaining step). NAME: the only running rollout by default
    (on Ray)."""
    _send(address, name, "promoteFull" if full else "promote", kubernetes, namespace, release, fmt)


@rollout.command("delete")
@ADDRESS
@click.argument("name")
@click.option("--force", is_flag=True, help="Delete a rollout that has not finished: it is aborted first (all traffic "
              "back to the old side, the new side removed). Ray only.")
@_kubernetes_rollout
@OUTPUT
def rollout_delete(address: str | None, name: str, force: bool, kubernetes: bool, namespace: str, release: str,
                   fmt: str) -> None:
    """Forget a finished rollout: its status and its metrics go, so MoxinRolloutFailed stops firing once it has been
    read. One still running (or Failed, both sides up) is refused unless --force. Shows the rollouts left. With
    --kubernetes: its ConfigMap is deleted; one not finished is refused (abort it through the driver first)."""
    if kubernetes:
        from orchestrator.runtime import k8s_rollout

        if force:
            raise click.UsageError("--force is Ray's: on Kubernetes the abort is the driver's pass (`moxin rollout abort "
                             "NAME --kubernetes`, then `moxin rollout apply ... --kubernetes` until RolledBack)")
        k8s_rollout.delete(_kubernetes_api(), k8s_rollout.Where(namespace, release), name)
        click.echo(f"deleted rollout {name} (ConfigMap {k8s_rollout.state_name(release, name)})", err=True)
        return
    from orchestrator.runtime import client

    addr, _ = client.resolve_address(address)
    left = client.rollout(addr, "delete", name, force)
    click.echo(f"deleted rollout {name}", err=True)
    _show_rollouts(left, fmt)


def _running_rollout(addr: str, name: str | None) -> str:
    """NAME, or the one rollout still running when it is left out."""
    if name is not None:
        return name
    from orchestrator.runtime import client

    running = [n for n, st in client.rollout(addr, "status", None).items() if not st["finished"]]
    if len(running) != 1:
        raise MoxinError(f"{len(running)} rollouts are running ({', '.join(running) or 'none'}): name one")
    return running[0]


_rollout_command("pause", "Hold at the current step until resume (NAME: the only running rollout by default).")
_rollout_command("resume", "Go on from a pause, also one a gate caused (NAME: the only running rollout by default).")
_rollout_command("abort", "All traffic back to the old side; the new side is removed (NAME: the only running rollout "
                          "by default).")


def _show_rollouts(rollouts: dict[str, Any], fmt: str) -> None:
    from orchestrator.output import emit, table

    if fmt != "table":
        emit(rollouts, fmt)
        return
    if not rollouts:
        click.echo("no rollouts")
    for name, st in rollouts.items():
        click.echo(f"rollout {name}: {st['deployment']} -> {st['to']['variant']} on {st['to']['pool']}: "
                   f"{st['phase']}, step {st['step']}/{st['steps']} ({st['stepKind'] or '-'}), weight {st['weight']}%, "
                   f"replicas new {st['replicas']['canary']} old {st['replicas']['stable']}"
                   + (f"; paused: {st['pausedReason']}" if st["pausedReason"] else ""))
        if st["gates"]:
            table(["GATE", "CANARY", "STABLE", "LIMIT", "THRESHOLD", "OUTCOME", "MEASURED", "REASON"],
                  [[g["metric"], _num(g["canary"]), _num(g["stable"]), _num(g["limit"]), g["threshold"] or "-",
                    g["outcome"] or "-", g["measurements"], g["reason"]] for g in st["gates"]])
        for d in st["log"][-10:]:
            click.echo(f"  {time.strftime('%H:%M:%S', time.localtime(d['at']))} step {d['step']} {d['phase']}: "
                       f"{d['message']}")


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def main() -> None:
    cli(prog_name="moxin")


if __name__ == "__main__":
    main()
