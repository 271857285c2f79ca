"""Session loop logic on a FakeModel: streaming, stops, cancel, fork, feeds, the chat format.

The FakeModel spells a scripted reply after every ``<|im_start|>assistant\\n``; its state records
every token it was fed, so the conversation the model saw is checked token for token.
"""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.engine import CancelToken, Engine, GenerationStats, Session
from engine.errors import Cancelled, InputError, StateError
from engine.sampling import SamplingParams
from engine.tokenizer import chat_prompt
from tests.engine.fakes import SPECIAL, ByteTokenizer, fake_engine

REPLY = "Hello, world!"


def _history(session: Session) -> str:
    return ByteTokenizer().decode(session._state.history)


def _reply(session: Session, params: SamplingParams | None = None) -> str:
    params = params or SamplingParams()
    return "".join(d.text for d in session.generate(params))


def _image(h: int = 56, w: int = 84) -> np.ndarray:
    return np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def engine() -> Engine:
    return fake_engine(REPLY.encode())


def test_generate_streams_reply_and_stats(engine: Engine) -> None:
    session = engine.new_session()
    session.add_user_message("Hi there")
    deltas = list(session.generate())
    assert "".join(d.text for d in deltas) == REPLY
    assert [i for d in deltas for i in d.token_ids] == list(REPLY.encode())
    stats = session.last_stats
    assert isinstance(stats, GenerationStats)
    assert (stats.stop_reason, stats.generated_tokens, stats.cancelled) == (
        "eos",
        len(REPLY),
        False,
    )
    prompt = chat_prompt([{"role": "user", "content": [{"type": "text", "text": "Hi there"}]}])
    assert stats.prompt_tokens == len(ByteTokenizer().encode(prompt))
    assert stats.prefill_seconds >= 0 and stats.decode_seconds >= 0


def test_generate_conversation_is_the_published_template(engine: Engine) -> None:
    session = engine.new_session()
    session.add_user_message("first")
    _reply(session)
    session.add_user_message("second", images=[_image()])
    _reply(session)
    text = lambda t: {"type": "text", "text": t}  # noqa: E731
    expected = chat_prompt(
        [
            {"role": "user", "content": [text("first")]},
            {"role": "assistant", "content": REPLY},
            {"role": "user", "content": [{"type": "image"}, text("second")]},
            {"role": "assistant", "content": REPLY},
        ],
        add_generation_prompt=False,
    )
    # 56x84 px -> 2x3 merged patches -> 6 image pads
    expected = expected.replace("<|image_pad|>", "<|image_pad|>" * 6)
    assert _history(session) == expected
    assert session.tokens_seen == len(ByteTokenizer().encode(expected))


def test_new_session_system_prompt(engine: Engine) -> None:
    session = engine.new_session(system_prompt="Be terse.")
    session.add_user_message("q")
    assert _history(session).startswith(
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nq"
    )


def test_generate_greedy_is_deterministic(engine: Engine) -> None:
    runs = []
    for _ in range(2):
        session = engine.new_session()
        session.add_user_message("x")
        runs.append(_reply(session))
    assert runs == [REPLY, REPLY]


def test_generate_max_new_tokens(engine: Engine) -> None:
    session = engine.new_session()
    session.add_user_message("x")
    assert _reply(session, SamplingParams(max_new_tokens=4)) == REPLY[:4]
    assert session.last_stats.stop_reason == "length"
    assert session.last_stats.generated_tokens == 4
    # the turn is closed after what the model said
    assert _history(session).endswith(f"assistant\n{REPLY[:4]}<|im_end|>\n")


@pytest.mark.parametrize(
    ("stop", "text", "reason"),
    [
        ((", w",), "Hello", "stop"),
        (("zz", "o, "), "Hell", "stop"),
        (("world!x",), REPLY, "eos"),
        (("!",), "Hello, world", "stop"),
    ],
    ids=["multi-token", "earliest-of-two", "prefix-never-completed", "last-char"],
)
def test_generate_stop_strings(
    engine: Engine, stop: tuple[str, ...], text: str, reason: str
) -> None:
    session = engine.new_session()
    session.add_user_message("x")
    assert _reply(session, SamplingParams(stop=stop)) == text
    assert session.last_stats.stop_reason == reason
    # the state is closed after the token that completed the stop string
    assert _history(session).endswith("<|im_end|>\n")


