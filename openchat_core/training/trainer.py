"""The padding-free multipack DeepSpeed trainer. One process per rank, started by the launcher:

    deepspeed --num_gpus N --no_local_rank --module openchat_core.training.trainer --config trainer.json

(`openchat train` and the Prefect train task build that command; see launcher.py.) The recipe
shape is setup -> per-step loss -> epoch loop -> checkpoint/state -> cleanup. On CPU the same
code runs over gloo with `DS_ACCELERATOR=cpu`.

Per step: each rank packs its batch into one row, computes sum(weight x CE) on its supervised
tokens, scales it by world_size / global_num_seqs (DeepSpeed averages gradients over ranks, so
the result is OpenChat's loss: the global weighted sum divided by the step's global num_seqs),
and DeepSpeed steps a torch AdamW (fused kernel where torch has one; no JIT-compiled DeepSpeed ops) with clipping and ZeRO.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from openchat_core.models.checkpoint import epoch_checkpoint_dir, save_checkpoint
from openchat_core.templates.conversation import MissingSpecialTokenError, check_special_tokens
from openchat_core.templates.model_types import get_model_type
from openchat_core.tracking import MlflowTracker, NullTracker, Tracker
from openchat_core.training.data import TokenDataset, sequential_batches
from openchat_core.training.loss import weighted_sums
from openchat_core.training.sampler import MultipackSampler
from openchat_core.training.schedule import auto_learning_rate, cosine_with_warmup
from openchat_core.training.state import MARKER as STATE_MARKER
from openchat_core.training.state import STATE_DIR, ResumePoint, latest_resume_point, prune_states, write_marker
from openchat_core.training.trainer_config import TrainerConfig

TRAIN_LOG = "train_log.jsonl"


def ensure_distributed_env() -> None:
    """Single-process runs without a launcher still need the rendezvous variables (else DeepSpeed probes MPI)."""
    import socket

    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})


class Trainer:
    def __init__(self, cfg: TrainerConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.tracker: Tracker = NullTracker()
        self.global_step = 0
        self.start = ResumePoint(0, 0, 0, cfg.order_digest())

    # -- setup ------------------------------------------------------------------------------------
    def setup(self) -> None:
        self._setup_distributed()
        self._setup_data()
        self._setup_model()
        self._setup_engine()
        self._setup_resume()
        self._setup_tracking()

    def _setup_distributed(self) -> None:
        ensure_distributed_env()
        import deepspeed
        import torch
        from deepspeed.accelerator import get_accelerator

        self.on_gpu = get_accelerator().device_name() == "cuda"
        deepspeed.init_distributed(dist_backend="nccl" if self.on_gpu else "gloo")
        self.rank = torch.distributed.get_rank()
        self.world = torch.distributed.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device(f"cuda:{local_rank}") if self.on_gpu else torch.device("cpu")
        if self.on_gpu:
            torch.cuda.set_device(self.device)
        torch.manual_seed(self.cfg.train.seed)

    def _setup_data(self) -> None:
        t = self.cfg.train
        self.dataset = TokenDataset(self.cfg.data, max_len=t.batch_max_len, overlong=t.overlong)
        self.model_type = get_model_type(self.dataset.model_type)
        self.sampler = MultipackSampler(self.dataset.lengths, self.dataset.num_seqs, t.batch_max_len, num_ranks=self.world, seed=t.seed,
                                        drop_last=t.drop_last)
        self.plans = [self.sampler.plan(epoch) for epoch in range(t.epochs)]  # fixed up front: exact total steps, resumable order
        self.total_steps = sum(p.num_steps for p in self.plans)
        self.eval_dataset = TokenDataset(self.cfg.eval_data) if self.cfg.eval_data else None
        self.log(f"data: {len(self.dataset)} sequences, {int(self.dataset.lengths.sum())} tokens, {self.total_steps} steps over "
                 f"{t.epochs} epochs on {self.world} rank(s); packing efficiency {self.plans[0].efficiency:.1%}"
                 + (f"; {len(self.dataset.truncated)} sequences truncated to {t.batch_max_len}" if len(self.dataset.truncated) else ""))

    def _setup_model(self) -> None:
        from openchat_core.models.model_factory import add_special_tokens, load_base_model

        m = self.cfg.model
        attn = None if m.attn_implementation == "auto" else m.attn_implementation
        self.model, self.tokenizer = load_base_model(self.cfg.model.base, seed=self.cfg.train.seed, dtype=m.dtype, attn_implementation=attn,
                                                     packed=True)
        self.log(f"packed attention: {self.model.config._attn_implementation}")
        added: list[str] = []
        try:
            check_special_tokens(self.model_type, self.tokenizer)
        except MissingSpecialTokenError:
            if not m.add_missing_special_tokens:
                raise
            added = add_special_tokens(self.model, self.tokenizer, list(self.model_type.required_special_tokens))
            self.log(f"added special tokens {added} (embeddings initialised to the mean)")
        vocab = self.model.get_input_embeddings().weight.shape[0]
        max_id = int(self.dataset._values["nz_input_ids"].max()) if len(self.dataset) else 0
        if max_id >= vocab:
            raise ValueError(f"data holds token id {max_id} but the model's vocabulary has {vocab} entries: the data was "
                             f"tokenized with another tokenizer than {self.cfg.model.base!r}'s; pretokenize with the model's tokenizer")
        from openchat_core.templates.tokenizers import tokenizer_fingerprint

        data_fp = self.dataset.metadata.get("tokenizer_fingerprint")
        if data_fp and data_fp != tokenizer_fingerprint(self.tokenizer):
            self.log(f"warning: data tokenizer fingerprint {data_fp} differs from the model tokenizer's; check they match")
        self.model.config.use_cache = False
        if self.cfg.train.adapter == "lora":
            self._wrap_lora(tokens_added=bool(added))
        if self.cfg.train.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _wrap_lora(self, tokens_added: bool) -> None:
        """Freeze the base and add LoRA adapters; the base is recorded as a local folder (written once here when it has none)."""
        from openchat_core.atomic import publish_folder
        from openchat_core.models.adapters import BASE_MODEL_DIR, apply_lora, trainable_parameter_count
        from openchat_core.models.model_factory import local_model_dir, parameter_count

        base = None if tokens_added else local_model_dir(self.cfg.model.base)
        if base is None:  # a random preset, or a vocabulary extended here: save the base the adapter applies to
            base = self.out / BASE_MODEL_DIR
            if self.rank == 0 and not (base / "config.json").is_file():
                with publish_folder(base) as staging:
                    self.model.save_pretrained(str(staging))
                    self.tokenizer.save_pretrained(str(staging))
        self.adapter_base = base.resolve()
        total = parameter_count(self.model)
        self.model = apply_lora(self.model, self.cfg.train, base_path=self.adapter_base, train_embeddings=tokens_added)
        trainable = trainable_parameter_count(self.model)
        self.log(f"LoRA r={self.cfg.train.lora_r} on {self.cfg.train.lora_target_modules}"
                 + (" (+ embeddings and LM head: tokens were added)" if tokens_added else "")
                 + f": {trainable:,} trainable of {total:,} parameters ({trainable / total:.2%}); base {self.adapter_base}")

    def _setup_engine(self) -> None:
        import deepspeed

        from openchat_core.training.optimizer import adamw

        t = self.cfg.train
        self.base_lr = t.lr or auto_learning_rate(self.model_type.name, t.batch_max_len, self.world, self.dataset.supervised_ratio())
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # LoRA: adapters only (no optimizer state for the base)
        optimizer = adamw(trainable, lr=self.base_lr, betas=(t.beta1, t.beta2), eps=t.eps, weight_decay=t.weight_decay)
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": t.grad_clip,
            "zero_optimization": {"stage": t.zero_stage},
            "bf16": {"enabled": self.cfg.model.dtype == "bfloat16"},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=self.model, optimizer=optimizer, config=ds_config)
        self.warmup_steps = round(t.warmup_ratio * self.total_steps)
        self.log(f"learning rate {self.base_lr:.3g} ({'given' if t.lr else 'automatic, OpenChat rule'}), {self.warmup_steps} warmup steps, "
                 f"ZeRO-{t.zero_stage}, {self.cfg.model.dtype}")

    def _setup_resume(self) -> None:
        if not self.cfg.resume:
            return
        point = latest_resume_point(self.out)
        if point is None:
            self.log("resume: no complete state found, starting from the beginning")
            return
        if point.order_digest != self.cfg.order_digest():
            raise ValueError(f"cannot resume from {self.out}/state/{point.tag}: it was made with different data, epochs, batch size, "
                             f"seed or process count; use a new --out folder, or restore the original settings")
        self.engine.load_checkpoint(str(self.out / "state"), tag=point.tag)
        self.start, self.global_step = point, point.global_step
        self.log(f"resume: continuing at epoch {point.epoch}, batch {point.step_in_epoch} (global step {point.global_step})")

    def _setup_tracking(self) -> None:
        if self.rank != 0 or not self.cfg.tracking_uri:
            return
        self.tracker = MlflowTracker(self.cfg.tracking_uri, run_id=self.cfg.mlflow_run_id, experiment=self.cfg.experiment,
                                     run_name=self.cfg.run_name or "train")
        if not self.cfg.resume or self.start.global_step == 0:
            self.tracker.log_params({"train": self.cfg.train.model_dump(), "model": self.cfg.model.model_dump(), "data": self.cfg.data,
                                     "resolved": {"lr": self.base_lr, "total_steps": self.total_steps, "world_size": self.world}})
        self.tracker.set_tags({"openchat.stage": "train", "openchat.model_type": self.model_type.name, "openchat.data_digest": self.dataset.digest()})

    # -- steps ------------------------------------------------------------------------------------
    def _train_step(self, indices: Any, global_num_seqs: float) -> dict[str, float]:
        import torch
        import torch.distributed as dist

        batch = self.dataset.batch(indices).to(self.device)
        loss_sum, acc_sum, _ = weighted_sums(self.engine, batch)
        self.engine.backward(loss_sum * (self.world / global_num_seqs))
        lr = self.base_lr * cosine_with_warmup(self.global_step, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                                               min_ratio=self.cfg.train.lr_min_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.engine.step()
        totals = torch.tensor([loss_sum.item(), acc_sum.item(), float(batch.num_tokens)], dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(totals)
        return {"loss": totals[0].item() / global_num_seqs, "accuracy": totals[1].item() / global_num_seqs, "lr": lr, "tokens": totals[2].item()}

    def train(self) -> None:
        from tqdm import tqdm

        progress = tqdm(total=self.total_steps, initial=self.global_step, disable=self.rank != 0, unit="step", dynamic_ncols=True,
                        mininterval=1.0, file=sys.stdout)
        t = self.cfg.train
        for epoch in range(self.start.epoch, t.epochs):
            plan = self.plans[epoch]
            batches = plan.rank_batches(self.rank)
            first = self.start.step_in_epoch if epoch == self.start.epoch else 0
            self.engine.train()
            self.log(f"epoch {epoch}: {plan.num_steps} steps, packing efficiency {plan.efficiency:.1%}"
                     + (f", {len(plan.dropped)} sequences left out (incomplete last step)" if len(plan.dropped) else "")
                     + (f", resuming at step {first}" if first else ""))
            self.tracker.log_metrics({"train/packing_efficiency": plan.efficiency}, step=self.global_step + 1)
            for step_in_epoch in range(first, plan.num_steps):
                self.global_step += 1
                started = time.perf_counter()
                metrics = self._train_step(batches[step_in_epoch], float(plan.global_num_seqs[step_in_epoch]))
                tokens_per_s = metrics.pop("tokens") / max(time.perf_counter() - started, 1e-9)
                record = {f"train/{k}": v for k, v in metrics.items()} | {"train/tokens_per_s": tokens_per_s}
                self.tracker.log_metrics(record, step=self.global_step)
                self._append_log({"step": self.global_step, "epoch": epoch, "batch": batch_digest(batches[step_in_epoch]), **record})
                progress.set_postfix(epoch=epoch, loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.2e}", tok_s=f"{tokens_per_s:,.0f}",
                                     refresh=False)  # redrawn by update() at most once per mininterval: one log line per second
                progress.update()
                every = self.cfg.checkpoint_every_steps
                if every and self.global_step % every == 0 and step_in_epoch + 1 < plan.num_steps:
                    self.save_state(ResumePoint(self.global_step, epoch, step_in_epoch + 1, self.cfg.order_digest()))
            eval_metrics = self.evaluate() if self.eval_dataset is not None else {}
            if eval_metrics:
                self.tracker.log_metrics(eval_metrics, step=epoch)
                self.log(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in eval_metrics.items()))
            last = epoch + 1 == t.epochs
            saved = last or (epoch + 1) % t.save_every == 0
            if saved:
                self.save_epoch_checkpoint(epoch, eval_metrics)
            point = ResumePoint(self.global_step, epoch + 1, 0, self.cfg.order_digest())
            self.save_state(point)
            self.publish_epoch(epoch if saved else None, point)
        progress.close()

    def evaluate(self) -> dict[str, float]:
        """Held-out weighted loss and accuracy, normalised like training: sums over all rows / total num_seqs."""
        import torch
        import torch.distributed as dist

        assert self.eval_dataset is not None
        batches = sequential_batches(self.eval_dataset.lengths, self.cfg.train.batch_max_len)
        if not batches:
            return {}
        mine = batches[self.rank::self.world]
        rounds = math.ceil(len(batches) / self.world)  # every rank runs the same number of forwards (ZeRO-3 gathers)
        sums = torch.zeros(3, dtype=torch.float64)
        self.engine.eval()
        with torch.no_grad():
            for i in range(rounds):
                indices = mine[i] if i < len(mine) else mine[0][:1] if mine else batches[0][:1]
                loss, acc, _ = weighted_sums(self.engine, self.eval_dataset.batch(indices).to(self.device))
                if i < len(mine):
                    sums += torch.tensor([loss.item(), acc.item(), float(self.eval_dataset.num_seqs[indices].sum())], dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(sums)
        self.engine.train()
        return {"eval/loss": sums[0].item() / max(sums[2].item(), 1e-12), "eval/accuracy": sums[1].item() / max(sums[2].item(), 1e-12)}

    # -- persistence ------------------------------------------------------------------------------
    def _full_state_dict(self) -> dict[str, Any] | None:
        """The unpartitioned weights on rank 0 (ZeRO-3 gathers them from every rank)."""
        import deepspeed

        module = self.engine.module
        if self.cfg.train.zero_stage == 3:
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()} if self.rank == 0 else None
        return {k: v.detach().cpu() for k, v in module.state_dict().items()} if self.rank == 0 else None

    def save_epoch_checkpoint(self, epoch: int, eval_metrics: dict[str, float]) -> None:
        import torch.distributed as dist

        state = self._full_state_dict()
        if self.rank == 0:
            path = save_checkpoint(epoch_checkpoint_dir(self.out, epoch), self.engine.module, self.tokenizer, self.model_type.name, {
                "epoch": epoch, "global_step": self.global_step, "data_digest": self.dataset.digest(), "data": self.cfg.data,
                "base_model": self.cfg.model.base, "train": self.cfg.train.model_dump(), "metrics": eval_metrics,
                "template": self.dataset.metadata.get("template", {}),  # chat_template: its condition options, for serving
            } | self._adapter_metadata(), state_dict=state)
            self.tracker.set_tags({f"openchat.checkpoint.ep_{epoch}": str(path)})
            self.log(f"epoch {epoch}: checkpoint {path}")
        dist.barrier()

    def _adapter_metadata(self) -> dict[str, Any]:
        t = self.cfg.train
        if t.adapter == "none":
            return {}
        return {"adapter": {"type": t.adapter, "base_model": str(self.adapter_base), "r": t.lora_r, "alpha": t.lora_alpha,
                            "target_modules": t.lora_target_modules}}

    def save_state(self, point: ResumePoint) -> None:
        import torch.distributed as dist

        self.engine.save_checkpoint(str(self.out / "state"), tag=point.tag, client_state={"openchat": point.__dict__}, save_latest=False)
        dist.barrier()
        if self.rank == 0:
            write_marker(self.out, point)
            prune_states(self.out, point)
        dist.barrier()

    def publish_epoch(self, epoch: int | None, point: ResumePoint) -> None:
        """Copy the epoch's checkpoint, then the resumable state, to `publish_to` (each counts once its marker is there).

        Other workers evaluate, register and serve from there, and a restarted training resumes from
        there. Rank 0 uploads; the state holds every rank's DeepSpeed files when the ranks share a disk
        (one node); multi-node runs need a shared filesystem for `state/`.
        """
        import torch.distributed as dist

        target = self.cfg.publish_to
        if not target:
            return
        if self.rank == 0:
            from storage.layout import SUCCESS_MARKER, complete_children, remove_published, upload_folder

            if epoch is not None:
                folder = epoch_checkpoint_dir(self.out, epoch)
                (folder / SUCCESS_MARKER).write_text(json.dumps({"epoch": epoch}) + "\n")
                upload_folder(folder, f"{target}/{folder.name}")
                self.log(f"epoch {epoch}: published {target}/{folder.name}")
            upload_folder(self.out / STATE_DIR / point.tag, f"{target}/{STATE_DIR}/{point.tag}", marker=STATE_MARKER)
            for older in complete_children(f"{target}/{STATE_DIR}", marker=STATE_MARKER):
                if older != point.tag:
                    remove_published(f"{target}/{STATE_DIR}/{older}")
        dist.barrier()

    # -- utilities --------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if getattr(self, "rank", 0) == 0:
            print(f"[openchat.train] {message}", flush=True)

    def _append_log(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            with open(self.out / TRAIN_LOG, "a") as f:
                f.write(json.dumps(record) + "\n")

    def cleanup(self, ok: bool) -> None:
        import torch.distributed as dist

        if self.cfg.mlflow_run_id:  # the caller owns the run (e.g. the pipeline's nested train run)
            self.tracker.flush()
        else:
            self.tracker.close("FINISHED" if ok else "FAILED")

        if dist.is_initialized():
            dist.destroy_process_group()


def batch_digest(indices: Any) -> str:
    """A short identity of a batch's rows, logged per step so data order can be audited (and tested) across resumes."""
    import hashlib

    import numpy as np

    return hashlib.sha1(np.sort(np.asarray(indices, dtype=np.int64)).tobytes()).hexdigest()[:12]


def run(cfg: TrainerConfig) -> None:
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg)
    ok = False
    try:
        trainer.setup()
        trainer.train()
        ok = True
    finally:
        trainer.cleanup(ok)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenChat multipack trainer (one rank); start it with `openchat train`.")
    parser.add_argument("--config", required=True, help="TrainerConfig JSON written by the launcher")
    args, _ = parser.parse_known_args(argv)
    run(TrainerConfig.model_validate_json(Path(args.config).read_text()))


if __name__ == "__main__":
    main()
