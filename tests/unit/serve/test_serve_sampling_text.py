"""Next-token sampling (greedy, temperature, top-p, seeds) and streamed text with stop strings (pure)."""

from __future__ import annotations

import pytest
import torch
from kubeforge_trainer.serve.sampling import sample_next_tokens, top_p_filter
from kubeforge_trainer.serve.text import find_stop, stop_holdback, text_step


def test_temperature_zero_is_argmax() -> None:
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 1.0]])
    gen = torch.Generator().manual_seed(0)
    tokens = sample_next_tokens(logits, torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]), [gen, gen])
    assert tokens.tolist() == [1, 0]


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = top_p_filter(probs, torch.tensor([0.7]))
    assert torch.allclose(kept, torch.tensor([[0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0]]))
    assert torch.equal(top_p_filter(probs, torch.tensor([1.0])), probs)
    # The most likely token survives even a tiny top_p.
    assert top_p_filter(probs, torch.tensor([0.01])).tolist() == [[1.0, 0.0, 0.0, 0.0]]


def test_top_p_per_row() -> None:
    probs = torch.tensor([[0.6, 0.4], [0.6, 0.4]])
    kept = top_p_filter(probs, torch.tensor([0.5, 1.0]))
    assert torch.allclose(kept, torch.tensor([[1.0, 0.0], [0.6, 0.4]]))


def test_sampling_never_leaves_the_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(200, 1)
    gen = torch.Generator().manual_seed(1)
    tokens = sample_next_tokens(logits, torch.ones(200), torch.full((200,), 0.7), [gen] * 200)
    assert set(tokens.tolist()) == {0, 1}


def test_high_temperature_flattens_the_distribution() -> None:
    logits = torch.tensor([[4.0, 0.0]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(2)
    cold = sample_next_tokens(logits, torch.full((2000,), 0.5), torch.ones(2000), [gen] * 2000)
    hot = sample_next_tokens(logits, torch.full((2000,), 5.0), torch.ones(2000), [gen] * 2000)
    assert (hot == 1).sum() > 10 * max(int((cold == 1).sum()), 1)


def test_seeded_rows_reproduce_whatever_the_batch() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(3))
    shared = torch.Generator().manual_seed(4)
    alone = sample_next_tokens(logits[1:2], torch.ones(1), torch.ones(1), [torch.Generator().manual_seed(9)])
    batched = sample_next_tokens(
        logits, torch.ones(3), torch.ones(3), [shared, torch.Generator().manual_seed(9), shared]
    )
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
