"""POST /tokenize, POST /detokenize and GET /tokenizer_info, in vLLM's shapes.

Clients that count or budget tokens (lm-eval's remote tokenizer, prompt-length checks) must get
exactly the ids the model sees: text prompts go through the checkpoint's tokenizer as
/v1/completions tokenizes them, and chat `messages` through the OpenChat template as
/v1/chat/completions renders them (with the open assistant turn).
"""

from __future__ import annotations

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
        bad = [t for t in runtime.special_tokens if t in body.condition]
        if bad:
            raise OpenAIError(400, f"condition must be plain text; it contains the special token(s) {', '.join(bad[:3])}.",
                              param="condition", code="invalid_request")
        system = "\n".join(p for p in (m.text().strip() for m in body.messages if m.role == "system") if p)
        items = [{"role": m.role, "content": m.text()} for m in body.messages if m.role != "system"]
        if not items or items[-1]["role"] != "assistant":
            items.append({"role": "assistant", "content": ""})
        ids = runtime.template.tokenize([{"items": items, "condition": body.condition,
                                          "system": system if enable_system_prompt else ""}], inference=True)[0][0]
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
