"""`openchat train`: the multipack DeepSpeed trainer, launched through DeepSpeed's launcher."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from openchat_core.cli.output import fail


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("add-special-tokens")(add_special_tokens_command)


def train(
    data: Annotated[Path, typer.Option(help="pretokenized Parquet (openchat pretokenize or OpenChat's generate_dataset)")],
    model_path: Annotated[str, typer.Option(help="local HF causal-LM folder, or preset:tiny-mistral / preset:tiny-llama3 / preset:smollm2-135m")],
    out: Annotated[Path, typer.Option("--out", help="output folder: ep_N checkpoints, state/, train_log.jsonl")],
    eval_data: Annotated[Path | None, typer.Option(help="pretokenized held-out Parquet: eval/loss and eval/accuracy each epoch")] = None,
    epochs: Annotated[int, typer.Option()] = 3,
    batch_max_len: Annotated[int, typer.Option(help="tokens per rank per step (multiple of 64)")] = 2048,
    lr: Annotated[float | None, typer.Option(help="peak learning rate; default: OpenChat's automatic rule (meant for 7B+ models)")] = None,
    zero_stage: Annotated[int, typer.Option(help="DeepSpeed ZeRO stage 0-3")] = 2,
    num_procs: Annotated[int, typer.Option("--num-procs", "--num-gpus", help="processes (GPUs) on this node")] = 1,
    hostfile: Annotated[str | None, typer.Option(help="DeepSpeed hostfile for multi-node training")] = None,
    dtype: Annotated[str, typer.Option(help="float32 (CPU) or bfloat16 (GPU)")] = "float32",
    seed: Annotated[int, typer.Option()] = 42,
    save_every: Annotated[int, typer.Option(help="checkpoint every N epochs (the last always)")] = 1,
    checkpoint_every_steps: Annotated[int | None, typer.Option(help="also save resumable state every N steps")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the last complete state in --out")] = False,
    overlong: Annotated[str, typer.Option(help="sequences over batch_max_len: error or truncate")] = "error",
    add_missing_special_tokens: Annotated[bool, typer.Option(help="add the template's special tokens (mean-initialised) if the model lacks them")] = False,
    gradient_checkpointing: Annotated[bool, typer.Option()] = False,
    mlflow_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI; default sqlite:///<out>/mlflow.db")] = None,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="do not track this run")] = False,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name")] = "openchat-train",
) -> None:
    """Train with padding-free multipack batches on the DeepSpeed engine (CPU: gloo; GPU: NCCL).

    Example: openchat train --data runs/tokens.parquet --model-path preset:tiny-mistral --out runs/train --epochs 3 --lr 3e-3
    """
    from pydantic import ValidationError

    from openchat_core.config import ModelConfig, TrainConfig
    from openchat_core.training.launcher import TrainingFailed, run_training
    from openchat_core.training.trainer_config import TrainerConfig

    try:
        cfg = TrainerConfig(
            data=str(data.resolve()), eval_data=str(eval_data.resolve()) if eval_data else None, out_dir=str(out.resolve()),
            train=TrainConfig(epochs=epochs, batch_max_len=batch_max_len, lr=lr, zero_stage=zero_stage, num_procs=num_procs, hostfile=hostfile,
                              seed=seed, save_every=save_every, overlong=overlong, gradient_checkpointing=gradient_checkpointing),
            model=ModelConfig(base=model_path, dtype=dtype, add_missing_special_tokens=add_missing_special_tokens),
            resume=resume, checkpoint_every_steps=checkpoint_every_steps,
            tracking_uri=None if no_mlflow else (mlflow_uri or f"sqlite:///{out.resolve()}/mlflow.db"), experiment=experiment,
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
    from openchat_core.templates.model_types import get_model_type
    from openchat_core.models.model_factory import add_special_tokens, load_base_model

    try:
        mt = get_model_type(model_type)
        model, tokenizer = load_base_model(model_path, attn_implementation="sdpa")
    except (KeyError, FileNotFoundError) as e:
        raise fail(str(e).strip('"')) from None
    added = add_special_tokens(model, tokenizer, list(mt.required_special_tokens))
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    typer.echo(f"added {added or 'nothing (all present)'}; vocabulary {len(tokenizer)} -> {out}")
