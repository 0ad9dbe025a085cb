"""Next-token sampling (greedy, temperature, top-p, seeds) and streamed text with stop strings (pure)."""

from __future__ import annotations

import pytest
import torch
from kubeforge_trainer.serve.engine import SamplingParams, next_tokens
from kubeforge_trainer.serve.text import find_stop, stop_holdback, text_step


def params(n: int, temperature: float = 1.0, top_p: float = 1.0) -> list[SamplingParams]:
    return [SamplingParams(1, temperature, top_p)] * n


def test_temperature_zero_is_argmax() -> None:
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 1.0]])
    gen = torch.Generator().manual_seed(0)
    assert next_tokens(logits, params(2, 0.0), [gen, gen]) == [1, 0]


def test_sampling_never_leaves_the_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(200, 1)
    gen = torch.Generator().manual_seed(1)
    assert set(next_tokens(logits, params(200, 1.0, 0.7), [gen] * 200)) == {0, 1}
    # The most likely token survives even a tiny top_p.
    assert set(next_tokens(logits, params(200, 1.0, 0.01), [gen] * 200)) == {0}


def test_top_p_and_greedy_per_row() -> None:
    logits = torch.log(torch.tensor([[0.6, 0.4]])).repeat(400, 1)
    gen = torch.Generator().manual_seed(5)
    rows = params(200, 1.0, 0.5) + params(100, 1.0, 1.0) + params(100, 0.0)
    tokens = next_tokens(logits, rows, [gen] * 400)
    assert set(tokens[:200]) == {0} and set(tokens[200:300]) == {0, 1} and set(tokens[300:]) == {0}


def test_high_temperature_flattens_the_distribution() -> None:
    logits = torch.tensor([[4.0, 0.0]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(2)
    cold = next_tokens(logits, params(2000, 0.5), [gen] * 2000)
    hot = next_tokens(logits, params(2000, 5.0), [gen] * 2000)
    assert hot.count(1) > 10 * max(cold.count(1), 1)


def test_seeded_rows_reproduce_whatever_the_batch() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(3))
    shared = torch.Generator().manual_seed(4)
    alone = next_tokens(logits[1:2], params(1), [torch.Generator().manual_seed(9)])
    batched = next_tokens(logits, params(3), [shared, torch.Generator().manual_seed(9), shared])
    assert batched[1] == alone[0]


def test_find_stop_earliest() -> None:
    assert find_stop("abc STOP def END", ["END", "STOP"]) == 4
    assert find_stop("abc", ["x"]) is None
    assert find_stop("xx", ["x"], start=1) == 1


@pytest.mark.parametrize(
    ("text", "stops", "held"),
    [("hello wor", ["world"], 3), ("hello", ["world"], 0), ("abcab", ["abc"], 2), ("a\n", ["\n\n"], 1), ("", ["x"], 0)],
)
def test_stop_holdback(text: str, stops: list[str], held: int) -> None:
    assert stop_holdback(text, stops) == held


def test_text_step_streams_without_ever_sending_the_stop_string() -> None:
    stops = ["###"]
    sent, emitted = "", 0
    pieces = ["Hello", "Hello #", "Hello ##", "Hello ##!", "Hello ##! ###", "Hello ##! ### more"]
    results = []
    for decoded in pieces:
        delta, stopped = text_step(decoded, emitted, stops, final=False)
        sent += delta
        emitted = len(sent)
        results.append((delta, stopped))
        if stopped:
            break
    assert results == [("Hello", False), (" ", False), ("", False), ("##!", False), (" ", True)]
    assert sent == "Hello ##! "


def test_text_step_holds_back_partial_characters_until_final() -> None:
    assert text_step("ab\ufffd", 0, [], final=False) == ("ab", False)
    assert text_step("abé", 2, [], final=False) == ("é", False)
    assert text_step("ab\ufffd", 2, [], final=True) == ("\ufffd", False)
