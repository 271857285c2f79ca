"""The GGUF backend on tiny GGUF files this test writes: llama.cpp really generates through the
session API, agrees with the torch engine on the same weights, and sessions persist through
llama.cpp's state save/load (a Gated DeltaNet hybrid included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp", reason="the GGUF backend needs llama-cpp-python (extra 'gguf')")
pytest.importorskip("gguf", reason="writing test GGUF files needs the gguf package (extra 'gguf')")

from engine.backends import is_gguf, load_engine  # noqa: E402
from engine.backends.gguf import GGUFEngine  # noqa: E402
from engine.engine import CancelToken, Engine  # noqa: E402
from engine.errors import Cancelled, InputError, StateError  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402
from tests.engine.backends.tiny_gguf import (  # noqa: E402
    write_qwen2_gguf,
    write_qwen25vl_mmproj,
    write_qwen35_gguf,
)

SYSTEM = "You answer briefly."
GREEDY_12 = SamplingParams(max_new_tokens=12)


@pytest.fixture(scope="module")
def qwen2_gguf(tiny_teacher_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_qwen2_gguf(tiny_teacher_checkpoint, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def qwen35_gguf(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf35") / "tiny-qwen35.gguf"
    return write_qwen35_gguf(tiny_tokenizer_dir, out)


@pytest.fixture(scope="module")
def vision_dir(qwen2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder: the qwen2 model with a tiny Qwen2.5-VL projector beside it."""
    import shutil

    folder = tmp_path_factory.mktemp("gguf_vision")
    shutil.copy(qwen2_gguf, folder / "tiny.gguf")
    write_qwen25vl_mmproj(folder / "mmproj-tiny.gguf", text_hidden=64)
    return folder


@pytest.fixture(scope="module")
def vision(vision_dir: Path) -> GGUFEngine:
    e = GGUFEngine.load(vision_dir, device="cpu", n_ctx=2048, n_threads=1)
    yield e
    e.close()


@pytest.fixture(scope="module")
def engine(qwen2_gguf: Path) -> GGUFEngine:
    e = GGUFEngine.load(qwen2_gguf, device="cpu", n_ctx=1024, n_threads=1)
    yield e
    e.close()


@pytest.fixture(scope="module")
def hybrid(qwen35_gguf: Path) -> GGUFEngine:
    e = GGUFEngine.load(qwen35_gguf, device="cpu", n_ctx=1024, n_threads=1)
    yield e
    e.close()


