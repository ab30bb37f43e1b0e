"""`openchat train`: the multipack DeepSpeed trainer, launched through DeepSpeed's launcher."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from openchat_core.cli.options import config_options, pick
from openchat_core.cli.output import fail
from openchat_core.models.settings import ModelConfig
from openchat_core.tracking import local_tracking_uri
from openchat_core.training.settings import TrainConfig
from openchat_core.training.trainer_config import TrainerConfig


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("add-special-tokens")(add_special_tokens_command)


@config_options((TrainConfig, ["epochs", "batch_max_len", "lr", "lr_min_ratio", "warmup_ratio", "weight_decay", "beta1", "beta2", "eps",
                                "grad_clip", "zero_stage", "num_procs", "hostfile", "seed", "save_every", "overlong", "drop_last",
                                "gradient_checkpointing", "adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"]),
                (ModelConfig, ["dtype", "attn_implementation", "add_missing_special_tokens"]),
                (TrainerConfig, ["resume", "checkpoint_every_steps"]),
                extra_flags={"num_procs": ["--num-gpus"]})
def train(
    data: Annotated[Path, typer.Option(help="pretokenized Parquet (openchat pretokenize or OpenChat's generate_dataset)")],
    model_path: Annotated[str, typer.Option(help="local HF causal-LM folder, or preset:tiny-mistral / preset:tiny-llama3 / preset:smollm2-135m")],
    out: Annotated[Path, typer.Option("--out", help="output folder: ep_N checkpoints, state/, train_log.jsonl")],
    eval_data: Annotated[Path | None, typer.Option(help="pretokenized held-out Parquet: eval/loss and eval/accuracy each epoch")] = None,
    mlflow_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI; default: a store in --out")] = None,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="do not track this run")] = False,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name")] = "openchat-train",
    **settings: Any,
) -> None:
    """Train with padding-free multipack batches on the DeepSpeed engine (CPU: gloo; GPU: NCCL).

    Example: openchat train --data runs/tokens.parquet --model-path preset:tiny-mistral --out runs/train --epochs 3 --lr 3e-3
    """
    from pydantic import ValidationError

    from openchat_core.training.launcher import TrainingFailed, run_training

    try:
        cfg = TrainerConfig(
            data=str(data.resolve()), eval_data=str(eval_data.resolve()) if eval_data else None, out_dir=str(out.resolve()),
            train=TrainConfig(**pick(TrainConfig, settings)), model=ModelConfig(base=model_path, **pick(ModelConfig, settings)),
            **pick(TrainerConfig, settings),
            tracking_uri=None if no_mlflow else (mlflow_uri or local_tracking_uri(out.resolve())), experiment=experiment,
        )
    except ValidationError as e:
        raise fail(str(e)) from None
    if not data.is_file():
        raise fail(f"--data {data} does not exist (make it with `openchat pretokenize`)")
    try:
        run_training(cfg, on_line=typer.echo)
    except TrainingFailed as e:
        raise fail(str(e)) from None
    typer.echo(f"checkpoints in {out} (ep_N); MLflow: {cfg.tracking_uri or 'off'}")


def add_special_tokens_command(
    model_path: Annotated[str, typer.Option(help="local HF model folder (or preset) lacking the template's special tokens")],
    out: Annotated[Path, typer.Option("--out", help="folder for the extended model and tokenizer")],
    model_type: Annotated[str, typer.Option(help="model type whose special tokens (EOT, role markers) to add")],
) -> None:
    """Add the model type's missing special tokens and initialise their embeddings to the mean (as OpenChat's scripts do).

    Example: openchat add-special-tokens --model-path ./Mistral-7B-v0.1 --out ./Mistral-7B-eot --model-type openchat_3.5
    """
    from openchat_core.models.model_factory import add_special_tokens, load_base_model
    from openchat_core.templates.model_types import get_model_type

    try:
        mt = get_model_type(model_type)
        model, tokenizer = load_base_model(model_path, attn_implementation="sdpa")
    except (KeyError, FileNotFoundError) as e:
        raise fail(str(e).strip('"')) from None
    added = add_special_tokens(model, tokenizer, list(mt.required_special_tokens))
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    typer.echo(f"added {added or 'nothing (all present)'}; vocabulary {len(tokenizer)} -> {out}")
