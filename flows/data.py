"""The data stage flow: validate -> mix -> assign C-RLFT weights -> pretokenize, for the train and eval splits.

Run alone: `openchat data configs/demo.yaml` or as the `data` deployment; the pipeline flow runs it
as its first stage. Every task is content-addressed, so a re-run with unchanged inputs only reads
what earlier runs built.
"""

from __future__ import annotations

from prefect import flow

from openchat_core.config import ConfigError, PipelineConfig, load_config
from openchat_core.data.mix import SourceLimits
from openchat_core.data.validate import InputSource
from tasks.data import mix_task, pretokenize_task, validate_task, weights_task
from tasks.outputs import DataOutputs, SplitOutputs, layout_for


def run_data_stages(cfg: PipelineConfig) -> DataOutputs:
    """The data stages as tasks of the calling flow (used by this flow and by the pipeline flow)."""
    layout = layout_for(cfg)
    base = cfg.path(".")

    def split(name: str, entries: list, max_rejected: float | None) -> SplitOutputs:
        inputs: list[InputSource] = []
        limits: list[SourceLimits] = []
        for source in cfg.data.as_sources(entries):  # each source: one C-RLFT class, its own format and cap
            files = cfg.data.resolve([source.path], base)
            taken = {str(i.path) for i in inputs} & {str(f) for f in files}
            if taken:
                raise ConfigError(f"data.{name}: {sorted(taken)} matched by more than one source; each file belongs to one source (one condition)")
            inputs.extend(InputSource(f, source.format, source.condition) for f in files)
            limits.append(SourceLimits(source.path, tuple(str(f) for f in files), source.max_conversations, source.sample_fraction))
        validated = validate_task(layout, inputs, name, max_rejected, cfg.data.max_line_bytes)
        mixed = mix_task(layout, validated, cfg.data.mix, cfg.weights, limits, name)
        weighted = weights_task(layout, mixed, cfg.weights, name)
        tokens = pretokenize_task(layout, weighted, cfg.tokenize.model_type, cfg.tokenizer_source, name,
                                  cfg.tokenize.per_sequence_loss, cfg.tokenize.workers, cfg.tokenize.batch_rows,
                                  cfg.tokenize.chat_template_options())
        return SplitOutputs(validated=validated, mixed=mixed, weighted=weighted, tokens=tokens)

    train = split("train", cfg.data.train, cfg.data.max_rejected_fraction)
    held_out = split("eval", cfg.data.eval, None) if cfg.data.eval else None
    return DataOutputs(train=train, eval=held_out)


@flow(name="openchat-data", log_prints=True)
def data_flow(config_path: str = "configs/demo.yaml", overrides: list[str] | None = None) -> DataOutputs:
    """Validate, weight and pretokenize the config's train and eval data (each step cached by content)."""
    return run_data_stages(load_config(config_path, overrides or []))
