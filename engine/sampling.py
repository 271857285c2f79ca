"""Next-token choice: greedy, or sampling with temperature, top-k, top-p and repetition penalty.

Works on the model's device without a host sync: the only sync in the decode loop is the caller
reading the chosen token id. Knows nothing of tokenizers, sessions or stop strings' text.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one reply is generated.

    ``temperature`` 0 is greedy (argmax); ``top_k`` 0 and ``top_p`` 1 disable those filters;
    ``repetition_penalty`` 1 disables it. ``stop`` strings end the reply (the text before a stop
    string is emitted, the stop string itself is not). ``seed`` None draws a fresh seed.
    ``num_beams`` above 1 searches that many replies at once and gives the likeliest
    (``engine.beam``), in one piece at the end; it is greedy: temperature 0, no repetition
    penalty, no stop strings.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None
    num_beams: int = 1

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature, lambda x: x >= 0, ">= 0")
        _check_number("top_p", self.top_p, lambda x: 0 < x <= 1, "in (0, 1]")
        _check_number("repetition_penalty", self.repetition_penalty, lambda x: x > 0, "> 0")
        _check_int("top_k", self.top_k, 0)
        _check_int("max_new_tokens", self.max_new_tokens, 1)
        if self.seed is not None:
            _check_int("seed", self.seed, 0)
        if isinstance(self.stop, str) or not isinstance(self.stop, tuple | list):
            raise InputError(f"stop must be a tuple of strings, got {self.stop!r}")
        # a list (as JSON settings give) is kept as a tuple: the params stay hashable
        object.__setattr__(self, "stop", tuple(self.stop))
        bad = [s for s in self.stop if not isinstance(s, str) or not s]
        if bad:
            raise InputError(f"stop strings must be non-empty strings, got {bad!r}")
        _check_int("num_beams", self.num_beams, 1)
        if self.num_beams > 1 and (self.temperature or self.repetition_penalty != 1 or self.stop):
            raise InputError(
                f"num_beams {self.num_beams}: beam search is greedy (temperature 0, repetition "
                "penalty 1, no stop strings)"
            )

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0


def _check_number(name: str, value: object, ok: Callable[[float], bool], rule: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number {rule}, got {value!r}")
    if not ok(float(value)):
        raise InputError(f"{name} must be {rule}, got {value!r}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")


class Sampler:
    """Chooses the next token from logits; keeps the seeded generator and the penalty mask.

    The repetition penalty covers every token this sampler has been told about through
    :meth:`observe` (the session passes the conversation's generated tokens), as in the CTRL
    paper: a seen token's logit is divided by the penalty when positive, multiplied when negative.
    """

    def __init__(
        self,
        params: SamplingParams,
        vocab_size: int,
        device: torch.device | str,
        banned_ids: tuple[int, ...] = (),
    ) -> None:
        """Args:
        params: the sampling settings.
        vocab_size: width of the logits.
        device: where logits live; the generator and the penalty mask are kept there.
        banned_ids: tokens never chosen (e.g. image placeholders, which only the prompt writes).
        """
        bad = [i for i in banned_ids if not 0 <= i < vocab_size]
        if bad:
            raise InputError(f"banned token ids {bad} outside the vocabulary of {vocab_size}")
        self.params = params
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.generator: torch.Generator | None = None
        if not params.is_greedy:
            self.generator = torch.Generator(device=self.device)
            if params.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(params.seed)
        self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=self.device)  # [vocab]
        self.banned = torch.zeros(vocab_size, dtype=torch.bool, device=self.device)  # [vocab]
        self.banned[list(banned_ids)] = True
        self.has_banned = bool(banned_ids)

    def observe(self, token_ids: torch.Tensor | list[int] | tuple[int, ...]) -> None:
        """Mark tokens as generated, for the repetition penalty (no host sync for a tensor)."""
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.device).reshape(-1)
        if ids.numel():
            # index_fill_ takes the value as a kernel argument; `seen[ids] = True` copies a CPU
            # tensor, which a CUDA graph capture refuses (the graphed decode observes each token)
            self.seen.index_fill_(0, ids, True)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Choose one token per row.

        Args:
            logits: [B, vocab] or [vocab], any float dtype.

        Returns:
            [B] int64 token ids on the logits' device (a 0-d tensor for 1-D logits).
        """
        if logits.shape[-1] != self.vocab_size:
            raise InputError(
                f"logits have width {logits.shape[-1]}, sampler expects {self.vocab_size}"
            )
        p = self.params
        if p.is_greedy:
            return self.filtered_scores(logits).argmax(dim=-1)
        if not 0 < p.top_k < self.vocab_size:
            return self._draw(self.filtered_scores(logits))
        # top-k first, then top-p and the draw over k candidates only: the same distribution as
        # filtered_scores, without sorting the whole vocabulary every token
        scores = self._penalized(logits) / p.temperature
        values, index = torch.topk(scores, p.top_k, dim=-1)  # [..., k], descending
        if p.top_p < 1.0:
            values = _top_p_filter(values, p.top_p)
        choice = self._draw(values)
        return index.gather(-1, choice.unsqueeze(-1)).squeeze(-1)

    def _draw(self, scores: torch.Tensor) -> torch.Tensor:
        """One index per row with probability softmax(scores), on the device without a sync.

        Exponential race: argmax(p / E) with E ~ Exp(1) picks index i with probability p_i, with
        one pass over the scores (no cumulative sum as in multinomial).
        """
        probs = torch.softmax(scores, dim=-1)
        race = torch.empty_like(probs).exponential_(generator=self.generator)
        # a draw of exactly 0 would make 0/0 = nan for a filtered token, and argmax picks nan
        race.clamp_min_(torch.finfo(race.dtype).tiny)
        return (probs / race).argmax(dim=-1)

    def filtered_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The scores sampling draws from: penalty, temperature, then top-k and top-p filtering.

        Args:
            logits: [..., vocab].

        Returns:
            [..., vocab] float32; banned and filtered-out tokens are ``-inf``. Greedy skips
            temperature and the filters (they cannot change the argmax).
        """
        p = self.params
        scores = self._penalized(logits)
        if p.is_greedy:
            return scores
        scores = scores / p.temperature
        if 0 < p.top_k < self.vocab_size:
            kth = torch.topk(scores, p.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p < 1.0:
            scores = _top_p_filter(scores, p.top_p)
        return scores

    def _penalized(self, logits: torch.Tensor) -> torch.Tensor:
        """float32 logits with banned tokens at -inf and the repetition penalty applied."""
        scores = logits.float()
        if self.has_banned:
            scores = scores.masked_fill(self.banned, float("-inf"))
        rp = self.params.repetition_penalty
        if rp != 1.0:
            penalized = torch.where(scores > 0, scores / rp, scores * rp)
            scores = torch.where(self.seen, penalized, scores)
        return scores


def _top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p``.

    A token is kept when the probability of the tokens ranked above it is below ``top_p``, so the
    most likely token always survives.
    """
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
    sorted_probs = torch.softmax(sorted_scores, dim=-1)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))
