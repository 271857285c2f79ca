"""Sampler on hand-made logits: each knob changes the distribution exactly as specified."""

import math

import pytest
import torch

from engine.errors import InputError
from engine.sampling import Sampler, SamplingParams

V = 8


def _draws(params: SamplingParams, logits: torch.Tensor, n: int = 4000) -> torch.Tensor:
    """Token frequencies of n independent draws from one row of logits."""
    sampler = Sampler(params, V, "cpu")
    picks = sampler(logits.expand(n, V))
    return torch.bincount(picks, minlength=V).float() / n


def test_sampler_greedy_is_argmax_and_deterministic() -> None:
    logits = torch.tensor([[0.1, 3.0, 2.9, -1.0, 0, 0, 0, 0], [5.0, 0, 0, 0, 0, 0, 0, 6.0]])
    sampler = Sampler(SamplingParams(), V, "cpu")
    assert sampler(logits).tolist() == [1, 7]
    assert sampler(logits).tolist() == [1, 7]
    assert sampler.generator is None


def test_sampler_seed_reproducible_and_seeds_differ() -> None:
    logits = torch.zeros(64, V)
    params = SamplingParams(temperature=1.0, seed=1234)
    a = Sampler(params, V, "cpu")(logits)
    b = Sampler(params, V, "cpu")(logits)
    c = Sampler(SamplingParams(temperature=1.0, seed=99), V, "cpu")(logits)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sampler_temperature_one_matches_softmax() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -9, -9, -9, -9])
    freq = _draws(SamplingParams(temperature=1.0, seed=0), logits, n=20000)
    assert torch.allclose(freq, torch.softmax(logits, -1), atol=0.015)


def test_sampler_temperature_scales_logits() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -9, -9, -9, -9])
    sampler = Sampler(SamplingParams(temperature=0.5), V, "cpu")
    assert torch.allclose(sampler.filtered_scores(logits), logits / 0.5)
    # a lower temperature concentrates the mass on the best token
    hot = _draws(SamplingParams(temperature=2.0, seed=0), logits)
    cold = _draws(SamplingParams(temperature=0.25, seed=0), logits)
    assert cold[0] > 0.97 > hot[0]


def test_sampler_top_k_keeps_k_best() -> None:
    logits = torch.tensor([0.0, 4.0, 1.0, 3.0, 2.0, -1.0, 0.5, 0.2])
    scores = Sampler(SamplingParams(temperature=1.0, top_k=3), V, "cpu").filtered_scores(logits)
    kept = torch.isfinite(scores).nonzero().flatten().tolist()
    assert kept == [1, 3, 4]
    freq = _draws(SamplingParams(temperature=1.0, top_k=3, seed=3), logits)
    assert set(freq.nonzero().flatten().tolist()) == {1, 3, 4}
    expected = torch.softmax(torch.tensor([4.0, 3.0, 2.0]), -1)
    assert torch.allclose(freq[[1, 3, 4]], expected, atol=0.03)


def test_sampler_top_p_keeps_nucleus() -> None:
    # probabilities 0.5, 0.25, 0.125, 0.0625, ...: top_p 0.7 keeps the first two
    probs = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.0078125])
    logits = probs.log()[torch.tensor([3, 0, 1, 2, 4, 5, 6, 7])]  # shuffled order
    scores = Sampler(SamplingParams(temperature=1.0, top_p=0.7), V, "cpu").filtered_scores(logits)
    assert torch.isfinite(scores).nonzero().flatten().tolist() == [1, 2]
    # exactly reaching top_p with the kept tokens does not admit the next one
    scores = Sampler(SamplingParams(temperature=1.0, top_p=0.75), V, "cpu").filtered_scores(logits)
    assert torch.isfinite(scores).nonzero().flatten().tolist() == [1, 2]
    # a tiny top_p still keeps the most likely token
    scores = Sampler(SamplingParams(temperature=1.0, top_p=1e-6), V, "cpu").filtered_scores(logits)
    assert torch.isfinite(scores).nonzero().flatten().tolist() == [1]
    freq = _draws(SamplingParams(temperature=1.0, top_p=0.7, seed=5), logits)
    assert set(freq.nonzero().flatten().tolist()) == {1, 2}
    assert math.isclose(freq[1].item(), 2 / 3, abs_tol=0.03)


