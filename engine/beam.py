"""Beam search over a reply: at each step the `num_beams` likeliest continuations are kept.

`beam_search` is the search itself, over a `step` function that extends chosen beams by one token
each and returns their next-token log-probabilities. `Session.beam_step` is the fast step, which
`Session.generate` takes when `SamplingParams.num_beams` is above 1: every beam is a row of one
batched copy of the session's state, reordered and fed in a single model call per step.
`fork_step` is the reference: every beam is a fork of the session, fed on its own. A finished
reply's score is its log-probability over its length (with the end token): without that, search
prefers the shortest reply.

Greedy decoding (`Session.generate`) takes the likeliest token one at a time; where the model is
unsure of a word's first letters, the likeliest whole reply often begins with another
(benchmarks/eval_default_model.py `--beams`: held-out words, lines and screens read by the
embedded model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence, Set
from typing import TYPE_CHECKING

import torch

from engine.errors import Cancelled, InputError

if TYPE_CHECKING:
    from engine.engine import CancelToken, Session

# (parents, tokens) -> log-probabilities [len(tokens), vocab]: new beam i is beam parents[i] of
# the previous step (of the prompt, at the first step) with tokens[i] fed
StepFn = Callable[[Sequence[int], Sequence[int]], torch.Tensor]


def beam_search(
    first: torch.Tensor, step: StepFn, *, num_beams: int, max_new_tokens: int,
    eos: Set[int], cancel: CancelToken | None = None,
) -> list[int]:  # fmt: skip
    """The token ids of the best reply (without its end token).

    Args:
        first: log-probabilities [vocab] of the reply's first token.
        eos: tokens that end a reply.
        max_new_tokens: the longest reply; a beam that reaches it ends there.
    Raises:
        InputError: `num_beams` or `max_new_tokens` below 1.
        Cancelled: `cancel` was set (checked before each step).
    """
    if num_beams < 1 or max_new_tokens < 1:
        raise InputError(
            f"num_beams ({num_beams}) and max_new_tokens ({max_new_tokens}) must be >= 1"
        )
    live: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]
    logprobs = first[None]
    finished: list[tuple[float, tuple[int, ...]]] = []  # (score, ids)
    for _ in range(max_new_tokens):
        if cancel is not None and cancel.is_cancelled:
            raise Cancelled(f"beam search cancelled after {len(live[0][1])} tokens")
        candidates: list[tuple[float, int, int]] = []  # (log-probability, parent, token)
        for parent, (logprob, _) in enumerate(live):
            top = logprobs[parent].topk(min(num_beams + len(eos), logprobs.shape[-1]))
            for lp, token in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                if lp > -math.inf:
                    candidates.append((logprob + lp, parent, token))
        candidates.sort(key=lambda c: -c[0])
        chosen: list[tuple[float, int, int]] = []
        for logprob, parent, token in candidates:
            if token in eos:
                finished.append((logprob / (len(live[parent][1]) + 1), live[parent][1]))
            else:
                chosen.append((logprob, parent, token))
                if len(chosen) == num_beams:
                    break
        if not chosen:
            break
        logprobs = step([c[1] for c in chosen], [c[2] for c in chosen])
        live = [(lp, (*live[parent][1], token)) for lp, parent, token in chosen]
        # Hugging Face's early stop: enough replies are finished and the best of them scores at
        # least as well as every live beam does now (a heuristic: a live beam's mean can rise)
        best_live = max(lp / (len(ids) + 1) for lp, ids in live)
        if len(finished) >= num_beams and max(f[0] for f in finished) >= best_live:
            break
    # beams that reached max_new_tokens end there, scored without an end token
    finished += [(lp / len(ids), ids) for lp, ids in live if len(ids) == max_new_tokens]
    return list(max(finished, key=lambda f: f[0])[1])


def fork_step(session: Session) -> StepFn:
    """The reference step: each beam a fork of `session` (which awaits its reply), fed alone."""
    beams = [session]

    def step(parents: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        nonlocal beams
        beams = [beams[p].fork() for p in parents]
        for beam, token in zip(beams, tokens, strict=True):
            beam.feed_reply_token(token)
        return torch.stack([beam.next_token_logprobs() for beam in beams])

    return step