class _CancelAfterChecks(CancelToken):
    """A token that reads as cancelled from its (n + 1)-th check on."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.checks_left = n

    @property
    def is_cancelled(self) -> bool:
        self.checks_left -= 1
        return self.checks_left < 0


def _reply(session, params: SamplingParams = GREEDY_12) -> tuple[str, list[int]]:
    deltas = list(session.generate(params))
    return "".join(d.text for d in deltas), [i for d in deltas for i in d.token_ids]


def test_generates_what_the_torch_engine_generates(
    engine: GGUFEngine, tiny_teacher_checkpoint: Path
) -> None:
    # GIVEN the same tiny weights in the torch engine and as a qwen2 GGUF in llama.cpp
    torch_engine = Engine.load(tiny_teacher_checkpoint, device="cpu")
    replies = []
    for e in (torch_engine, engine):
        # WHEN each answers the same two turns greedily
        session = e.new_session(SYSTEM)
        session.add_user_message("What is on the screen?")
        first = _reply(session)
        session.add_user_message("And then?")
        replies.append((first, _reply(session), session.tokens_seen))
    # THEN llama.cpp produced real tokens, the same ones, and the same number of tokens was fed
    (first, _), _, _ = replies[1]
    assert len(first[1]) > 0
    assert replies[1] == replies[0]
    assert engine.info.quantization == "gguf" and engine.info.dtype == "ALL_F32"


def test_save_restore_continues_identically(engine: GGUFEngine, tmp_path: Path) -> None:
    # GIVEN a conversation with one answered turn, saved to a file
    session = engine.new_session(SYSTEM)
    session.add_user_message("Read this line.")
    _reply(session)
    session.save(tmp_path / "s.state")
    saved_seen = session.tokens_seen
    # WHEN the original and a restored copy answer the same next message
    session.add_user_message("Again?")
    expected = _reply(session)
    other = engine.new_session()  # another session takes the context in between
    other.add_user_message("unrelated")
    _reply(other)
    restored = engine.restore_session(tmp_path / "s.state")
    assert restored.tokens_seen == saved_seen
    restored.add_user_message("Again?")
    # THEN the continuation is identical, without re-reading the conversation
    assert _reply(restored) == expected
    assert other.state_nbytes > 0 and restored.state_nbytes > 0
    assert restored.tokens_fed_total < session.tokens_fed_total


def test_fork_and_switching_sessions(engine: GGUFEngine) -> None:
    a = engine.new_session(SYSTEM)
    a.add_user_message("First question")
    _reply(a)
    b = a.fork()
    a.add_user_message("Question for a")
    reply_a = _reply(a)
    b.add_user_message("Question for a")  # the same message on the fork
    assert _reply(b) == reply_a
    # interleaving two sessions on one context keeps each its own
    fresh = engine.new_session(SYSTEM)
    fresh.add_user_message("First question")
    b2 = b.fork()
    b2.add_user_message("x")
    fresh_reply = _reply(fresh)
    again = engine.new_session(SYSTEM)
    again.add_user_message("First question")
    assert _reply(again) == fresh_reply
    assert _reply(b2)[1]


def test_cancelled_prefill_leaves_session_unchanged(engine: GGUFEngine) -> None:
    session = engine.new_session(SYSTEM)
    session.add_user_message("hello")
    _reply(session)
    seen = session.tokens_seen
    # WHEN a message of two batches is cancelled after the first, or is longer than the context
    with pytest.raises(Cancelled):
        session.add_user_message("x " * 400, cancel=_CancelAfterChecks(1))
    with pytest.raises(InputError, match="context"):
        session.add_user_message("x " * 800)
    # THEN the session is as before and continues as a twin that never saw them
    assert session.tokens_seen == seen and not session.is_awaiting_reply
    twin = engine.new_session(SYSTEM)
    twin.add_user_message("hello")
    _reply(twin)
    session.add_user_message("next")
    twin.add_user_message("next")
    assert _reply(session) == _reply(twin)


def test_state_of_another_model_and_damage(
    engine: GGUFEngine, hybrid: GGUFEngine, tmp_path: Path
) -> None:
    session = hybrid.new_session()
    session.add_user_message("hi")
    _reply(session)
    session.save(tmp_path / "h.state")
    with pytest.raises(StateError, match="another model"):
        engine.restore_session(tmp_path / "h.state")
    raw = bytearray((tmp_path / "h.state").read_bytes())
    raw[-10] ^= 0xFF
    (tmp_path / "bad.state").write_bytes(bytes(raw))
    with pytest.raises(StateError, match="damaged"):
        hybrid.restore_session(tmp_path / "bad.state")
    with pytest.raises(StateError):
        session.add_user_message("waiting")
        session.save(tmp_path / "x.state")


def test_text_only_model_refuses_images(engine: GGUFEngine) -> None:
    session = engine.new_session()
    with pytest.raises(InputError, match="no vision projector"):
        session.add_user_message("what is this?", [np.zeros((28, 28, 3), np.uint8)])
    assert session.tokens_seen == 0


def test_hybrid_gated_deltanet_generates_and_restores(hybrid: GGUFEngine, tmp_path: Path) -> None:
    # GIVEN a Qwen3.5-architecture model (Gated DeltaNet + attention), random weights
    import llama_cpp

    assert llama_cpp.llama_model_is_hybrid(hybrid._llm.model)
    session = hybrid.new_session(SYSTEM)
    session.add_user_message("Describe the picture.")
    first = _reply(session)
    assert first[1], "llama.cpp generated no token"
    session.save(tmp_path / "hybrid.state")
    session.add_user_message("More?")
    expected = _reply(session)
    # WHEN the saved recurrent state is restored after other work on the context
    other = hybrid.new_session()
    other.add_user_message("noise " * 20)
    _reply(other)
    restored = hybrid.restore_session(tmp_path / "hybrid.state")
    restored.add_user_message("More?")
    # THEN it continues exactly as the uninterrupted session did
    assert _reply(restored) == expected


def test_load_engine_picks_the_backend(qwen2_gguf: Path, tiny_checkpoint: Path) -> None:
    assert is_gguf(qwen2_gguf) and is_gguf(qwen2_gguf.parent)
    assert not is_gguf(tiny_checkpoint)
    e = load_engine(qwen2_gguf, device="cpu")
    assert isinstance(e, GGUFEngine)
    e.close()
    assert isinstance(load_engine(tiny_checkpoint, device="cpu"), Engine)
    with pytest.raises(InputError, match="GGUF"):
        load_engine(qwen2_gguf, quant="int8")


def test_cli_generate_runs_a_gguf(qwen2_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.__main__ import main

    args = ["generate", "hi", "--model", str(qwen2_gguf), "--max-new-tokens", "3"]
    assert main([*args, "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "ALL_F32), gguf weights" in err and "3 generated" in err


def _image(seed: int, h: int = 56, w: int = 84) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def test_images_go_through_the_projector(vision: GGUFEngine, tmp_path: Path) -> None:
    # GIVEN a model with its projector: the same question about two different images
    assert vision.has_vision
    text_only = vision.new_session()
    text_only.add_user_message("what is this?")
    a, b = vision.new_session(), vision.new_session()
    a.add_user_message("what is this?", [_image(0)])
    b.add_user_message("what is this?", [_image(1)])
    # THEN the image's tokens are in the state, and what the model saw differs per image
    assert a.tokens_seen > text_only.tokens_seen
    assert not np.allclose(a._next_logits, b._next_logits)
    first = _reply(a)
    # WHEN a state holding an image is saved and restored after other work on the context
    a.save(tmp_path / "img.state")
    a.add_user_message("and now?")
    expected = _reply(a)
    _reply(b)
    restored = vision.restore_session(tmp_path / "img.state")
    restored.add_user_message("and now?")
    # THEN it continues as the uninterrupted session did
    assert first[1] and _reply(restored) == expected


def test_document_pages_and_frames(vision: GGUFEngine) -> None:
    session = vision.new_session()
    calls = []
    fed = session.feed_document(
        [_image(2), _image(3)], progress=lambda done, total: calls.append((done, total))
    )
    assert fed > 0 and calls == [(0, 2), (1, 2), (2, 2)]
    seen = session.tokens_seen
    assert session.feed_frames([_image(4), _image(5)]) > 0
    assert session.tokens_seen > seen
    session.add_user_message("What was on page 2?")
    assert _reply(session)[1]


def test_cli_ocr_reads_with_a_gguf_model(
    vision_dir: Path, vision: GGUFEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from engine.ocr import ocr_images, run_cli

    # GIVEN two screenshots WHEN `infinitevl ocr` reads them with a GGUF model and its projector
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"shot{i}.png")
        Image.fromarray(_image(i)).save(paths[-1])
    code = run_cli([*map(str, paths), "--model", str(vision_dir), "--max-new-tokens", "4"])
    # THEN it succeeds with one block per image: what the GGUF engine reads from each (greedy)
    expected = ocr_images(vision, paths, max_new_tokens=4)
    assert code == 0
    assert (
        capsys.readouterr().out
        == "\n".join(("\n" if i else "") + t for i, t in enumerate(expected)) + "\n"
    )


def test_beam_search_is_refused_with_a_clear_error(engine: GGUFEngine) -> None:
    # llama.cpp's one context cannot hold the beams: a GGUF model reads greedily only, and
    # the question stays waiting for a reply that can be generated
    session = engine.new_session()
    session.add_user_message("Read this line.")
    with pytest.raises(InputError, match="beam search"):
        session.generate(SamplingParams(num_beams=4, max_new_tokens=12))
    assert session.is_awaiting_reply
    assert len(_reply(session)[1]) > 0