def test_sampler_repetition_penalty_divides_positive_multiplies_negative() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0])
    sampler = Sampler(SamplingParams(repetition_penalty=2.0), V, "cpu")
    sampler.observe([0, 1])
    scores = sampler.filtered_scores(logits)
    assert scores.tolist() == [1.0, -4.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0]
    # greedy: token 0 wins before it is generated, token 2 once 0 is penalized enough
    strong = Sampler(SamplingParams(repetition_penalty=3.0), V, "cpu")
    assert strong(logits).item() == 0
    strong.observe(torch.tensor([0]))
    assert strong(logits).item() == 2


def test_sampler_penalty_off_ignores_seen_tokens() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0])
    sampler = Sampler(SamplingParams(), V, "cpu")
    sampler.observe([0, 1, 2])
    assert torch.equal(sampler.filtered_scores(logits), logits)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("top_k", 2.5),
        ("repetition_penalty", 0.0),
        ("max_new_tokens", 0),
        ("max_new_tokens", True),
        ("seed", -3),
        ("stop", "abc"),
        ("stop", ("",)),
    ],
)
def test_sampling_params_bad_values_name_them(field: str, value: object) -> None:
    with pytest.raises(InputError, match=field):
        SamplingParams(**{field: value})


def test_sampler_wrong_vocab_width() -> None:
    with pytest.raises(InputError, match="width 5"):
        Sampler(SamplingParams(), V, "cpu")(torch.zeros(5))


def test_sampler_banned_ids_never_chosen() -> None:
    logits = torch.tensor([0.0, 9.0, 8.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    greedy = Sampler(SamplingParams(), V, "cpu", banned_ids=(1,))
    assert greedy(logits).item() == 2
    freq = _draws(SamplingParams(temperature=5.0, seed=1), logits)
    assert freq[1] > 0
    sampler = Sampler(SamplingParams(temperature=5.0, seed=1), V, "cpu", banned_ids=(1, 2))
    assert (sampler(logits.expand(2000, V)) != 1).all()
    with pytest.raises(InputError, match="banned"):
        Sampler(SamplingParams(), V, "cpu", banned_ids=(V,))


def test_sampling_params_stop_list_becomes_tuple() -> None:
    params = SamplingParams(stop=["###", "\n\n"])  # type: ignore[arg-type]
    assert params.stop == ("###", "\n\n")
    assert hash(params) == hash(SamplingParams(stop=("###", "\n\n")))


def test_sampler_top_k_with_top_p_draws_from_filtered_scores() -> None:
    logits = torch.tensor([0.5, 3.0, 1.0, 2.5, 2.0, -1.0, 1.5, 0.2])
    params = SamplingParams(temperature=0.8, top_k=5, top_p=0.8, repetition_penalty=1.3, seed=2)
    sampler = Sampler(params, V, "cpu", banned_ids=(3,))
    sampler.observe([1])
    expected = torch.softmax(sampler.filtered_scores(logits), -1)
    picks = sampler(logits.expand(20000, V))
    freq = torch.bincount(picks, minlength=V).float() / 20000
    assert set(freq.nonzero().flatten().tolist()) == set(expected.nonzero().flatten().tolist())
    assert torch.allclose(freq, expected, atol=0.015)


def test_sampler_never_picks_filtered_tokens_over_many_draws() -> None:
    # filtered tokens have probability 0: no draw may land there, however the race falls
    logits = torch.zeros(V)
    logits[2] = 5.0
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=0), V, "cpu")
    assert (sampler(logits.expand(200_000, V)) == 2).all()
