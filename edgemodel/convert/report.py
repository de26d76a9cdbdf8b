"""The human report (Markdown) and a latency-vs-metric plot (PNG) of a conversion."""

from __future__ import annotations

import logging
from pathlib import Path

from edgemodel.api import ArtifactManifest, CandidateResult, LatencyStats, ManifestSplit
from edgemodel.convert.errors import first_line

log = logging.getLogger(__name__)


def _lat(stats: list[LatencyStats], batch: int) -> str:
    s = next((x for x in stats if x.batch_size == batch), None)
    return f"{s.p50_ms:.3f} / {s.p95_ms:.3f}" if s else "-"


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f}"


def candidate_table(manifest: ArtifactManifest, batches: list[int]) -> list[str]:
    chosen = {(c.hardware_class, c.candidate) for c in manifest.choices}
    metric = manifest.validation.metric or "metric"
    trained = any("macs" in c.settings for c in manifest.candidates)  # compression with training was on
    head = ["candidate", "class", "precision", *(["method", "MMACs"] if trained else []), metric, "drop"] + \
        [f"p50 / p95 ms (batch {b})" for b in batches] + ["MB", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in manifest.candidates:
        verdict = "**chosen**" if (c.hardware_class, c.name) in chosen else ("accepted" if c.accepted else
                                                                              f"rejected: {c.reject_reason}")
        macs = c.settings.get("macs")
        extra = [c.settings.get("compression") or "post-training", "-" if macs is None else f"{macs / 1e6:.3f}"]
        row = [f"`{c.name}`", c.hardware_class.value, c.precision.value, *(extra if trained else []),
               "-" if c.metric is None else f"{c.metric:.4f}", "-" if c.metric_drop is None else f"{c.metric_drop:+.4f}",
               *[_lat(c.latency, b) for b in batches], _mb(c.size_bytes) if c.size_bytes else "-", verdict]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def split_section(split: ManifestSplit) -> list[str]:
    """The report's split part: cut, why, predicted latency, feature bytes, verification."""
    per = "sample" if split.feature_batch == 1 else f"request of {split.feature_batch} samples"
    shape = "[" + ", ".join(str(d) for d in split.shape) + "]"
    lines = ["", "## Split (edge-cloud)", "", f"- Cut at `{split.cut}` {shape} ({split.chosen_by}): {split.reason}"]
    if split.predicted_ms is not None:
        lines.append(f"- Predicted end-to-end latency: {split.predicted_ms:.3f} ms")
    diff = "?" if split.max_abs_diff is None else f"{split.max_abs_diff:.3g}"
    lines += [f"- Features on the wire: {'?' if split.feature_bytes is None else split.feature_bytes} bytes per {per} "
              f"in {split.wire}",
              f"- Head+tail vs the whole model: max abs diff {diff} on "
              f"{'?' if split.verified_samples is None else split.verified_samples} inputs; parts in {split.precision}"
              + (f" (INT8 parts differ by up to {split.quantized_max_abs_diff:.3g})"
                 if split.quantized_max_abs_diff is not None else ""),
              f"- Files: `{split.head}` (edge), `{split.tail}` (cloud), `{split.manifest}` (plan and profiles)"]
    return lines


def render_markdown(manifest: ArtifactManifest, plot_name: str | None) -> str:
    v = manifest.validation
    batches = sorted({s.batch_size for c in manifest.candidates for s in c.latency})
    env = manifest.environment
    lines = [
        f"# Conversion report: {manifest.namespace}/{manifest.model} revision {manifest.revision}",
        "",
        f"- Source: `{manifest.source_uri}` ({manifest.source_format}, sha256 `{manifest.source_sha256[:16]}...`)",
        f"- Export: {manifest.exporter}; ONNX opset {manifest.opset}; largest |ONNX - original| "
        f"{manifest.export_tolerance:.3g} on {manifest.export_check.get('samples', '?')} samples "
        f"(tolerance rtol {manifest.export_check.get('rtol')}, atol {manifest.export_check.get('atol')} x max|output|)"
        if manifest.export_tolerance is not None else f"- Export: {manifest.exporter}; ONNX opset {manifest.opset}",
        f"- Inputs: {', '.join(f'`{t.name}` {t.dtype.value} {t.shape}' for t in manifest.inputs)}; "
        f"outputs: {', '.join(f'`{t.name}` {t.dtype.value} {t.shape}' for t in manifest.outputs)}",
        f"- Validation: {v.metric} on {v.samples} samples of {v.data}; original model "
        f"{v.metric} {v.original or 0:.4f}; budget: drop <= {v.max_accuracy_drop}",
        f"- Measured with ONNX Runtime {env.onnxruntime or '?'} on {env.provider or 'CPUExecutionProvider'}, "
        f"{env.threads or '?'} threads, {env.cpu}; load average {env.load_average or '?'}",
        *([f"- Latency: {manifest.measurement['rounds']} interleaved rounds per candidate; chosen: "
           f"{manifest.measurement.get('rule', '')} (minSpeedup {manifest.measurement.get('minSpeedup')})"]
          if manifest.measurement else []),
        "",
        "## Choice",
        "",
    ]
    for choice in manifest.choices:
        lines.append(f"- **{choice.hardware_class.value}**: `{choice.candidate}` ({choice.precision.value}, "
                     f"{_mb(choice.size_bytes)} MB, `{choice.file}`, sha256 `{choice.sha256[:16]}...`): {choice.reason}")
    lines += split_section(manifest.split) if manifest.split else []
    lines += ["", "## Candidates", "", *candidate_table(manifest, batches), ""]
    if v.note or manifest.notes:
        lines += ["## Notes", ""]
        lines += [f"- {n}" for n in ([v.note] if v.note else []) + manifest.notes]
        lines.append("")
    if plot_name:
        lines += [f"![latency vs {v.metric}]({plot_name})", ""]
    return "\n".join(lines)


def render_plot(candidates: list[CandidateResult], metric: str, chosen: set[str], path: Path) -> bool:
    """Latency (batch 1) against the metric per candidate; False when matplotlib is unavailable or fails."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    try:
        from matplotlib.ticker import ScalarFormatter

        fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
        for index, c in enumerate(candidates, start=1):
            b1 = next((s for s in c.latency if s.batch_size == 1), None)
            if b1 is None or c.metric is None:
                continue
            key = f"{c.name}@{c.hardware_class.value}"
            colour = "tab:green" if key in chosen else ("tab:blue" if c.accepted else "tab:red")
            state = "chosen" if key in chosen else ("accepted" if c.accepted else "rejected")
            ax.scatter(b1.p50_ms, c.metric, c=colour, s=70 if key in chosen else 35, zorder=3,
                       label=f"{index}. {c.name} ({c.hardware_class.value}, {state})")
            ax.annotate(str(index), (b1.p50_ms, c.metric), fontsize=8, xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("p50 latency at batch 1 (ms, log scale)")
        ax.set_ylabel(metric)
        ax.set_title("Candidates: green chosen, blue accepted, red rejected")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return True
    except Exception as exc:  # a plot is a nice-to-have; never fail a conversion for it
        log.warning("Could not draw the report plot: %s", first_line(exc))
        return False
