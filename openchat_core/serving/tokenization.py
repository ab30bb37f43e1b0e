"""POST /tokenize, POST /detokenize and GET /tokenizer_info, in vLLM's shapes.

Clients that count or budget tokens (lm-eval's remote tokenizer, prompt-length checks) must get
exactly the ids the model sees: text prompts go through the checkpoint's tokenizer as
/v1/completions tokenizes them, and chat `messages` through the OpenChat template as
/v1/chat/completions renders them (with the open assistant turn).
"""

from __future__ import annotations

from openchat_core.serving.chat import check_condition, conversation, render_ids
from openchat_core.serving.errors import OpenAIError
from openchat_core.serving.lifecycle import check_model
from openchat_core.serving.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)
from openchat_core.serving.runtime import ModelRuntime


def tokenize(body: TokenizeRequest, runtime: ModelRuntime, enable_system_prompt: bool) -> TokenizeResponse:
    check_model(body.model, runtime)
    if body.messages is not None:
        check_condition(body.condition, runtime)
        items, system = conversation(body.messages, enable_system_prompt)
        ids = render_ids(runtime, items, body.condition, system)
    else:
        ids = list(runtime.tokenizer(body.prompt, add_special_tokens=body.add_special_tokens)["input_ids"])
    strs = runtime.tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=runtime.max_context, tokens=ids, token_strs=strs)


def detokenize(body: DetokenizeRequest, runtime: ModelRuntime) -> DetokenizeResponse:
    check_model(body.model, runtime)
    vocab = len(runtime.tokenizer)
    bad = [t for t in body.tokens if not 0 <= t < vocab]
    if bad:
        raise OpenAIError(400, f"token id(s) {bad[:5]} are outside the vocabulary (0..{vocab - 1})", param="tokens",
                          code="invalid_request")
    return DetokenizeResponse(prompt=runtime.tokenizer.decode(body.tokens))


def tokenizer_info(runtime: ModelRuntime) -> TokenizerInfo:
    tok = runtime.tokenizer
    return TokenizerInfo(tokenizer_class=type(tok).__name__, eos_token=tok.eos_token, bos_token=tok.bos_token,
                         pad_token=tok.pad_token, model_max_length=runtime.max_context)
