"""The continuous-batching transformers engine on a real tiny checkpoint: batched output equals `generate`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from openchat_core.serving.engines.base import EngineConfig, EngineRequestError, SamplingOptions  # noqa: E402
from openchat_core.serving.engines.transformers_engine import TransformersEngine  # noqa: E402

PROMPTS = [
    [1, 420, 6316, 28781, 3198, 3123, 1247, 28747, 22557, 32000, 420, 6316, 28781, 3198, 3123, 21631, 28747],
    [1, 22557, 1526],
    [1, *range(100, 140)],
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """tiny-mistral's shape with large random weights: peaky attention, so a wrong position id or mask
    changes the greedy tokens (with the default 0.02 init, attention is nearly uniform and hides such bugs)."""
    from dataclasses import replace

    from openchat_core.templates.tokenizers import load_tokenizer
    from openchat_core.models.checkpoint import save_checkpoint
    from openchat_core.models.model_factory import build_random_model
    from openchat_core.models.presets import MODEL_PRESETS

    preset = MODEL_PRESETS["tiny-mistral"]
    preset = replace(preset, architecture={**preset.architecture, "initializer_range": 0.4})
    tokenizer = load_tokenizer("preset:mistral")
    model = build_random_model(preset, tokenizer, seed=3)
    return save_checkpoint(tmp_path_factory.mktemp("tf") / "tiny", model, tokenizer, "openchat_3.5")


@pytest.fixture(scope="module")
def reference(checkpoint):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), attn_implementation="sdpa").eval()

    def greedy(prompt: list[int], max_new_tokens: int) -> list[int]:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    return greedy


def run_with_engine(checkpoint: Path, scenario, **config) -> object:
    async def main():
        engine = TransformersEngine(EngineConfig(model_dir=checkpoint, max_model_len=config.pop("max_model_len", 8192),
                                                 **config))
        await engine.start()
        try:
            return await scenario(engine)
        finally:
            await engine.shutdown()

    return asyncio.run(main())


async def collect(engine, request_id, prompt, **options):
    options.setdefault("stop_token_ids", ())
    options.setdefault("temperature", 0.0)
    tokens: dict[int, list[int]] = {}
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    async for delta in engine.generate(request_id, prompt, SamplingOptions(**options)):
        tokens.setdefault(delta.index, []).extend(delta.token_ids)
        texts[delta.index] = texts.get(delta.index, "") + delta.text
        if delta.finish_reason:
            reasons[delta.index] = delta.finish_reason
    return tokens, texts, reasons


def test_concurrent_greedy_requests_are_batched_and_equal_generate(checkpoint, reference):
    budgets = [12, 20, 7]

    async def scenario(engine):
        results = await asyncio.gather(*(collect(engine, f"r{i}", p, max_tokens=b)
                                         for i, (p, b) in enumerate(zip(PROMPTS, budgets))))
        return results, engine.stats

    results, stats = run_with_engine(checkpoint, scenario)
    for (tokens, _, reasons), prompt, budget in zip(results, PROMPTS, budgets):
        assert tokens[0] == reference(prompt, budget)
        assert reasons == {0: "length"}
    assert stats.max_batch_rows == 3 and stats.batched_steps > 0  # decoded together, not one by one


def test_a_late_request_joins_the_running_batch(checkpoint, reference):
    async def scenario(engine):
        first = asyncio.create_task(collect(engine, "early", PROMPTS[0], max_tokens=40))
        while engine.stats.decode_steps < 5:
            await asyncio.sleep(0.001)
        late = await collect(engine, "late", PROMPTS[2], max_tokens=10)
        return await first, late, engine.stats

    early, late, stats = run_with_engine(checkpoint, scenario)
    assert early[0][0] == reference(PROMPTS[0], 40)
    assert late[0][0] == reference(PROMPTS[2], 10)  # different length, left-padded into the shared cache
    assert stats.max_batch_rows == 2


def test_stop_token_and_stop_string_end_a_choice(checkpoint, reference):
    greedy = reference(PROMPTS[1], 6)

    async def scenario(engine):
        by_token = await collect(engine, "a", PROMPTS[1], max_tokens=20, stop_token_ids=(greedy[3],))
        plain = await collect(engine, "b", PROMPTS[1], max_tokens=6)
        return by_token, plain

    (tokens, _, reasons), (_, plain_text, _) = run_with_engine(checkpoint, scenario)
    first_stop = greedy.index(greedy[3])
    assert tokens[0] == greedy[:first_stop + 1] and reasons[0] == "stop"  # the stop token is counted, not shown
    word = plain_text[0].split()[1] if len(plain_text[0].split()) > 1 else plain_text[0].strip()[:3]

    async def with_string(engine):
        return await collect(engine, "c", PROMPTS[1], max_tokens=6, stop=(word,))

    _, texts, reasons = run_with_engine(checkpoint, with_string)
    assert reasons[0] == "stop" and word not in texts[0]
    assert plain_text[0].startswith(texts[0])


def test_seeded_sampling_is_reproducible_and_choices_differ(checkpoint):
    async def scenario(engine):
        kwargs = dict(max_tokens=12, temperature=1.0, top_p=0.9, n=2, seed=1234)
        one = await collect(engine, "s1", PROMPTS[0], **kwargs)
        two, other = await asyncio.gather(collect(engine, "s2", PROMPTS[0], **kwargs),  # now batched with another
                                          collect(engine, "s3", PROMPTS[2], max_tokens=12, temperature=1.0, n=3))
        different = await collect(engine, "s4", PROMPTS[0], **{**kwargs, "seed": 99})
        return one, two, different, other

    one, two, different, other = run_with_engine(checkpoint, scenario)
    assert one[0] == two[0]
    assert one[0][0] != one[0][1]
    assert one[0] != different[0]
    assert sorted(other[2]) == [0, 1, 2] and all(len(t) == 12 for t in other[0].values())


def test_penalties_follow_openai_semantics():
    """logit -= presence * (count > 0) + frequency * count, over the tokens this choice generated."""
    from openchat_core.serving.engines.transformers_engine import _Request, _Row

    engine = TransformersEngine(EngineConfig(model_dir=Path("."), max_model_len=16))
    logits = torch.tensor([[0.0, 3.0, 2.5, 1.0]])

    def pick(presence: float, frequency: float, counts: list[float]) -> int:
        options = SamplingOptions(max_tokens=4, stop_token_ids=(), temperature=0.0, presence_penalty=presence,
                                  frequency_penalty=frequency)
        request = _Request("x", [1], options, loop=None, queue=None)  # type: ignore[arg-type]
        row = _Row(request, 0, text=None, generator=None, position=1, counts=torch.tensor(counts))  # type: ignore[arg-type]
        return engine._sample(logits, [row])[0]

    assert pick(0.0, 0.0, [0, 3, 0, 0]) == 1
    assert pick(0.4, 0.0, [0, 3, 0, 0]) == 1  # 3.0 - 0.4 > 2.5
    assert pick(0.6, 0.0, [0, 3, 0, 0]) == 2  # 3.0 - 0.6 < 2.5
    assert pick(0.0, 0.2, [0, 3, 0, 0]) == 2  # 3.0 - 3 * 0.2 < 2.5
    assert pick(0.0, -1.0, [0, 0, 3, 0]) == 2  # negative penalties encourage repeats
    assert pick(0.0, 0.1, [0, 4, 0, 0]) == 1  # 3.0 - 0.4 > 2.5


def test_abandoned_request_is_aborted(checkpoint):
    async def scenario(engine):
        stream = engine.generate("gone", PROMPTS[0], SamplingOptions(max_tokens=5000, stop_token_ids=(), temperature=0))
        await stream.__anext__()
        await stream.aclose()  # what happens when a client disconnects
        for _ in range(500):
            if not engine._live:
                break
            await asyncio.sleep(0.01)
        steps = engine.stats.decode_steps
        await asyncio.sleep(0.1)
        return engine._live, steps, engine.stats.decode_steps

    live, steps_then, steps_later = run_with_engine(checkpoint, scenario)
    assert live == {} and steps_then == steps_later and steps_then < 1000


def test_length_limit_respects_the_context(checkpoint):
    async def scenario(engine):
        return await collect(engine, "ctx", PROMPTS[0], max_tokens=100)

    tokens, _, reasons = run_with_engine(checkpoint, scenario, max_model_len=len(PROMPTS[0]) + 5)
    assert len(tokens[0]) == 5 and reasons[0] == "length"


def test_out_of_vocabulary_ids_are_a_request_error(checkpoint):
    async def scenario(engine):
        with pytest.raises(EngineRequestError, match="vocabulary"):
            await collect(engine, "oov", [1, 999_999], max_tokens=2)
        return (await collect(engine, "ok", PROMPTS[1], max_tokens=2))[2]

    assert run_with_engine(checkpoint, scenario) == {0: "length"}  # the engine is still fine


def test_logprobs_and_prompt_logprobs_equal_the_models_and_batching_keeps_them(checkpoint):
    from transformers import AutoModelForCausalLM

    async def scenario(engine):
        async def run(rid, prompt, **options):
            deltas = [d async for d in engine.generate(rid, prompt, SamplingOptions(
                max_tokens=6, stop_token_ids=(), temperature=0.0, **options))]
            return deltas

        return await asyncio.gather(run("a", PROMPTS[0], logprobs=3, prompt_logprobs=2), run("b", PROMPTS[1]),
                                    run("c", PROMPTS[2], logprobs=0))

    scored, plain, bare = run_with_engine(checkpoint, scenario)
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), attn_implementation="sdpa").eval()
    generated = [t for d in scored for t in d.token_ids]
    ids = PROMPTS[0] + generated
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    prompt_lps = [lp for d in scored for lp in d.prompt_logprobs]
    assert len(prompt_lps) == len(PROMPTS[0]) and prompt_lps[0] is None
    for i, entry in enumerate(prompt_lps[1:], start=1):
        assert entry.token_id == ids[i]
        assert entry.logprob == pytest.approx(float(expected[i - 1, ids[i]]), abs=1e-4)
        assert [t for t, _ in entry.top] == expected[i - 1].topk(2).indices.tolist()
    token_lps = [lp for d in scored for lp in d.logprobs]
    assert [lp.token_id for lp in token_lps] == generated
    for j, entry in enumerate(token_lps):
        row = expected[len(PROMPTS[0]) + j - 1]
        assert entry.logprob == pytest.approx(float(row[generated[j]]), abs=1e-4)
        assert entry.top[0][0] == generated[j] and len(entry.top) == 3  # greedy: the token is the most likely
    assert all(not d.logprobs and not d.prompt_logprobs for d in plain)  # only the rows that asked
    assert all(len(d.logprobs) == len(d.token_ids) and d.logprobs[0].top == () for d in bare)


def test_structured_output_is_refused_naming_the_vllm_engine(checkpoint):
    from openchat_core.serving.engines.base import StructuredOutput

    async def scenario(engine):
        with pytest.raises(EngineRequestError, match="needs the vllm engine"):
            await collect(engine, "s", PROMPTS[1], max_tokens=2, structured=StructuredOutput("json_object"))

    run_with_engine(checkpoint, scenario)


def test_a_lora_adapter_checkpoint_is_served_on_its_base(checkpoint, tmp_path):
    """The engine resolves an adapter's base, applies the adapter, and answers as the adapted model (not the base)."""
    from openchat_core.training.settings import TrainConfig
    from openchat_core.models.adapters import apply_lora, load_model
    from openchat_core.models.checkpoint import save_checkpoint
    from openchat_core.templates.tokenizers import load_tokenizer
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(checkpoint)
    base = AutoModelForCausalLM.from_pretrained(str(checkpoint), attn_implementation="sdpa")
    with torch.no_grad():  # large random adapter weights, so the adapter visibly changes the greedy tokens
        model = apply_lora(base, TrainConfig(lora_r=8), base_path=checkpoint, init_lora_weights=False)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(50)
    adapter = save_checkpoint(tmp_path / "ep_0", model, tokenizer, "openchat_3.5", {"adapter": {"type": "lora", "base_model": str(checkpoint)}})
    peft_model, _ = load_model(adapter, attn_implementation="sdpa")
    with torch.no_grad():
        expected = peft_model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                                       pad_token_id=0)[0, len(PROMPTS[0]):].tolist()
        with peft_model.disable_adapter():
            plain = peft_model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                                        pad_token_id=0)[0, len(PROMPTS[0]):].tolist()
    assert expected != plain

    async def scenario(engine):
        return (await collect(engine, "a", PROMPTS[0], max_tokens=8))[0][0]

    assert run_with_engine(adapter, scenario) == expected
    from openchat_core.serving.runtime import ModelLoadError, ModelSpec, default_engine_factory, load_runtime
    from openchat_core.serving.settings import ServeSettings

    async def load(engine_kind):
        runtime = await load_runtime(ModelSpec(adapter), ServeSettings(model=adapter, engine=engine_kind), default_engine_factory)
        await runtime.engine.shutdown()
        return runtime

    runtime = asyncio.run(load("transformers"))  # what `openchat serve --model <adapter> --engine transformers` loads
    assert runtime.model_type.name == "openchat_v3.2_mistral" and 32000 in runtime.stop_token_ids
    configs = []

    class NoEngine:  # records what the vLLM path would start
        def __init__(self, config):
            configs.append(config)

        async def start(self):
            raise RuntimeError("not started here")

        async def shutdown(self):
            pass

    with pytest.raises(ModelLoadError, match="not started here"):
        asyncio.run(load_runtime(ModelSpec(adapter), ServeSettings(model=adapter), lambda kind, config: NoEngine(config)))
    from openchat_core.models.checkpoint import adapter_base_path

    assert configs[0].model_dir == adapter_base_path(adapter)  # vLLM holds the base and applies the adapter per request
    assert configs[0].max_lora_rank is not None
