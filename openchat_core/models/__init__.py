"""Model I/O that every stage shares: the checkpoint format, model loading and named presets.

Training writes checkpoints, evaluation, serving and the registry read them, and the data stage
needs a preset's tokenizer; all of them import this package, so no stage imports another stage
for model I/O (nanochat's one checkpoint manager). Nothing is re-exported here: `presets` stays a
light import (no torch), `model_factory` imports transformers inside its functions.
"""