def test_generate_cancel_after_third_delta_then_continue(engine: Engine) -> None:
    session = engine.new_session()
    session.add_user_message("x")
    cancel = CancelToken()
    got = []
    for delta in session.generate(cancel=cancel):
        got.append(delta.text)
        if len(got) == 3:
            cancel.cancel()
    assert got == list(REPLY[:3])
    assert cancel.is_cancelled
    assert session.last_stats.stop_reason == "cancelled" and session.last_stats.cancelled
    assert _history(session).endswith(f"assistant\n{REPLY[:3]}<|im_end|>\n")
    # the conversation goes on, well formed
    session.add_user_message("again")
    assert _reply(session) == REPLY
    assert _history(session).endswith(
        f"user\nagain<|im_end|>\n<|im_start|>assistant\n{REPLY}<|im_end|>\n"
    )


def test_generate_closed_early_counts_as_cancelled(engine: Engine) -> None:
    session = engine.new_session()
    session.add_user_message("x")
    stream: Iterator = session.generate()
    next(stream)
    next(stream)
    stream.close()
    assert session.last_stats.stop_reason == "cancelled"
    assert _history(session).endswith(f"assistant\n{REPLY[:2]}<|im_end|>\n")


def test_generate_cancelled_before_start(engine: Engine) -> None:
    session = engine.new_session()
    session.add_user_message("x")
    cancel = CancelToken()
    cancel.cancel()
    assert list(session.generate(cancel=cancel)) == []
    assert session.last_stats.stop_reason == "cancelled"
    assert session.last_stats.generated_tokens == 0


def test_generate_needs_a_user_message(engine: Engine) -> None:
    session = engine.new_session()
    with pytest.raises(InputError, match="add_user_message"):
        session.generate()
    session.add_user_message("x")
    _reply(session)
    with pytest.raises(InputError, match="add_user_message"):
        session.generate()


def test_add_user_message_cancelled_leaves_session_unchanged(engine: Engine) -> None:
    session = engine.new_session()
    session.add_user_message("x")
    _reply(session)
    before = list(session._state.history)
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        session.add_user_message("y", cancel=cancel)
    assert session._state.history == before
    assert not session.is_awaiting_reply


