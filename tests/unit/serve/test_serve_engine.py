"""Continuous batching on tiny random transformers models (Llama and GPT-2), and classification (no Ray, no
tokenizer): every row must generate exactly what the model alone, without any cache, generates greedily."""

from __future__ import annotations

import pytest
import torch
from kubeforge_trainer.serve.engine import (
    ContinuousBatcher,
    GenerationTask,
    SamplingParams,
    classify,
    generate,
    left_pad,
    right_pad,
)
from kubeforge_trainer.serve.protocol import StreamDelta
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

VOCAB, EOS, PAD = 40, 1, 0


def decode(ids: list[int]) -> str:
    """One letter per token, so text positions are token positions."""
    return "".join(chr(ord("a") + i % 26) for i in ids)


def spread_out(model: torch.nn.Module) -> torch.nn.Module:
    """Large random weights, so greedy choices are far apart and padding noise cannot flip them."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval()


def tiny_llama() -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=48,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    return LlamaForCausalLM(config)


def tiny_gpt2() -> torch.nn.Module:
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=48, n_embd=32, n_layer=2, n_head=2))


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request: pytest.FixtureRequest) -> torch.nn.Module:
    torch.manual_seed(0)
    return spread_out(tiny_llama() if request.param == "llama" else tiny_gpt2())


@torch.inference_mode()
def greedy_without_cache(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        logits = model(torch.tensor([ids]), use_cache=False).logits
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def task(index: int, prompt: list[int], max_new: int, **params: object) -> GenerationTask:
    return GenerationTask(index, prompt, SamplingParams(max_new_tokens=max_new, temperature=0.0, **params))


def batcher(model: torch.nn.Module, eos: int | None = None, max_batch_size: int = 16) -> ContinuousBatcher:
    eos_ids = frozenset() if eos is None else frozenset({eos})
    return ContinuousBatcher(model, eos_ids, PAD, decode, torch.Generator().manual_seed(0), max_batch_size)


def run(model: torch.nn.Module, tasks: list[GenerationTask], eos: int | None = None) -> list[GenerationTask]:
    generate(batcher(model, eos), tasks)
    return tasks


def test_left_pad_aligns_prompts_on_the_right() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], PAD)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_right_pad() -> None:
    ids, mask = right_pad([[5, 6, 7], [8]], PAD)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_batched_generation_equals_one_prompt_at_a_time_without_cache(lm: torch.nn.Module) -> None:
    prompts = [[3, 4, 5, 6, 7, 8, 9], [10], [11, 12, 13], [14, 15, 16, 17, 18]]
    lengths = [12, 5, 20, 1]  # rows finish at different steps and leave the batch
    tasks = run(lm, [task(i, p, n) for i, (p, n) in enumerate(zip(prompts, lengths, strict=True))])
    for t, prompt, n in zip(tasks, prompts, lengths, strict=True):
        assert t.token_ids == greedy_without_cache(lm, prompt, n)
        assert t.text == decode(t.token_ids)
        assert t.finish_reason == "length"
        assert len(t.token_times) == n


def test_requests_join_and_leave_the_running_batch_per_step(lm: torch.nn.Module) -> None:
    engine = batcher(lm, max_batch_size=2)
    sizes: list[int] = []
    engine.on_step = lambda b: sizes.append(len(b.active))
    first = task(0, [3, 4, 5, 6, 7, 8, 9, 10, 11], 15)
    engine.submit(first)
    for _ in range(4):
        engine.step()
    # Joins a batch whose cache is already longer than its prompt, then more wait for the one free row.
    later = [
        task(1, [12, 13], 3),
        task(2, [14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27], 6),
        task(3, [9], 4),
    ]
    for t in later:
        engine.submit(t)
    while engine.active or engine.waiting:
        engine.step()
    assert sizes[:4] == [1, 1, 1, 1] and max(sizes) == 2  # never more rows than max_batch_size
    assert sizes.count(2) >= 3  # a second row ran beside the first
    for t, prompt, n in [(first, first.prompt_ids, 15)] + [(t, t.prompt_ids, t.params.max_new_tokens) for t in later]:
        assert t.token_ids == greedy_without_cache(lm, prompt, n)
    assert engine.cache_tokens == 0  # the batch released its cache


def test_done_is_called_once_per_task(lm: torch.nn.Module) -> None:
    finished: list[int] = []
    tasks = [task(i, [3 + i], 2 + i) for i in range(3)]
    for t in tasks:
        t.on_done = lambda error, i=t.index: finished.append(i) if error is None else None
    run(lm, tasks)
    assert sorted(finished) == [0, 1, 2]


def test_the_engine_thread_serves_submissions(lm: torch.nn.Module) -> None:
    import threading

    engine = batcher(lm)
    engine.start()
    try:
        done = threading.Semaphore(0)
        tasks = [task(i, [3 + i, 4], 5) for i in range(4)]
        for t in tasks:
            t.on_done = lambda error: done.release()
            engine.submit(t)
        assert all(done.acquire(timeout=60) for _ in tasks)
    finally:
        engine.stop()
    for t in tasks:
        assert t.token_ids == greedy_without_cache(lm, t.prompt_ids, 5)


def test_generation_fills_the_context_exactly(lm: torch.nn.Module) -> None:
    prompt = list(range(2, 10))
    (t,) = run(lm, [task(0, prompt, 48 - len(prompt))])
    assert len(t.token_ids) == 40


def test_eos_ends_a_row_and_is_not_part_of_the_output(lm: torch.nn.Module) -> None:
    prompt = [3, 4, 5]
    expected = greedy_without_cache(lm, prompt, 10)
    eos = expected[4]
    (t,) = run(lm, [task(0, prompt, 10)], eos=eos)
    assert t.token_ids == expected[: expected.index(eos)]
    assert t.finish_reason == "stop"


def test_stop_string_truncates_text_and_stream(lm: torch.nn.Module) -> None:
    prompt = [6, 7]
    full = decode(greedy_without_cache(lm, prompt, 12))
    stop = full[5:7]
    deltas: list[StreamDelta] = []
    (t,) = run(lm, [GenerationTask(0, prompt, SamplingParams(12, 0.0, stop=(stop,)), on_delta=deltas.append)])
    assert t.text == full[: full.index(stop)]
    assert t.finish_reason == "stop"
    assert "".join(d.text for d in deltas) == t.text
    assert deltas[-1].finish_reason == "stop" and all(d.finish_reason is None for d in deltas[:-1])


def test_stream_deltas_add_up_to_the_text(lm: torch.nn.Module) -> None:
    deltas: list[StreamDelta] = []
    tasks = [GenerationTask(i, [3 + i], SamplingParams(6, 0.0), on_delta=deltas.append) for i in range(3)]
    run(lm, tasks)
    for t in tasks:
        mine = [d for d in deltas if d.index == t.index]
        assert "".join(d.text for d in mine) == t.text
        assert mine[-1].finish_reason == "length"


def test_cancelled_tasks_are_skipped(lm: torch.nn.Module) -> None:
    kept, dropped = task(0, [3, 4], 5), task(1, [5, 6], 5)
    dropped.cancelled = True
    run(lm, [kept, dropped])
    assert len(kept.token_ids) == 5
    assert dropped.token_ids == [] and dropped.finish_reason is None


def test_seeded_sampling_is_reproducible_in_any_batch(lm: torch.nn.Module) -> None:
    def sampled(seed: int, index: int) -> GenerationTask:
        return GenerationTask(index, [3, 4, 5], SamplingParams(10, temperature=1.5, top_p=0.9, seed=seed))

    alone = run(lm, [sampled(42, 0)])[0].token_ids
    in_batch = run(lm, [sampled(1, 0), sampled(42, 1), task(2, [9], 3)])[1].token_ids
    assert alone == in_batch
    assert run(lm, [sampled(43, 0)])[0].token_ids != alone


def test_classification_batch_equals_single_inputs() -> None:
    torch.manual_seed(1)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2, num_labels=3, pad_token_id=PAD
    )
    model = spread_out(GPT2ForSequenceClassification(config))
    sequences = [[3, 4, 5, 6], [7], [8, 9]]
    batched = classify(model, sequences, PAD)
    assert batched.shape == (3, 3)
    assert torch.allclose(batched.sum(-1), torch.ones(3))
    for row, seq in enumerate(sequences):
        assert torch.allclose(batched[row], classify(model, [seq], PAD)[0], atol=1e-5)
