"""The `moxin` command: parse arguments, call one layer, format the result. No logic of its own.

Heavy libraries (ray, vllm, torch, kubernetes) are imported only inside the commands that need them,
so `moxin --help` and the catalog commands start fast.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from orchestrator import __version__
from orchestrator.errors import MoxinError

OUTPUT = click.option("-o", "--output", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table",
                      show_default=True, help="table for people; json/yaml print the full documents.")
PATHS = click.argument("paths", nargs=-1, type=click.Path(path_type=Path))


class MoxinGroup(click.Group):
    """Turns every error into a message and an exit code: 2 for bad input, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MoxinError as exc:
            click.echo(f"error: {exc}" if "\n" not in str(exc) else f"error:\n{exc}", err=True)
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


def main() -> None:
    cli(prog_name="moxin")


if __name__ == "__main__":
    main()
