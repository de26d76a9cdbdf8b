"""``edgemodel convert``: PyTorch/ONNX model -> measured, signed ONNX artifacts (locally or as the operator's Job)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgemodel.errors import UserError

if TYPE_CHECKING:
    from edgemodel.api import ConversionResult, EdgeModel
    from edgemodel.convert.pipeline import ConversionOutput

DEFAULT_KEY = Path("edgemodel-signing/private.pem")
JOB_KEY = Path("/var/run/edgemodel/signing/private.pem")


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "convert", help="convert and optimise a model into signed ONNX artifacts (local, or as the conversion Job)",
        description="Export a TorchScript/torch.export/ONNX model to ONNX, build FP32/INT8/FP16 candidates, measure "
        "accuracy and latency, choose per hardware class the simplest accurate one unless a more complex one is "
        "faster beyond the noise, and sign the manifest.",
        epilog="Local:  edgemodel convert -f model.yaml --output out/ --generate-key\n"
        "Job:    edgemodel convert --job --revision 3 --store-url http://edgemodel-store:8080 "
        f"--signing-key {JOB_KEY}\n"
        "Exit codes: 0 converted; 2 bad input (retrying will not help); 1 retryable failure.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-f", "--filename", type=Path, help="EdgeModel manifest (YAML) to convert")
    p.add_argument("--name", help="which EdgeModel of the file to convert when it holds several")
    p.add_argument("--output", type=Path, help="folder for manifest.json, its signature, model-<class>.onnx, "
                   "report.md, result.json (replaced when it holds an earlier conversion)")
    p.add_argument("--signing-key", type=Path, help=f"ed25519 private key (PEM) to sign manifest.json "
                   f"(default {DEFAULT_KEY} locally, {JOB_KEY} in --job mode)")
    p.add_argument("--generate-key", action="store_true",
                   help="write a new key pair to --signing-key (and public.pem beside it) first; alone, just that")
    p.add_argument("--job", action="store_true", help="run as the operator's conversion Job (EdgeModel from env "
                   "EDGEMODEL_OBJECT, result to EDGEMODEL_TERMINATION_LOG)")
    p.add_argument("--revision", type=int, help="revision number (required with --job; default 1)")
    p.add_argument("--store-url", help="artifact store to upload to: http(s)://host:port or s3://bucket/prefix "
                   "(required with --job; token from env EDGEMODEL_STORE_TOKEN)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads for measuring (default: available CPUs)")
    p.add_argument("--latency-runs", type=int, default=50, help="timed runs per candidate and batch size (default 50)")
    p.add_argument("--latency-budget", type=float, default=2.0, metavar="SECONDS",
                   help="timing budget per candidate and batch size (default 2.0)")
    p.add_argument("--latency-rounds", type=int, metavar="N", help="interleaved measurement rounds of candidates and "
                   "split cuts (default: spec.optimization.measurement.rounds, 10)")
    p.add_argument("--batch-size", type=int, help="larger batch measured besides 1 (default 8 or serving.batching)")
    p.add_argument("--workdir", type=Path, help="keep intermediate files (exported and candidate models) here")
    p.add_argument("--no-plot", action="store_true", help="skip report.png")


def _options(args: argparse.Namespace, workdir: Path) -> Any:
    from edgemodel.convert.pipeline import ConvertOptions

    for flag, value in (("--latency-runs", args.latency_runs), ("--threads", args.threads),
                        ("--batch-size", args.batch_size), ("--latency-rounds", args.latency_rounds)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: use a positive number")
    return ConvertOptions(workdir=workdir, revision=args.revision or 1, threads=args.threads,
                          latency_runs=args.latency_runs, latency_budget_s=args.latency_budget,
                          latency_rounds=args.latency_rounds,
                          batch_size=args.batch_size, plot=not args.no_plot)


def run(args: argparse.Namespace) -> int:
    if args.job:
        if args.filename or args.output:
            raise UserError("--job reads the EdgeModel from EDGEMODEL_OBJECT and uploads to --store-url; "
                            "drop -f/--output (or drop --job to convert locally)")
        if args.revision is None or not args.store_url:
            raise UserError("--job needs --revision N and --store-url URL (the operator passes both)")
        from edgemodel.convert.job import run_job
        from edgemodel.convert.progress import QuietThirdParty

        for handler in logging.getLogger().handlers:
            handler.addFilter(QuietThirdParty())

        return run_job(args.revision, args.store_url, args.signing_key or JOB_KEY, _options(args, Path(".")))
    key_path: Path = args.signing_key or DEFAULT_KEY
    if args.generate_key:
        _generate_key(key_path)
        if not args.filename:
            return 0
    if not args.filename:
        raise UserError("-f/--filename: pass the EdgeModel manifest to convert (or --job in the conversion Job)")
    if not args.output:
        raise UserError("--output: pass a folder for the artifacts, e.g. --output out/digits")
    if not key_path.is_file():
        raise UserError(f"--signing-key {key_path}: no such file; pass an ed25519 PEM key or add --generate-key")
    return _run_local(args, key_path)


def _generate_key(private: Path) -> None:
    from edgemodel.signing import generate_keypair

    public = private.with_name("public.pem")
    if private.exists():
        raise UserError(f"--signing-key {private} exists already; drop --generate-key to use it")
    generate_keypair(private, public)
    print(f"wrote ed25519 key pair {private} (private, mode 0600) and {public} (give it to the agents)")


def _select_model(path: Path, name: str | None) -> EdgeModel:
    from edgemodel.convert.job import parse_model
    from edgemodel.manifests import load_documents

    docs = [d for d in load_documents(path) if d.get("kind") == "EdgeModel"]
    models = [parse_model(d, str(path)) for d in docs]
    if not models:
        raise UserError(f"{path}: holds no EdgeModel (kind: EdgeModel, apiVersion: edgemodel.io/v1alpha1)")
    if name:
        chosen = [m for m in models if m.metadata.name == name]
        if not chosen:
            raise UserError(f"--name {name}: {path} has no EdgeModel of that name "
                            f"(it has {', '.join(str(m.metadata.name) for m in models)})")
        return chosen[0]
    if len(models) > 1:
        raise UserError(f"{path} holds {len(models)} EdgeModels ({', '.join(str(m.metadata.name) for m in models)}); "
                        "pick one with --name")
    return models[0]


def _prepare_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / "manifest.json").exists())):
        raise UserError(f"--output {output}: exists and is not an earlier edgemodel conversion; choose another folder")


def _publish_local(output: ConversionOutput, target: Path) -> ConversionResult:
    """Move the artifacts into ``target`` in one rename (a half-written folder is never at ``target``)."""
    import json

    from edgemodel.convert.pipeline import success_result

    target = target.resolve()
    uris = {name: (target / name).as_uri() for name in [*output.files, "result.json"]}
    result = success_result(output, uris)
    (output.directory / "result.json").write_text(json.dumps(result.to_k8s(), indent=2) + "\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
    shutil.copytree(output.directory, staging)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)
    return result


def _run_local(args: argparse.Namespace, key_path: Path) -> int:
    import tempfile

    from edgemodel.convert.errors import ConversionError
    from edgemodel.convert.job import load_key, publish
    from edgemodel.convert.pipeline import convert

    _prepare_output(args.output)
    try:
        model = _select_model(args.filename, args.name)
        key = load_key(key_path)
        with tempfile.TemporaryDirectory(prefix="edgemodel-convert-") as tmp, _RichProgress() as progress:
            workdir = args.workdir or Path(tmp)
            output = convert(model, key, _options(args, workdir), progress)
            if args.store_url:
                from edgemodel.store import RevisionRef, open_store

                ref = RevisionRef(output.manifest.namespace, output.manifest.model, output.manifest.revision)
                store = open_store(args.store_url, os.environ.get("EDGEMODEL_STORE_TOKEN", ""))
                stored = publish(output, store, ref, progress)
                print(f"uploaded revision {ref.prefix} to {args.store_url}: {stored.manifest_uri}")
            result = _publish_local(output, args.output)
    except ConversionError as exc:
        raise UserError(f"{exc.reason.value}: {exc}", exc.exit_code) from exc
    _print_summary(output, result, args.output)
    return 0


def _print_summary(output: ConversionOutput, result: ConversionResult, target: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    m = output.manifest
    chosen = {(c.hardware_class, c.candidate) for c in m.choices}
    batches = sorted({s.batch_size for c in m.candidates for s in c.latency})
    table = Table(title=f"{m.namespace}/{m.model} revision {m.revision}: candidates "
                  f"({m.validation.metric} on {m.validation.samples} samples, budget {m.validation.max_accuracy_drop})")
    for column in ["candidate", "class", m.validation.metric, "drop", *[f"p50 ms b{b}" for b in batches], "MB",
                   "verdict"]:
        table.add_column(column, overflow="fold")
    for c in m.candidates:
        lat = {s.batch_size: s.p50_ms for s in c.latency}
        verdict = "[bold green]chosen[/]" if (c.hardware_class, c.name) in chosen else (
            "accepted" if c.accepted else f"[red]{c.reject_reason.split(' (')[0]}[/]")
        table.add_row(c.name, c.hardware_class.value, "-" if c.metric is None else f"{c.metric:.4f}",
                      "-" if c.metric_drop is None else f"{c.metric_drop:+.4f}",
                      *[f"{lat[b]:.3f}" if b in lat else "-" for b in batches],
                      f"{c.size_bytes / 1e6:.2f}" if c.size_bytes else "-", verdict)
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)
    console.print(table)
    console.print(result.message)
    console.print(f"Artifacts in {target}: {', '.join(sorted([*output.files, 'result.json']))}")


class _RichProgress:
    """Progress bars on stderr (one per stage) with the log lines printed above them."""

    def __enter__(self) -> _RichProgress:
        from rich.console import Console
        from rich.logging import RichHandler
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from edgemodel.convert.progress import QuietThirdParty

        self.console = Console(file=sys.stderr, width=None if sys.stderr.isatty() else 120)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("[dim]{task.fields[detail]}"), console=self.console,
                                 transient=False)
        root = logging.getLogger()
        self._saved = list(root.handlers)
        handler = RichHandler(console=self.console, show_path=False, markup=False, rich_tracebacks=False)
        handler.addFilter(QuietThirdParty())
        root.handlers = [handler]
        self.progress.start()
        self.task: Any = None
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
        logging.getLogger().handlers = self._saved

    def stage(self, title: str, total: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, detail="")
        self.task = self.progress.add_task(title, total=total, detail="")

    def advance(self, detail: str = "") -> None:
        self.progress.update(self.task, advance=1, detail=detail[:80])

    def add_steps(self, count: int) -> None:
        task = self.progress.tasks[-1]
        self.progress.update(self.task, total=(task.total or 0) + count)
