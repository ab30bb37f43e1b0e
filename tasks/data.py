"""Data-stage tasks: validate, mix, assign weights, pretokenize. Coarse (one per stage), content-addressed, idempotent.

Each task computes its stage key from everything that decides its output; when the layout already
holds a complete folder for that key, the task returns it without doing any work ("cached": true).
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from openchat_core.config import PipelineConfig
from openchat_core.data.mix import MixPolicy, SourceLimits, mix_file
from openchat_core.data.pretokenize import pretokenize_file
from openchat_core.data.rules import DEFAULT_MAX_LINE_BYTES
from openchat_core.data.validate import InputSource, RejectedFractionExceeded, validate_files
from openchat_core.data.weights import WeightPolicy, assign_weights_file, condition_table
from openchat_core.digest import files_digest, text_digest
from openchat_core.markdown import markdown_table
from openchat_core.templates.chat_template import ChatTemplateOptions, ChatTemplateSpec
from openchat_core.templates.specs import template_spec
from openchat_core.templates.model_types import get_model_type
from openchat_core.templates.tokenizers import load_tokenizer, tokenizer_fingerprint
from storage import StorageLayout
from tasks.common import publish_markdown, publish_table, retry_on_io_errors
from tasks.outputs import DataOutputs, StageOutput
from tasks.tracking import TrackingContext

# Bump when a stage's output format or rules change, so old cached folders are not reused.
VALIDATE_VERSION = "2"  # 2: formats and conditions per source
MIX_VERSION = "1"
WEIGHTS_VERSION = "1"
PRETOKENIZE_VERSION = "1"
QUARANTINE_SAMPLE = 10


def _stage_task(name: str):
    return task(name=name, cache_policy=NONE, retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_on_io_errors)


@_stage_task("validate")
def validate_task(layout: StorageLayout, inputs: list[InputSource], split: str = "train", max_rejected_fraction: float | None = None,
                  max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> StageOutput:
    """Validate the inputs (each with its format and condition); publishes counts by error code and a sample of rejected lines."""
    logger = get_run_logger()
    options = json.dumps(sorted((str(s.path), s.format, s.condition or "") for s in inputs))
    key = text_digest("validate", VALIDATE_VERSION, str(max_line_bytes), files_digest([s.path for s in inputs]), options)
    final = layout.stage_dir("validate", key)
    cached = layout.is_complete(final)
    if not cached:
        with layout.building("validate", key) as out:
            validate_files(inputs, out, max_line_bytes=max_line_bytes)  # the threshold is applied below, to cached runs too
    local = layout.local_copy(final)
    report = json.loads((local / "report.json").read_text())
    for source, counts in report["sources"].items():
        if counts["detected"]:
            logger.info("validate[%s]: %s is in the %s format (detected)", split, source, counts["format"])
    logger.info("validate[%s]: %s lines, %s valid, %s rejected, %s blank%s", split, report["lines"], report["valid"],
                report["rejected"], report["blank"], " (cached)" if cached else "")
    _publish_validation(split, report, local)
    rejected_share = report["rejected"] / max(1, report["valid"] + report["rejected"])
    if max_rejected_fraction is not None and rejected_share > max_rejected_fraction:
        raise RejectedFractionExceeded(
            f"{report['rejected']} of {report['valid'] + report['rejected']} lines rejected ({rejected_share:.1%}) > allowed "
            f"{max_rejected_fraction:.1%}; reasons in {local / 'quarantine.jsonl'}")
    return StageOutput(stage="validate", key=key, path=final, cached=cached, report=report)


def _publish_validation(split: str, report: dict, folder: Path) -> None:
    sample = []
    with open(folder / "quarantine.jsonl", encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            sample.append({"line": f"{Path(entry['source']).name}:{entry['line']}", "code": entry["code"], "message": entry["message"][:160]})
            if len(sample) >= QUARANTINE_SAMPLE:
                break
    by_code = [{"code": c, "lines": n} for c, n in report["by_code"].items()]
    publish_markdown(
        f"validation-{split}",
        f"## Validation ({split})\n\n{report['lines']} lines: **{report['valid']} valid**, {report['rejected']} rejected, "
        f"{report['blank']} blank.\n\n### Rejections by code\n\n{markdown_table(by_code)}\n\n### Sample of rejected lines\n\n"
        f"{markdown_table(sample)}\n\nAll outputs: `{folder}`",
        description=f"Validation of the {split} data: counts by error code and a sample of rejects",
    )


@_stage_task("mix")
def mix_task(layout: StorageLayout, validated: StageOutput, policy: MixPolicy, weights: WeightPolicy, sources: list[SourceLimits],
             split: str = "train") -> StageOutput:
    """Length filters, dedup across sources (the higher-weight copy stays), per-source caps; publishes the per-source table."""
    logger = get_run_logger()
    limits = json.dumps([[s.name, sorted(s.files), s.max_conversations, s.sample_fraction] for s in sources])
    import polars

    # polars' hash (dedup keys, sampling ranks) may change between its releases: a new version is a new key
    key = text_digest("mix", MIX_VERSION, polars.__version__, validated.key, policy.model_dump_json(), weights.model_dump_json(), limits)
    final = layout.stage_dir("mix", key)
    cached = layout.is_complete(final)
    if not cached:
        default = weights.default_weight if weights.unknown_condition == "default" else 0.0
        with layout.building("mix", key) as out:
            mix_file(layout.local_copy(validated.path) / "conversations.parquet", out, policy, sources, weights.condition_weights, default)
    report = json.loads((layout.local_copy(final) / "mix_report.json").read_text())
    t = report["totals"]
    logger.info("mix[%s]: %s conversations in, %s kept (%s duplicates, %s filtered by length, %s sampled out)%s", split, t["input"], t["kept"],
                t["duplicate"], t["too_short"] + t["too_long"], t["sampled_out"], " (cached)" if cached else "")
    publish_table(f"mix-{split}", report["table"], description=f"Mixing of the {split} data: per source and condition, what was kept and why the rest was not")
    return StageOutput(stage="mix", key=key, path=final, cached=cached, report=report)


@_stage_task("assign-weights")
def weights_task(layout: StorageLayout, validated: StageOutput, policy: WeightPolicy, split: str = "train") -> StageOutput:
    """Assign C-RLFT weights to the validated (or mixed) conversations; publishes the per-condition table."""
    logger = get_run_logger()
    key = text_digest("weights", WEIGHTS_VERSION, validated.key, policy.model_dump_json())
    final = layout.stage_dir("weights", key)
    cached = layout.is_complete(final)
    if not cached:
        with layout.building("weights", key) as out:
            assign_weights_file(layout.local_copy(validated.path) / "conversations.parquet", out, policy)
    report = json.loads((layout.local_copy(final) / "weights_report.json").read_text())
    rows = condition_table(report)
    logger.info("weights[%s]: %s conversations over %s conditions%s", split, report["conversations"], len(rows), " (cached)" if cached else "")
    publish_table(f"conditions-{split}", rows, description=f"C-RLFT conditions of the {split} data: weight and supervision per condition")
    return StageOutput(stage="weights", key=key, path=final, cached=cached, report=report)


@_stage_task("pretokenize")
def pretokenize_task(layout: StorageLayout, weighted: StageOutput, model_type: str, tokenizer_path: str, split: str = "train",
                     per_sequence_loss: bool = False, workers: int = 1, batch_rows: int = 2048,
                     chat_template_options: ChatTemplateOptions | None = None) -> StageOutput:
    """Tokenize into OpenChat's Parquet; cached on (input, tokenizer fingerprint, model type, max context, options)."""
    logger = get_run_logger()
    tokenizer = load_tokenizer(tokenizer_path)
    fingerprint = tokenizer_fingerprint(tokenizer)
    mt = get_model_type(model_type)
    spec = template_spec(mt, tokenizer, chat_template_options, name=tokenizer_path)
    # chat_template: the Jinja text and the condition options decide ids too (the fingerprint covers tokenizer.json only)
    template_key = json.dumps(spec.metadata(), sort_keys=True) if isinstance(spec, ChatTemplateSpec) else ""
    key = text_digest("pretokenize", PRETOKENIZE_VERSION, weighted.key, fingerprint, mt.name, str(mt.max_context), str(per_sequence_loss),
                      *([template_key] if template_key else []))
    final = layout.stage_dir("pretokenize", key)
    cached = layout.is_complete(final)
    if not cached:
        with layout.building("pretokenize", key) as out:
            report = pretokenize_file(layout.local_copy(weighted.path) / "weighted.parquet", out / "tokens.parquet", spec,
                                      tokenizer_fingerprint=fingerprint, per_sequence_loss=per_sequence_loss, workers=workers,
                                      batch_rows=batch_rows)
            (out / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
            shutil.copy(Path(layout.local_copy(weighted.path)) / "weights_report.json", out / "weights_report.json")
    local = layout.local_copy(final)
    report = json.loads((local / "report.json").read_text())
    c = report["counts"]
    logger.info("pretokenize[%s]: %s rows, %s tokens (%s supervised)%s", split, c["rows"], c["tokens"], c["supervised_tokens"],
                " (cached: no tokenization)" if cached else "")
    stats = [{"statistic": k, "value": v} for k, v in {**c, **{f"length {k}": v for k, v in report["length_percentiles"].items()}}.items()]
    publish_table(f"token-stats-{split}", stats, description=f"Token statistics of the {split} data ({mt.name}, tokenizer {fingerprint})")
    return StageOutput(stage="pretokenize", key=key, path=final, cached=cached, report=report)


@task(name="track-data", cache_policy=NONE, retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_on_io_errors)
def track_data_task(tracking: TrackingContext, data: DataOutputs, cfg: PipelineConfig, layout: StorageLayout) -> str:
    """The data stage's MLflow run: settings, counts, reports, a quarantine sample, and dataset lineage with digests."""
    from openchat_core.tracking import MlflowTracker

    run_id = tracking.start_run("data", {"openchat.stage": "data"})
    tracker = MlflowTracker(tracking.uri, run_id=run_id)
    tracker.log_params({"weights": cfg.weights.model_dump(), "tokenize": cfg.tokenize.model_dump(), "data": cfg.data.model_dump()})
    metrics = {}
    splits = [("train", data.train), ("eval", data.eval)]
    for name, split in splits:
        if split is None:
            continue
        v, m, t = split.validated.report, split.mixed.report["totals"], split.tokens.report["counts"]
        metrics.update({f"{name}/lines": v["lines"], f"{name}/valid": v["valid"], f"{name}/rejected": v["rejected"], f"{name}/blank": v["blank"],
                        f"{name}/duplicates": m["duplicate"], f"{name}/length_filtered": m["too_short"] + m["too_long"],
                        f"{name}/sampled_out": m["sampled_out"], f"{name}/mixed": m["kept"],
                        f"{name}/rows": t["rows"], f"{name}/tokens": t["tokens"], f"{name}/supervised_tokens": t["supervised_tokens"]})
        for stage in (split.validated, split.mixed, split.weighted, split.tokens):
            folder = layout.local_copy(stage.path)
            for report in ("report.json", "mix_report.json", "weights_report.json"):
                if (folder / report).is_file():
                    tracker.log_artifact(str(folder / report), f"{name}/{stage.stage}")
        quarantine = layout.local_copy(split.validated.path) / "quarantine.jsonl"
        with open(quarantine, encoding="utf-8") as lines:  # the quarantine can be large: read only the sample
            sample = [line.rstrip("\n") for line in itertools.islice(lines, 50)]
        if sample:  # written beside, never into, the published (content-addressed, read-only) validate folder
            with tempfile.TemporaryDirectory() as scratch:
                sample_file = Path(scratch) / "quarantine_sample.jsonl"
                sample_file.write_text("\n".join(sample) + "\n", encoding="utf-8")
                tracker.log_artifact(str(sample_file), f"{name}/validate")
    tracker.log_metrics(metrics, step=0)
    for name, split in splits:
        if split is None:
            continue
        table = split.mixed.report["table"]  # per source and condition: shown as a table in MLflow's artifact view
        if table:
            tracker.log_table({column: [row[column] for row in table] for column in table[0]}, f"{name}/mix/mix_table.json")
        for stage, context in ((split.validated, "validated"), (split.mixed, "mixed"), (split.tokens, "pretokenized")):
            name_in_stage = "tokens.parquet" if stage.stage == "pretokenize" else "conversations.parquet"
            target = f"{stage.path}/{name_in_stage}" if layout.remote else Path(stage.path) / name_in_stage  # lineage: where it lives
            tracker.log_dataset(target, f"{name}-{context}", stage.key, context=name, tags={"openchat.stage": stage.stage})
    tracker.close()
    return run_id