def test_add_user_message_failure_mid_prefill_rolls_back(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = engine.new_session()
    session.add_user_message("x")
    _reply(session)
    before = list(session._state.history)
    engine.prefill_chunk_tokens = 8
    real = engine.model.forward
    calls = iter(range(100))

    def flaky(*args: object, **kwargs: object) -> torch.Tensor:
        if next(calls) == 2:
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", flaky)
    with pytest.raises(RuntimeError, match="out of memory"):
        session.add_user_message("a message long enough for several chunks")
    assert session._state.history == before and not session.is_awaiting_reply
    session.add_user_message("y")
    assert _reply(session) == REPLY


def test_add_user_message_twice_closes_the_empty_reply(engine: Engine) -> None:
    session = engine.new_session()
    session.add_user_message("a")
    session.add_user_message("b")
    assert "<|im_start|>assistant\n<|im_end|>\n<|im_start|>user\nb<|im_end|>" in _history(session)


def test_prefill_chunks_never_split_an_image(engine: Engine) -> None:
    engine.prefill_chunk_tokens = 16
    session = engine.new_session()
    # 112x112 px -> 16 pads + start/end: a block of 18 tokens, over the chunk size
    session.add_user_message("describe " * 20, images=[_image(112, 112), _image(56, 56)])
    calls = engine.model.calls
    assert engine.model.images_seen == 2
    assert sum(calls) == session.tokens_seen
    assert max(calls) == 18 and sorted(calls).count(18) == 1
    assert all(c <= 16 for c in calls if c != 18)


def test_long_prompt_beyond_window(engine: Engine) -> None:
    # tiny_config's window is 8 tokens; the session's state has no length limit
    session = engine.new_session()
    session.add_user_message("long " * 3000)
    assert session.tokens_seen > 15000
    assert max(engine.model.calls) <= engine.prefill_chunk_tokens
    assert _reply(session) == REPLY


def test_fork_is_independent(engine: Engine) -> None:
    session = engine.new_session()
    session.add_user_message("main")
    _reply(session)
    before = list(session._state.history)
    side = session.fork()
    side.add_user_message("side question")
    assert _reply(side) == REPLY
    assert session._state.history == before
    assert side.tokens_fed_total > 0 and side.tokens_seen > session.tokens_seen
    session.add_user_message("main again")
    assert _reply(session) == REPLY
    assert "side question" not in _history(session)


def test_fork_while_awaiting_reply(engine: Engine) -> None:
    session = engine.new_session()
    session.add_user_message("q")
    side = session.fork()
    assert _reply(side) == REPLY
    assert _reply(session) == REPLY


def test_feed_document_progress_and_cancel(engine: Engine) -> None:
    session = engine.new_session()
    calls: list[tuple[int, int | None]] = []
    fed = session.feed_document(
        [_image(), _image(), _image()], progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    history = _history(session)
    assert fed == session.tokens_seen == session.tokens_fed_total
    assert history.count("<|vision_start|>") == 3
    assert "Page 1: <|vision_start|>" in history and "Page 3: <|vision_start|>" in history
    assert history.endswith("<|vision_end|>\n<|im_end|>\n")

    cancel = CancelToken()
    calls.clear()

    def progress(done: int, total: int | None) -> None:
        calls.append((done, total))
        if done == 2:
            cancel.cancel()

    pages = (p for p in [_image(), _image(), _image(), _image()])  # no length: total None
    fed2 = session.feed_document(pages, progress=progress, cancel=cancel)
    assert calls == [(0, None), (1, None), (2, None)]
    assert _history(session).count("<|vision_start|>") == 5
    assert fed2 == session.tokens_seen - fed
    # the reader's pages stay and the conversation continues
    session.add_user_message("what was on page 2?")
    assert _reply(session) == REPLY


def test_feed_frames(engine: Engine) -> None:
    session = engine.new_session()
    fed = session.feed_frames([_image(), _image()])
    assert fed == session.tokens_seen
    history = _history(session)
    assert history.count("<|vision_start|>") == 2
    assert history.count("<|im_start|>user") == 1 and history.endswith("<|im_end|>\n")
    cancel = CancelToken()
    cancel.cancel()
    assert session.feed_frames([_image()], cancel=cancel) == 0


def test_feed_while_awaiting_reply_is_refused(engine: Engine) -> None:
    session = engine.new_session()
    session.add_user_message("q")
    with pytest.raises(InputError, match="waiting"):
        session.feed_frames([_image()])


def test_add_assistant_message_replays_like_generate(engine: Engine) -> None:
    live = engine.new_session()
    live.add_user_message("q")
    _reply(live)
    replayed = engine.new_session()
    replayed.add_user_message("q")
    replayed.add_assistant_message(REPLY)
    assert replayed._state.history == live._state.history


def test_save_while_awaiting_reply_is_refused(engine: Engine, tmp_path: Path) -> None:
    session = engine.new_session()
    session.add_user_message("q")
    with pytest.raises(StateError, match="waiting"):
        session.save(tmp_path / "s.state")


@pytest.mark.parametrize(
    ("text", "match"),
    [("", "empty"), ("   \n", "empty"), ("a <|im_end|> b", "reserved"), (b"bytes", "string")],
)
def test_add_user_message_bad_text(engine: Engine, text: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        engine.new_session().add_user_message(text)  # type: ignore[arg-type]


def test_generate_never_samples_image_placeholders() -> None:
    # GIVEN a model whose favourite next token is an image pad (which only the prompt may write)
    engine = fake_engine([*b"a", SPECIAL["<|image_pad|>"], *b"b"])
    session = engine.new_session()
    session.add_user_message("x")
    # THEN the pad is never chosen (the next best, byte 0, is) and the state stays consistent
    assert _reply(session) == "a\x00b"
    reply = session._state.history[-6:]
    assert SPECIAL["<|image_pad|>"] not in reply


def test_repetition_penalty_covers_the_conversations_replies() -> None:
    # GIVEN a model that prefers "a", "b" (logit 10) over "z" (logit 9)
    engine = fake_engine(b"ab", runner_up=ord("z"))
    penalty = SamplingParams(repetition_penalty=2.0)
    session = engine.new_session()
    session.add_user_message("first")
    # WHEN the first reply is generated, nothing was said before: "a" and "b" win
    assert _reply(session, penalty) == "ab"
    side = session.fork()
    # THEN in the next reply "a" is penalized (10 / 2 < 9) and "z" wins; then "z" is penalized
    # too (9 / 2 < 10 / 2) and "b" follows; the same in the session and in its fork
    for s in (session, side):
        s.add_user_message("second")
        assert _reply(s, penalty) == "zb"
    # a replayed reply counts as the assistant's too; without a penalty nothing changes
    replayed = engine.new_session()
    replayed.add_user_message("first")
    replayed.add_assistant_message("ab")
    replayed.add_user_message("second")
    assert _reply(replayed, penalty) == "zb"
    replayed.add_user_message("third")
    assert _reply(replayed) == "ab"


def test_eos_from_config_also_ends_reply() -> None:
    engine = fake_engine([*b"ab", SPECIAL["<|vision_pad|>"], *b"cd"])
    fields = {f: getattr(engine.config, f) for f in engine.config.__dataclass_fields__}
    engine.config = engine.config.__class__(
        **{**fields, "eos_token_id": (SPECIAL["<|vision_pad|>"],)}
    )
    session = engine.new_session()
    session.add_user_message("x")
    assert _reply(session) == "ab"
    assert session.last_stats.stop_reason == "eos"
    # the config's end token is replaced by the template's turn end
    assert _history(session).endswith("assistant\nab<|im_end|>\n")


def test_endoftext_ends_reply_and_other_specials_are_not_shown() -> None:
    # as Qwen2.5-VL's generation_config: <|im_end|> and <|endoftext|> both end a reply
    engine = fake_engine(
        [*b"a", SPECIAL["<|vision_start|>"], *b"b", SPECIAL["<|endoftext|>"], *b"c"]
    )
    session = engine.new_session()
    session.add_user_message("x")
    assert _reply(session) == "ab"
    assert session.last_stats.stop_reason == "eos"
    assert _history(session).endswith("assistant\na<|vision_start|>b<|im_end|>\n")


# the real tiny checkpoint (random weights, tiny_config: window 8): loading, decoding, state files


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path) -> Engine:
    return Engine.load(tiny_checkpoint, device="cpu")


def _run(
    session: Session, text: str, params: SamplingParams | None = None
) -> tuple[str, list[int]]:
    session.add_user_message(text)
    deltas = list(session.generate(params or SamplingParams(max_new_tokens=24)))
    return "".join(d.text for d in deltas), [i for d in deltas for i in d.token_ids]


def test_tiny_load_info(tiny: Engine, tiny_checkpoint: Path) -> None:
    info = tiny.info
    assert (info.path, info.device, info.dtype) == (str(tiny_checkpoint), "cpu", "float32")
    assert info.num_parameters == sum(p.numel() for p in tiny.model.parameters())
    assert info.state_nbytes == tiny.new_session().state_nbytes > 0
    assert not info.is_embedded_default and info.slow_warning is None


def test_tiny_stream_concatenates_to_full_decode(tiny: Engine) -> None:
    text, ids = _run(tiny.new_session(), "Describe the weather.")
    assert ids and text == tiny.tokenizer.decode(ids, skip_special_tokens=True)


def test_tiny_greedy_is_deterministic(tiny: Engine) -> None:
    assert _run(tiny.new_session(), "hello") == _run(tiny.new_session(), "hello")


def test_tiny_seeded_sampling_reproducible(tiny: Engine) -> None:
    # the random tiny model is sure of itself (p > 0.999 on one token): a high temperature
    # makes the seeds matter
    params = SamplingParams(temperature=20.0, top_p=0.95, top_k=50, seed=7, max_new_tokens=16)
    a = _run(tiny.new_session(), "hello", params)
    assert a == _run(tiny.new_session(), "hello", params)
    other = SamplingParams(temperature=20.0, top_p=0.95, top_k=50, seed=8, max_new_tokens=16)
    assert a != _run(tiny.new_session(), "hello", other)


def test_tiny_image_and_long_prompt(tiny: Engine) -> None:
    session = tiny.new_session()
    session.add_user_message("word " * 40, images=[_image(56, 84)])  # 5x the window and more
    nbytes = session.state_nbytes
    assert session.tokens_seen > 5 * tiny.config.text.sliding_window
    list(session.generate(SamplingParams(max_new_tokens=4)))
    assert session.last_stats.stop_reason in ("eos", "length")
    assert session.state_nbytes == nbytes


def test_tiny_cancel_after_third_delta_then_next_turn(tiny: Engine) -> None:
    session = tiny.new_session()
    session.add_user_message("tell me a long story")
    cancel = CancelToken()
    deltas = []
    for delta in session.generate(SamplingParams(max_new_tokens=64), cancel):
        deltas.append(delta)
        if len(deltas) == 3:
            cancel.cancel()
    assert len(deltas) == 3 and session.last_stats.stop_reason == "cancelled"
    seen = session.tokens_seen
    text, _ = _run(session, "and then?")
    assert session.tokens_seen > seen and session.last_stats.stop_reason in ("eos", "length")


def test_tiny_document_frames_then_question(tiny: Engine) -> None:
    session = tiny.new_session()
    done: list[int] = []
    fed = session.feed_document(
        [_image(56, 56), _image(84, 56), _image(56, 112)], progress=lambda d, t: done.append(d)
    )
    assert done == [0, 1, 2, 3] and fed == session.tokens_seen
    nbytes = session.state_nbytes
    fed_frames = session.feed_frames([_image(56, 56), _image(56, 56)])
    assert session.tokens_seen == fed + fed_frames
    text, ids = _run(session, "What was on page 2?")
    assert session.last_stats.stop_reason in ("eos", "length")
    assert session.state_nbytes == nbytes


def test_tiny_save_restore_continues_identically(tiny: Engine, tmp_path: Path) -> None:
    session = tiny.new_session()
    _run(session, "first question")
    session.save(tmp_path / "conv.state")
    seen_at_save = session.tokens_seen
    uninterrupted = _run(session, "second question")

    restored = tiny.restore_session(tmp_path / "conv.state")
    assert restored.tokens_seen == seen_at_save
    assert _run(restored, "second question") == uninterrupted
    # nothing of the first turn was fed again
    turn = len(
        tiny.tokenizer.encode(
            "<|im_start|>user\nsecond question<|im_end|>\n<|im_start|>assistant\n"
        )
    )
    assert restored.last_stats.prompt_tokens == turn
    assert restored.tokens_fed_total == turn + len(tiny.tokenizer.encode("<|im_end|>\n")) + (
        restored.last_stats.stop_reason != "eos"
    )


def test_tiny_fork_leaves_main_stream_untouched(tiny: Engine) -> None:
    plain = tiny.new_session()
    _run(plain, "look at this")
    expected = _run(plain, "and now?")

    main = tiny.new_session()
    _run(main, "look at this")
    side = main.fork()
    _run(side, "a side question")
    assert _run(main, "and now?") == expected


def test_tiny_restore_rejects_other_model_and_damage(
    tiny: Engine, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from engine.testing import write_tiny_checkpoint

    session = tiny.new_session()
    _run(session, "hi")
    path = tmp_path / "conv.state"
    session.save(path)
    other = Engine.load(write_tiny_checkpoint(tmp_path_factory.mktemp("other"), seed=1))
    with pytest.raises(StateError, match="belongs to model"):
        other.restore_session(path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "bad.state").write_bytes(bytes(data))
    with pytest.raises(StateError):
        tiny.restore_session(tmp_path / "bad.state")
    with pytest.raises(StateError):
        tiny.restore_session(tmp_path / "missing.state")


def test_load_bad_arguments(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from engine.errors import CheckpointError, EngineError

    with pytest.raises(InputError, match="dtype"):
        Engine.load(tiny_checkpoint, dtype="int8")
    with pytest.raises(InputError, match="device"):
        Engine.load(tiny_checkpoint, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA is not available"):
            Engine.load(tiny_checkpoint, device="cuda")
    with pytest.raises(CheckpointError):
        Engine.load(tmp_path / "no-such-model")


def test_load_embedded_default(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import default_model
    from engine.errors import EngineError

    absent = tiny_checkpoint.parent / "absent"
    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIR", absent)
    monkeypatch.setattr(default_model, "installed_dirs", lambda: [absent / "share"])
    with pytest.raises(EngineError, match="no embedded default model"):
        Engine.load()
    # a wheel's copy (under <prefix>/share) is found when none is beside the packages
    monkeypatch.setattr(default_model, "installed_dirs", lambda: [absent, tiny_checkpoint])
    assert Engine.load().info.is_embedded_default
    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIR", tiny_checkpoint)
    monkeypatch.setattr(default_model, "installed_dirs", lambda: [])
    assert Engine.load().info.is_embedded_default


def test_slow_warning_for_large_model_on_cpu() -> None:
    from engine.engine import slow_warning

    text = slow_warning("InfiniteVL", 4_408_381_536, torch.device("cpu"))
    assert text is not None and "4.4 billion" in text and "CPU" in text
    assert slow_warning("InfiniteVL", 4_408_381_536, torch.device("cuda")) is None
    assert slow_warning("tiny", 258_088, torch.device("cpu")) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_session_on_cuda_matches_cpu(tiny: Engine, tiny_checkpoint: Path, tmp_path: Path) -> None:
    cuda = Engine.load(tiny_checkpoint, device="cuda")
    assert cuda.info.device.startswith("cuda")
    image = _image(56, 84)
    runs = {}
    for name, eng in (("cpu", tiny), ("cuda", cuda)):
        session = eng.new_session()
        session.add_user_message("Describe it.", images=[image])
        first = [
            i for d in session.generate(SamplingParams(max_new_tokens=16)) for i in d.token_ids
        ]
        runs[name] = (first, _run(session, "more", SamplingParams(max_new_tokens=8))[1])
    assert runs["cuda"] == runs["cpu"]
    # seeded sampling repeats on the device; a state saved on CUDA restores on the CPU
    params = SamplingParams(temperature=20.0, top_k=50, seed=3, max_new_tokens=12)
    assert _run(cuda.new_session(), "hi", params) == _run(cuda.new_session(), "hi", params)
    session = cuda.new_session()
    _run(session, "hello")
    session.save(tmp_path / "cuda.state")
    on_cpu = tiny.restore_session(tmp_path / "cuda.state")
    assert _run(on_cpu, "next") == _run(session, "next")


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.text(alphabet="abc\n", max_size=4), max_size=12),
    stops=st.lists(st.text(alphabet="abc\n", min_size=1, max_size=3), max_size=3),
)
@example(pieces=["bc", "c"], stops=["c", "bcc"])  # "c" completes before "bcc" does
@example(pieces=["bcc"], stops=["c", "bcc"])  # the same text in one piece: the same answer
def test_stop_matcher_emits_exactly_the_text_before_the_first_stop(
    pieces: list[str], stops: list[str]
) -> None:
    from engine.engine import _StopMatcher

    matcher = _StopMatcher(tuple(stops))
    emitted, hit = [], False
    for piece in pieces:
        text, hit = matcher.push(piece)
        emitted.append(text)
        if hit:
            break
    if not hit:
        text, hit = matcher.push("", final=True)
        emitted.append(text)
    # the definition, one character at a time: the first character that completes a stop ends
    # the text before that stop (the longest one, if it completes several)
    full = "".join(pieces)
    cut = next(
        (
            min(end - len(s) for s in stops if full[:end].endswith(s))
            for end in range(1, len(full) + 1)
            if any(full[:end].endswith(s) for s in stops)
        ),
        None,
    )
    assert "".join(emitted) == (full if cut is None else full[:cut])
    assert hit == (cut is not None)


def test_tiny_first_turn_equals_transformers_processing(
    tiny: Engine, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the ids and pixels a session feeds == transformers' rendering of the published jinja
    # template, its Qwen2-VL image processor, and Qwen2.5-VL's processor's pad expansion
    import json

    from transformers import Qwen2TokenizerFast, Qwen2VLImageProcessor

    from engine.tokenizer import QWEN2_VL_CHAT_TEMPLATE

    hf_tok = Qwen2TokenizerFast(
        tokenizer_file=str(tiny_checkpoint / "tokenizer.json"), vocab_file=None, merges_file=None
    )
    raw = json.loads((tiny_checkpoint / "preprocessor_config.json").read_text())
    raw = {k: v for k, v in raw.items() if k not in ("image_processor_type", "processor_class")}
    images = [_image(60, 90), _image(120, 40)]
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "image"},
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]
    text = hf_tok.apply_chat_template(
        messages, chat_template=QWEN2_VL_CHAT_TEMPLATE, add_generation_prompt=True, tokenize=False
    )
    pixels = Qwen2VLImageProcessor(**raw)(images=images, return_tensors="pt")
    for grid in pixels["image_grid_thw"]:
        text = text.replace("<|image_pad|>", "<|placeholder|>" * int(grid.prod() // 4), 1)
    expected_ids = hf_tok(text.replace("<|placeholder|>", "<|image_pad|>"))["input_ids"]

    fed: list[tuple[list[int], torch.Tensor | None, torch.Tensor | None]] = []
    real = tiny.model.forward

    def recording(input_ids: torch.Tensor, state: object, **kwargs: object) -> torch.Tensor:
        fed.append(
            (input_ids[0].tolist(), kwargs.get("pixel_values"), kwargs.get("image_grid_thw"))
        )
        return real(input_ids, state, **kwargs)

    monkeypatch.setattr(tiny.model, "forward", recording)
    tiny.new_session().add_user_message("What is this?", images)
    assert [i for ids, _, _ in fed for i in ids] == expected_ids
    assert torch.equal(torch.cat([g for _, _, g in fed if g is not None]), pixels["image_grid_thw"])
    assert torch.allclose(
        torch.cat([p for _, p, _ in fed if p is not None]), pixels["pixel_values"]
    )


def test_small_bfloat16_checkpoint_runs_in_float32_on_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine import engine as engine_module
    from engine.testing import write_tiny_checkpoint

    # GIVEN a small checkpoint stored in bfloat16 (as the embedded model is), on a CPU where
    # float32 is the pinned choice (tests/engine/test_cpu_dtype.py times the two)
    monkeypatch.setenv("INFINITEVL_CPU_DTYPE", "float32")
    ckpt = write_tiny_checkpoint(tmp_path / "bf16", dtype=torch.bfloat16)
    # WHEN it loads on the CPU with no dtype asked THEN it runs in float32
    assert Engine.load(ckpt, device="cpu").info.dtype == "float32"
    # an explicit dtype is kept
    assert Engine.load(ckpt, device="cpu", dtype="bfloat16").info.dtype == "bfloat16"
    # a checkpoint above the limit runs as stored
    monkeypatch.setattr(engine_module, "CPU_FLOAT32_MAX_STORED_BYTES", 1024)
    assert Engine.load(ckpt, device="cpu").info.dtype == "bfloat16"
