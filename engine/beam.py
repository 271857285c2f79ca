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
    return beam_search_groups(
        [first], step, num_beams=num_beams, max_new_tokens=max_new_tokens, eos=eos, cancel=cancel
    )[0]


def beam_search_groups(
    firsts: Sequence[torch.Tensor], step: StepFn, *, num_beams: int, max_new_tokens: int,
    eos: Set[int], cancel: CancelToken | None = None,
) -> list[list[int]]:  # fmt: skip
    """`beam_search` for several prompts at once: one search per prompt (a group), their beams
    fed together, one `step` call a step for all of them.

    Each group keeps its own `num_beams` beams and finished replies; a group that is done (early
    stop, or no beam left) drops out of the rows fed. `step`'s parents index the rows of the
    step before: at the first step, row g is prompt g; after it, the live beams of the groups
    still searching, group by group. The best reply of group g is what `beam_search` over
    prompt g alone returns.

    Args:
        firsts: log-probabilities [vocab] of each reply's first token, one per prompt.
    Returns:
        The token ids of each prompt's best reply (without its end token), in `firsts`' order.
    Raises:
        InputError: `num_beams` or `max_new_tokens` below 1, or no prompts.
        Cancelled: `cancel` was set (checked before each step).
    """
    if num_beams < 1 or max_new_tokens < 1 or not firsts:
        raise InputError(
            f"num_beams ({num_beams}) and max_new_tokens ({max_new_tokens}) must be >= 1, "
            f"with at least one prompt ({len(firsts)} given)"
        )
    groups = len(firsts)
    # each group's live beams (log-probability, ids) and the rows of the last step they sit in
    live: list[list[tuple[float, tuple[int, ...]]]] = [[(0.0, ())] for _ in range(groups)]
    rows: list[list[int]] = [[g] for g in range(groups)]
    logprobs = torch.stack(list(firsts))
    finished: list[list[tuple[float, tuple[int, ...]]]] = [[] for _ in range(groups)]
    searching = set(range(groups))
    for done_steps in range(max_new_tokens):
        if cancel is not None and cancel.is_cancelled:
            raise Cancelled(f"beam search cancelled after {done_steps} tokens")
        parents: list[int] = []
        tokens: list[int] = []
        kept: dict[int, list[tuple[float, int]]] = {}  # group -> (log-probability, its beam)
        for g in sorted(searching):
            chosen = _choose(live[g], logprobs, rows[g], num_beams, eos, finished[g])
            if not chosen:
                searching.discard(g)
                continue
            kept[g] = [(lp, beam) for lp, beam, _ in chosen]
            parents += [rows[g][beam] for _, beam, _ in chosen]
            tokens += [token for _, _, token in chosen]
        if not kept:
            break
        logprobs = step(parents, tokens)
        at = 0
        for g, chosen_g in kept.items():
            live[g] = [
                (lp, (*live[g][beam][1], token))
                for (lp, beam), token in zip(chosen_g, tokens[at : at + len(chosen_g)], strict=True)
            ]
            rows[g] = list(range(at, at + len(chosen_g)))
            at += len(chosen_g)
            # Hugging Face's early stop: enough replies are finished and the best of them
            # scores at least as well as every live beam does now (a heuristic: a live beam's
            # mean can rise)
            best_live = max(lp / (len(ids) + 1) for lp, ids in live[g])
            if len(finished[g]) >= num_beams and max(f[0] for f in finished[g]) >= best_live:
                searching.discard(g)
    best = []
    for g in range(groups):
        # beams that reached max_new_tokens end there, scored without an end token
        cut = [(lp / len(ids), ids) for lp, ids in live[g] if len(ids) == max_new_tokens]
        ends = finished[g] + cut
        best.append(list(max(ends, key=lambda f: f[0])[1]) if ends else [])
    return best


def _choose(
    live: list[tuple[float, tuple[int, ...]]], logprobs: torch.Tensor, rows: list[int],
    num_beams: int, eos: Set[int], finished: list[tuple[float, tuple[int, ...]]],
) -> list[tuple[float, int, int]]:  # fmt: skip
    """One group's step: the `num_beams` likeliest continuations (log-probability, beam, token)
    of its `live` beams, whose next-token log-probabilities are `logprobs[rows]`; continuations
    that end the reply go to `finished`, scored by their mean log-probability."""
    candidates: list[tuple[float, int, int]] = []  # (log-probability, beam, token)
    for beam, (logprob, _) in enumerate(live):
        top = logprobs[rows[beam]].topk(min(num_beams + len(eos), logprobs.shape[-1]))
        for lp, token in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            if lp > -math.inf:
                candidates.append((logprob + lp, beam, token))
    candidates.sort(key=lambda c: -c[0])
    chosen: list[tuple[float, int, int]] = []
    for logprob, beam, token in candidates:
        if token in eos:
            finished.append((logprob / (len(live[beam][1]) + 1), live[beam][1]))
        else:
            chosen.append((logprob, beam, token))
            if len(chosen) == num_beams:
                break
    return chosen


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
