"""engine.beam: beam search over a reply, on a tree of next-token probabilities whose likeliest
first token leads to an unlikely reply (alone, and through a fake model's sessions), and on the
real tiny checkpoint, where the batched beams of `Session.generate_beam` must match the forks."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from engine.beam import beam_search, beam_search_groups, fork_step
from engine.config import tiny_config
from engine.engine import CancelToken, Engine, Session, beam_generate_together
from engine.errors import Cancelled, InputError, StateError
from engine.model.stack_rows import stack_rows
from engine.sampling import SamplingParams
from engine.state import SWAState
from engine.testing import write_tiny_checkpoint
from tests.engine.fakes import (
    ASSISTANT_OPEN,
    SPECIAL,
    VOCAB,
    FakeModel,
    FakeState,
    fake_engine,
)

END = SPECIAL["<|im_end|>"]
# the reply so far -> its next token's probabilities. Greedy takes "a" (0.6), then only
# unlikely letters follow; "b" (0.4) is followed by the end at 0.9: "b" is the likelier reply
TREE = {
    b"": {ord("a"): 0.6, ord("b"): 0.4},
    b"a": {ord("x"): 0.35, ord("y"): 0.35, END: 0.3},
    b"ax": {END: 1.0},
    b"ay": {END: 1.0},
    b"b": {END: 0.9, ord("z"): 0.1},
    b"bz": {END: 1.0},
}


class TreeModel(FakeModel):
    """After the last ``<|im_start|>assistant\\n``, the next token is drawn from ``TREE``."""

    def forward(self, input_ids: torch.Tensor, state: FakeState, **kw: object) -> torch.Tensor:
        super().forward(input_ids, state, **kw)  # type: ignore[arg-type]
        history = state.history
        n = len(ASSISTANT_OPEN)
        start = max(
            i + n for i in range(len(history) - n + 1) if history[i : i + n] == ASSISTANT_OPEN
        )
        reply = history[start:]
        key = bytes(reply) if all(i < 256 for i in reply) else None  # a closed turn
        logits = torch.full((1, 1, VOCAB), -1e4)
        for token, p in TREE.get(key, {END: 1.0}).items():
            logits[0, 0, token] = math.log(p)
        return logits


@pytest.fixture
def tree_engine() -> Engine:
    engine = fake_engine()
    engine.model = TreeModel(b"", engine.config)
    return engine


def _asked(engine: Engine) -> Session:
    session = engine.new_session()
    session.add_user_message("read")
    return session


def _tree_first_and_step() -> tuple[torch.Tensor, Callable[..., torch.Tensor]]:
    """`beam_search`'s inputs for TREE, with no model at all."""

    def row(reply: bytes) -> torch.Tensor:
        out = torch.full((VOCAB,), -math.inf)
        for token, p in TREE.get(reply, {END: 1.0}).items():
            out[token] = math.log(p)
        return out

    prefixes = [b""]

    def step(parents: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        prefixes[:] = [prefixes[p] + bytes([t]) for p, t in zip(parents, tokens, strict=True)]
        return torch.stack([row(r) for r in prefixes])

    return row(b""), step


def _search(num_beams: int, max_new_tokens: int = 8, cancel: CancelToken | None = None) -> bytes:
    first, step = _tree_first_and_step()
    ids = beam_search(
        first, step, num_beams=num_beams, max_new_tokens=max_new_tokens, eos={END}, cancel=cancel
    )
    return bytes(ids)


def test_beam_search_finds_the_likelier_reply_that_greedy_misses() -> None:
    assert _search(num_beams=1) in (b"ax", b"ay")  # greedy: 0.6 x 0.35 = 0.21
    assert _search(num_beams=2) == b"b"  # 0.4 x 0.9 = 0.36
    assert _search(num_beams=2, max_new_tokens=1) in (b"a", b"b")  # cut at the limit


# a second tree, where the likeliest first token also leads to the likeliest reply
TREE_2 = {b"": {ord("c"): 0.9, END: 0.1}, b"c": {ord("d"): 0.5, END: 0.5}, b"cd": {END: 1.0}}


def _trees_first_and_step(
    trees: list[dict[bytes, dict[int, float]]],
) -> tuple[list[torch.Tensor], Callable[..., torch.Tensor]]:
    """`beam_search_groups`' inputs for several trees at once: row r of a step is a reply of
    the tree its first row came from."""

    def row(tree: dict[bytes, dict[int, float]], reply: bytes) -> torch.Tensor:
        out = torch.full((VOCAB,), -math.inf)
        for token, p in tree.get(reply, {END: 1.0}).items():
            out[token] = math.log(p)
        return out

    rows = [(tree, b"") for tree in trees]
    fed: list[int] = []

    def step(parents: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        rows[:] = [
            (rows[p][0], rows[p][1] + bytes([t])) for p, t in zip(parents, tokens, strict=True)
        ]
        fed.append(len(parents))
        return torch.stack([row(tree, reply) for tree, reply in rows])

    step.fed = fed  # type: ignore[attr-defined]
    return [row(tree, b"") for tree in trees], step


def test_groups_find_what_each_search_finds_alone() -> None:
    trees = [TREE, TREE_2, TREE]
    firsts, step = _trees_first_and_step(trees)
    together = beam_search_groups(firsts, step, num_beams=2, max_new_tokens=8, eos={END})
    alone = []
    for tree in trees:
        (first,), own_step = _trees_first_and_step([tree])
        alone.append(beam_search(first, own_step, num_beams=2, max_new_tokens=8, eos={END}))
    assert together == alone
    assert [bytes(ids) for ids in together] == [b"b", b"cd", b"b"]  # scored by the mean
    # one call a step for all groups, never more rows than groups x beams
    assert max(step.fed) <= 3 * 2  # type: ignore[attr-defined]
    with pytest.raises(InputError, match="at least one prompt"):
        beam_search_groups([], step, num_beams=2, max_new_tokens=8, eos={END})


def test_cancel_and_bad_arguments() -> None:
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        _search(num_beams=2, cancel=cancel)
    with pytest.raises(InputError, match="num_beams"):
        _search(num_beams=0)
    with pytest.raises(InputError, match="max_new_tokens"):
        _search(num_beams=2, max_new_tokens=0)


def _asked(engine: Engine, text: str = "read") -> Session:
    session = engine.new_session()
    session.add_user_message(text)
    return session


def test_the_fork_reference_on_a_session(tree_engine: Engine) -> None:
    session = _asked(tree_engine)
    greedy = "".join(d.text for d in _asked(tree_engine).generate(SamplingParams()))
    assert greedy in ("ax", "ay")
    ids = beam_search(
        session.next_token_logprobs(), fork_step(session), num_beams=2, max_new_tokens=8,
        eos={END},
    )  # fmt: skip
    assert bytes(ids) == b"b"
    assert session.is_awaiting_reply  # the forks were fed, not the session


def test_session_calls_for_a_search(tree_engine: Engine) -> None:
    session = _asked(tree_engine)
    logprobs = session.next_token_logprobs()
    assert logprobs[SPECIAL["<|image_pad|>"]] == -math.inf
    assert logprobs[SPECIAL["<|video_pad|>"]] == -math.inf
    assert torch.isclose(logprobs[ord("a")].exp(), torch.tensor(0.6))
    with pytest.raises(InputError, match="outside the vocabulary"):
        session.feed_reply_token(VOCAB)
    session.feed_reply_token(ord("b"))
    assert torch.isclose(session.next_token_logprobs()[END].exp(), torch.tensor(0.9))
    idle = tree_engine.new_session()
    for call in (idle.next_token_logprobs, lambda: idle.feed_reply_token(1)):
        with pytest.raises(InputError, match="nothing to answer"):
            call()
    with pytest.raises(InputError, match="nothing to answer"):
        idle.generate(SamplingParams(num_beams=2))
    with pytest.raises(InputError, match="nothing to answer"):
        idle.beam_step()
    for bad in ({"temperature": 0.7}, {"repetition_penalty": 1.2}, {"stop": ("x",)}):
        with pytest.raises(InputError, match="beam search is greedy"):
            SamplingParams(num_beams=2, **bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="num_beams"):
        SamplingParams(num_beams=0)


# the real tiny checkpoint: the batched state (Session.generate_beam) against the forks


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path) -> Engine:
    return Engine.load(tiny_checkpoint, device="cpu")


def _beamed(session: Session, num_beams: int, max_new_tokens: int = 6, **kw: object) -> str:
    params = SamplingParams(num_beams=num_beams, max_new_tokens=max_new_tokens)
    return "".join(d.text for d in session.generate(params, **kw))  # type: ignore[arg-type]


def test_batched_beams_match_the_fork_reference(tiny: Engine) -> None:
    for prompt in ("describe", "a longer question about the picture"):
        reference = _asked(tiny, prompt)
        ids = beam_search(
            reference.next_token_logprobs(), fork_step(reference), num_beams=3,
            max_new_tokens=6, eos=tiny.reply_end_ids,
        )  # fmt: skip
        session = _asked(tiny, prompt)
        before = session.tokens_seen
        text = _beamed(session, 3)
        assert text == tiny.tokenizer.decode(ids, skip_special_tokens=True)
        stats = session.last_stats
        assert stats is not None and stats.generated_tokens == len(ids)
        assert stats.stop_reason == ("length" if len(ids) == 6 else "eos")
        # the turn is closed with the reply, and the conversation goes on
        assert not session.is_awaiting_reply and session.tokens_seen > before
        session.add_user_message("and then?")
        assert session.is_awaiting_reply


# beams that continue other beams, in another order, some twice
REORDERS = [([0, 0, 0], [40, 41, 42]), ([2, 0, 2], [43, 44, 45]), ([1, 1], [46, 47])]


def _assert_batched_matches_forks(
    session: Session, steps: list[tuple[list[int], list[int]]], tol: float
) -> None:
    """Each row of the batched step has the next-token log-probabilities of the fork fed the
    same tokens."""
    batched, forks = session.beam_step(), fork_step(session)
    for parents, tokens in steps:
        got, want = batched(parents, tokens), forks(parents, tokens)
        finite = want > -math.inf
        assert torch.equal(got > -math.inf, finite)
        torch.testing.assert_close(got[finite], want[finite], atol=tol, rtol=tol)


def test_batched_step_matches_the_forks_step_by_step(tiny: Engine) -> None:
    session = _asked(tiny)
    _assert_batched_matches_forks(session, REORDERS, 1e-4)
    assert session.is_awaiting_reply


def test_one_beam_is_greedy(tiny: Engine) -> None:
    # num_beams 1 is the streaming greedy path; the search itself with one beam gives the same
    greedy = "".join(d.text for d in _asked(tiny).generate(SamplingParams(max_new_tokens=6)))
    session = _asked(tiny)
    ids = beam_search(
        session.next_token_logprobs(), session.beam_step(), num_beams=1, max_new_tokens=6,
        eos=tiny.reply_end_ids,
    )  # fmt: skip
    assert tiny.tokenizer.decode(ids, skip_special_tokens=True) == greedy


def test_a_cancelled_beam_reply_closes_the_turn_empty(tiny: Engine) -> None:
    session = _asked(tiny)
    before = session.tokens_seen
    cancel = CancelToken()
    cancel.cancel()
    # generate's contract: a cancelled reply ends quietly, its turn closed, stats say so
    assert _beamed(session, 3, cancel=cancel) == ""
    assert session.last_stats is not None and session.last_stats.cancelled
    assert not session.is_awaiting_reply and session.tokens_seen > before
    session.add_user_message("again")
    assert isinstance(_beamed(session, 3), str)


def test_state_select_copies_rows(tiny: Engine) -> None:
    session = _asked(tiny)
    state = session._state
    picked = state.select([0, 0, 0])
    assert picked.batch == 3 and state.batch == 1
    assert (picked.position, picked.tokens_seen) == (state.position, state.tokens_seen)
    for mine, theirs in zip(picked.layers, state.layers, strict=True):
        for name, t in mine.tensors().items():
            assert torch.equal(t[2], theirs.tensors()[name][0])
            assert t.data_ptr() != theirs.tensors()[name].data_ptr()


def _shown(tiny: Engine, seed: int, size: tuple[int, int] = (84, 56)) -> Session:
    """A session asked to read a random picture of `size` (height, width)."""
    pixels = torch.Generator().manual_seed(seed)
    image = (torch.rand(*size, 3, generator=pixels) * 255).to(torch.uint8).numpy()
    session = tiny.new_session()
    session.add_user_message("read", [image])
    return session


def test_replies_searched_together_match_each_alone(tiny: Engine) -> None:
    params = SamplingParams(num_beams=3, max_new_tokens=6)
    together = beam_generate_together([_shown(tiny, s) for s in range(3)], params)
    assert together == [_beamed(_shown(tiny, s), 3) for s in range(3)]
    sessions = [_shown(tiny, 0), _shown(tiny, 1)]
    seen = [s.tokens_seen for s in sessions]
    beam_generate_together(sessions, params)
    # the sessions' own states are never fed: they still await their replies
    assert [s.tokens_seen for s in sessions] == seen and all(s.is_awaiting_reply for s in sessions)
    assert beam_generate_together([], params) == []


def test_prompts_of_another_geometry_are_searched_together(tiny: Engine) -> None:
    params = SamplingParams(num_beams=2, max_new_tokens=5)
    # other picture sizes and a text prompt: other lengths and positions, aligned to step as one
    sessions = [_shown(tiny, 0), _shown(tiny, 1, (56, 112)), _asked(tiny, "describe")]
    alone = [_shown(tiny, 0), _shown(tiny, 1, (56, 112)), _asked(tiny, "describe")]
    assert len({s.tokens_seen for s in sessions}) == 3
    assert beam_generate_together(sessions, params) == [_beamed(s, 2, 5) for s in alone]
    answered = _shown(tiny, 2)
    _beamed(answered, 2)
    with pytest.raises(InputError, match="nothing to answer"):
        beam_generate_together([_shown(tiny, 0), answered], params)


@pytest.mark.parametrize("window", [8, 64, 200])
def test_aligned_rows_step_as_their_own_sessions(tmp_path: Path, window: int) -> None:
    # window 8: every ring full and wrapping; 64: the text prompt's ring fills while the
    # pictures' are full; 200: none fills. Each row gives its own session's next logits.
    checkpoint = write_tiny_checkpoint(tmp_path, tiny_config(sliding_window=window))
    engine = Engine.load(checkpoint, device="cpu")
    sessions = [_asked(engine), _shown(engine, 0, (56, 112)), _shown(engine, 1, (112, 112))]
    # the second state holds two rows (its copy twice): each row of a state is padded alike
    states = [sessions[0]._state, sessions[1]._state.select([0, 0]), sessions[2]._state]
    rows = stack_rows(states, engine.config.text)
    assert rows.has_pads() and rows.batch == 4
    own = [s._state.clone() for s in (sessions[0], sessions[1], sessions[1], sessions[2])]
    with torch.no_grad():
        for step in range(12):
            tokens = [40 + step, 60 + step, 70 + step, 80 + step]
            ids = torch.tensor([[t] for t in tokens])
            got = engine.model(ids, rows, logits_to_keep=1)[:, -1]
            for i, state in enumerate(own):
                want = engine.model(ids[i : i + 1], state, logits_to_keep=1)[0, -1]
                torch.testing.assert_close(got[i], want, atol=1e-4, rtol=1e-4)
        # an aligned state steps one token a row at a time, and is never saved nor stacked again
        with pytest.raises(StateError, match="one token at a time"):
            engine.model(torch.tensor([[40, 41]] * 4), rows, logits_to_keep=1)
    with pytest.raises(StateError, match="never saved"):
        rows.save(tmp_path / "rows.safetensors", engine.fingerprint)
    with pytest.raises(StateError, match="do not stack again"):
        stack_rows([rows, own[0]], engine.config.text)
    # rows of one geometry stack as they are, padding included
    twice = type(rows).stack([rows, rows.select([3])])
    for mine, theirs in zip(twice.layers, rows.layers, strict=True):
        if isinstance(mine, SWAState):
            assert theirs.pads is not None and mine.pads is not None
            assert mine.pads.tolist() == [*theirs.pads.tolist(), theirs.pads[3].item()]


def test_stack_rows_refuses_full_attention_rows(tiny_teacher_checkpoint: Path) -> None:
    teacher = Engine.load(tiny_teacher_checkpoint, device="cpu")
    states = [_asked(teacher)._state, _shown(teacher, 0)._state]
    with pytest.raises(StateError, match="full-attention"):
        stack_rows(states, teacher.config.text)
    with pytest.raises(StateError, match="no states"):
        stack_rows([], teacher.config.text)


def test_state_stack_puts_rows_after_one_another(tiny: Engine) -> None:
    a, b = _shown(tiny, 0)._state, _shown(tiny, 1)._state
    both = type(a).stack([a, b.select([0, 0])])
    assert both.batch == 3 and (both.position, both.tokens_seen) == (a.position, a.tokens_seen)
    for mine, first, second in zip(both.layers, a.layers, b.layers, strict=True):
        for name, t in mine.tensors().items():
            assert torch.equal(t[0], first.tensors()[name][0])
            assert torch.equal(t[2], second.tensors()[name][0])
    with pytest.raises(StateError, match="no states"):
        type(a).stack([])


# past REORDERS: two beams, then four (more rows than the step before), then fewer again
FILLING = [
    *REORDERS,
    ([0, 1], [48, 49]),
    ([1, 0, 1, 0], [50, 51, 52, 53]),
    ([3, 3, 0], [54, 55, 56]),
]


def test_batched_step_as_the_ring_fills_and_wraps(tmp_path: Path) -> None:
    # a window a little longer than the prompt: the beams' copies take only the written slots
    # of the rings, into buffers reused from step to step, until the rings fill and wrap
    checkpoint = write_tiny_checkpoint(tmp_path, tiny_config(sliding_window=60))
    session = _asked(Engine.load(checkpoint, device="cpu"))
    assert session.tokens_seen < 60 < session.tokens_seen + len(FILLING)
    _assert_batched_matches_forks(session, FILLING, 1e-4)


def test_batched_step_on_a_full_attention_model(tiny_teacher_checkpoint: Path) -> None:
    # the Transformer layout (every layer full attention, a growing cache): the same rows
    teacher = Engine.load(tiny_teacher_checkpoint, device="cpu")
    _assert_batched_matches_forks(
        _asked(teacher), [([0, 0], [40, 41]), ([1, 0, 1], [42, 43, 44])], 1e-4
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_step_on_cuda_matches_the_forks(tiny_checkpoint: Path) -> None:
    # on CUDA the beams' rows go through the Triton decode kernels (Gated DeltaNet step,
    # sliding-window ring) with a batch of several rows
    engine = Engine.load(tiny_checkpoint, device="cuda")
    _assert_batched_matches_forks(_asked(engine), REORDERS, 2e-3)
    assert isinstance(_beamed(_asked(engine), 4), str)
