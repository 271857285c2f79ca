"""engine.quant on the tiny checkpoint: quantize -> save -> load gives identical logits, quantized
models generate through the session API, and their next-token distributions stay near float."""

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from engine import quant
from engine.__main__ import main
from engine.engine import Engine
from engine.errors import CheckpointError, EngineError
from engine.loader import load_model, save_checkpoint, slow_quant_warning
from engine.sampling import SamplingParams
from kernels._testing import rel_rms

PROMPT_IDS = torch.randint(0, 240, (1, 40), generator=torch.Generator().manual_seed(0))
# relative RMS error of the tiny model's logits over PROMPT_IDS against float32 (measured
# int8 0.004, int8-dynamic 0.02, int4 0.05, nf4 0.07)
LOGIT_BOUNDS = {"int8": 0.01, "int8-dynamic": 0.04, "int4": 0.1, "nf4": 0.12}
# mean next-token KL (nats) against float32 over a prompt with resources/sample.png, where the tiny
# model's distributions are not one-hot (measured 1.4e-4, 2.2e-3, 5.0e-2, 3.8e-2)
KL_BOUNDS = {"int8": 1e-3, "int8-dynamic": 1e-2, "int4": 0.15, "nf4": 0.15}
SAMPLE = Path(__file__).resolve().parents[2] / "resources" / "sample.png"


def _logits(model: nn.Module) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(PROMPT_IDS.to(device), model.new_state()).cpu()


def _kl(ref: torch.Tensor, out: torch.Tensor) -> float:
    p_log, q_log = ref.log_softmax(-1), out.log_softmax(-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1).mean().item()


@pytest.mark.parametrize("method", quant.METHODS)
def test_quantize_save_load_round_trips(tiny_checkpoint: Path, tmp_path: Path, method: str) -> None:
    # GIVEN the tiny model quantized in memory
    model, _ = load_model(tiny_checkpoint)
    config = quant.quantize_(model, method=method)
    save_checkpoint(model, tmp_path / method, tokenizer_dir=tiny_checkpoint)
    # WHEN the written checkpoint loads
    loaded, _ = load_model(tmp_path / method)
    # THEN the same layers are quantized and the logits are identical
    names = {n for n, m in loaded.named_modules() if isinstance(m, quant.QuantLinear)}
    assert names == set(config.modules) and len(names) > 20
    assert loaded.quantization == config
    assert torch.equal(_logits(model), _logits(loaded))


def _image_prompt_logits(model: nn.Module) -> torch.Tensor:
    from PIL import Image

    from engine.preprocess import image_token_count, preprocess_images

    cfg = model.config
    pixels, grid = preprocess_images([Image.open(SAMPLE).convert("RGB").resize((112, 84))])
    pads = [cfg.image_token_id] * image_token_count(grid[0], cfg.vision.spatial_merge_size)
    text = PROMPT_IDS[0].tolist()
    ids = text[:20] + [cfg.vision_start_token_id, *pads, cfg.vision_end_token_id] + text[20:]
    with torch.no_grad():
        return model(
            torch.tensor([ids]), model.new_state(), pixel_values=pixels, image_grid_thw=grid
        )


@pytest.mark.parametrize("method", quant.METHODS)
def test_quantized_logits_near_float(tiny_checkpoint: Path, method: str) -> None:
    float_model, _ = load_model(tiny_checkpoint)
    model, _ = load_model(tiny_checkpoint, quant=method)
    ref, out = _logits(float_model), _logits(model)
    err = rel_rms(ref, out)
    assert 0 < err <= LOGIT_BOUNDS[method]
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
    # the vision tower's layers are quantized too: a prompt with an image goes through them
    kl = _kl(_image_prompt_logits(float_model), _image_prompt_logits(model))
    print(f"{method}: logits relative RMS error {err:.4f}, next-token KL {kl:.2e} nats")
    assert 0 < kl <= KL_BOUNDS[method]


def test_kept_layers_stay_float(tiny_checkpoint: Path) -> None:
    model, _ = load_model(tiny_checkpoint, quant="int8")
    kept = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    assert kept and all(n.rsplit(".", 1)[-1] in quant.KEEP_IN_FLOAT for n in kept)
    # the tied head is still the embedding table
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight


def test_bf16_load_keeps_scales_float32(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model, _ = load_model(tiny_checkpoint)
    quant.quantize_(model, method="int4")
    save_checkpoint(model, tmp_path / "q", tokenizer_dir=tiny_checkpoint)
    loaded, _ = load_model(tmp_path / "q", dtype=torch.bfloat16)
    layer = loaded.model.language_model.layers[0].mlp.up_proj
    assert isinstance(layer, quant.Int4Linear)
    assert layer.weight_scale.dtype == torch.float32 and layer.weight.dtype == torch.uint8
    assert loaded.dtype == torch.bfloat16
    assert _logits(loaded).isfinite().all()


@pytest.mark.parametrize("method", quant.METHODS)
def test_engine_generates_quantized(tiny_checkpoint: Path, method: str) -> None:
    # GIVEN the float engine and a quantized one
    engine = Engine.load(tiny_checkpoint, device="cpu")
    qengine = Engine.load(tiny_checkpoint, device="cpu", quant=method)
    assert qengine.info.quantization == method
    assert qengine.info.num_parameters == engine.info.num_parameters
    # WHEN both answer the same message greedily
    replies = []
    for e in (engine, qengine):
        session = e.new_session()
        session.add_user_message("What is on the screen?")
        replies.append("".join(d.text for d in session.generate(SamplingParams(max_new_tokens=8))))
        assert session.last_stats is not None and session.last_stats.generated_tokens > 0
    # THEN the quantized model really generates (the tiny model's replies are random text)
    assert replies[1]


def _replies(engine: Engine, n: int) -> tuple[list[tuple[int, ...]], bool]:
    """Two greedy turns of one session: (the token ids of each reply, whether the session
    decoded through a decode graph: its graph step, captured on CUDA, static elsewhere)."""
    session = engine.new_session()
    out = []
    for text in ("What is on the screen?", "And below it?"):
        session.add_user_message(text)
        out.append(
            tuple(
                i for d in session.generate(SamplingParams(max_new_tokens=n)) for i in d.token_ids
            )
        )
    return out, session._graph is not None


@pytest.mark.parametrize("method", quant.METHODS)
def test_quantized_decode_through_the_graph_step(tiny_checkpoint: Path, method: str) -> None:
    # GIVEN a quantized engine decoding eagerly and one through the decode graph's static step
    eager = Engine.load(tiny_checkpoint, device="cpu", quant=method)
    eager.decode_graph = "off"
    static = Engine.load(tiny_checkpoint, device="cpu", quant=method)
    static.decode_graph = "static"
    # THEN the second decodes through the graph step, with the same replies
    replies, graphed = _replies(static, 12)
    assert graphed and static.decode_graph == "static"
    assert (replies, False) == _replies(eager, 12)


@pytest.mark.parametrize("method", [None, *quant.METHODS])
def test_only_int8_keeps_cuda_decode_out_of_the_graph(tiny_checkpoint: Path, method: str) -> None:
    # LLM.int8 cannot be captured: an int8 engine on CUDA must decode eagerly from the start, not
    # fail a capture (and log its traceback) on every reply; every other format is graphed
    model, _ = load_model(tiny_checkpoint, quant=method)
    assert not quant.decodes_eagerly_on(model, "cpu")
    assert quant.decodes_eagerly_on(model, "cuda") == (method in ("int8", "int8-dynamic"))


def test_int4_packed_for_cpu_cannot_be_saved(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model, _ = load_model(tiny_checkpoint, quant="int4")
    _logits(model)  # packs the layers for this CPU's kernel
    with pytest.raises(EngineError, match="quantize the float checkpoint"):
        save_checkpoint(model, tmp_path / "q")


def test_nf4_on_cpu_says_it_is_slow(
    tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # NF4 has no CPU kernel: a user who picked it (or loads an NF4 checkpoint made for a GPU)
    # learns why it is slow and what to pick instead
    assert main(["quantize", str(tiny_checkpoint), str(tmp_path / "q"), "--quant", "nf4"]) == 0
    for path, method in ((tiny_checkpoint, "nf4"), (tmp_path / "q", None)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="engine.loader"):
            load_model(path, quant=method)
        assert "use int4 on CPUs" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="engine.loader"):
        load_model(tiny_checkpoint, quant="int4")
    assert "on CPUs" not in caplog.text


@pytest.mark.parametrize(
    ("method", "device", "advice"),
    [
        ("int8", "cuda", "use nf4 on GPUs"),
        ("int8-dynamic", "cuda", "use nf4 on GPUs"),
        ("int4", "cuda", "use nf4 on GPUs"),
        ("nf4", "cpu", "use int4 on CPUs"),
        ("nf4", "cuda", None),
        ("int8", "cpu", None),
        ("int4", "cpu", None),
    ],
)
def test_a_slow_quantization_for_the_device_says_what_to_pick(
    method: str, device: str, advice: str | None
) -> None:
    # int8 on CUDA (LLM.int8) cannot decode through the CUDA graph: ~25x slower than NF4
    said = slow_quant_warning(method, device)
    assert said == advice if advice is None else advice in said


def test_quantized_checkpoint_refuses_another_method(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert main(["quantize", str(tiny_checkpoint), str(tmp_path / "q"), "--quant", "nf4"]) == 0
    with pytest.raises(CheckpointError, match="stored quantized to nf4"):
        load_model(tmp_path / "q", quant="int8")
    # the stored method itself is fine
    model, _ = load_model(tmp_path / "q", quant="nf4")
    assert model.quantization.method == "nf4"


def test_cli_quantize_then_generate(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    # GIVEN `infinitevl quantize` writes an int8 checkpoint
    out = tmp_path / "int8"
    assert main(["quantize", str(tiny_checkpoint), str(out), "--quant", "int8"]) == 0
    assert "quantized to int8" in capsys.readouterr().out
    # WHEN `infinitevl generate` loads it as it is
    assert main(["generate", "hi", "--model", str(out), "--max-new-tokens", "4"]) == 0
    # THEN the banner says so and the logits equal those of quantizing at load time
    assert "int8 weights" in capsys.readouterr().err
    stored, _ = load_model(out)
    at_load, _ = load_model(tiny_checkpoint, quant="int8")
    assert torch.equal(_logits(stored), _logits(at_load))


def test_bad_quant_config_is_a_checkpoint_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import json

    assert main(["quantize", str(tiny_checkpoint), str(tmp_path / "q"), "--quant", "int8"]) == 0
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    cfg["quantization_config"]["quant_method"] = "gptq"
    (tmp_path / "q" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not one this engine wrote"):
        load_model(tmp_path / "q")


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_cuda_bitsandbytes_engine(tiny_checkpoint: Path, tmp_path: Path, method: str) -> None:
    from kernels import qlinear

    if not torch.cuda.is_available() or not qlinear.has_bitsandbytes():
        pytest.skip("needs CUDA and bitsandbytes (pip install -e '.[quant]')")
    import bitsandbytes as bnb

    ref = _logits(load_model(tiny_checkpoint, device="cuda", dtype=torch.bfloat16)[0])
    model, _ = load_model(tiny_checkpoint, device="cuda", dtype=torch.bfloat16, quant=method)
    kinds = {type(m) for m in model.modules()}
    assert (bnb.nn.Linear4bit if method == "nf4" else bnb.nn.Linear8bitLt) in kinds
    out = _logits(model)
    print(f"cuda {method}: relative RMS {rel_rms(ref, out):.4f}, KL {_kl(ref, out):.2e}")
    assert rel_rms(ref, out) <= 0.15
    # a checkpoint written quantized loads onto bitsandbytes too
    cpu_model, _ = load_model(tiny_checkpoint)
    quant.quantize_(cpu_model, method=method)
    save_checkpoint(cpu_model, tmp_path / "q", tokenizer_dir=tiny_checkpoint)
    stored, _ = load_model(tmp_path / "q", device="cuda", dtype=torch.bfloat16)
    assert rel_rms(ref, _logits(stored)) <= 0.15
    engine = Engine.load(tmp_path / "q", device="cuda", dtype="bfloat16")
    session = engine.new_session()
    session.add_user_message("hello")
    assert list(session.generate(SamplingParams(max_new_tokens=4)))
    # int8 decodes eagerly without trying a capture first; NF4 through the graph
    assert (session._graph is None) == (method == "int8")


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["nf4", "int4"])
def test_cuda_quantized_decode_is_graphed(tiny_checkpoint: Path, method: str) -> None:
    from kernels import qlinear

    if not torch.cuda.is_available() or (method == "nf4" and not qlinear.has_bitsandbytes()):
        pytest.skip("needs CUDA (and bitsandbytes for nf4)")
    # GIVEN a quantized CUDA engine decoding eagerly and one through the captured graph
    eager = Engine.load(tiny_checkpoint, device="cuda", dtype="bfloat16", quant=method)
    eager.decode_graph = "off"
    graphed = Engine.load(tiny_checkpoint, device="cuda", dtype="bfloat16", quant=method)
    for engine in (eager, graphed):
        engine.prefill_chunk_tokens = 1  # token by token: fla's chunk kernel would compile
    # THEN the graph was captured (not fallen back from), and the replies agree
    replies, used = _replies(graphed, 12)
    assert used and graphed.decode_graph == "cuda"
    assert (replies, False) == _replies(eager, 12)
