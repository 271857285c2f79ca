"""benchmarks/quant_bench.py on a model whose vision markers sit among its first ids (as the
embedded model's 512-id vocabulary has them): the bench's random prompts and greedy steps hold
text ids only, since an image pad token outside an image is refused."""

from __future__ import annotations

import dataclasses

import torch

from benchmarks.quant_bench import prompt_set, text_ids, text_pool, time_model
from engine.config import ModelConfig, tiny_config
from engine.testing.tiny_checkpoint import tiny_model


def _low_marker_config() -> ModelConfig:
    return dataclasses.replace(
        tiny_config(),
        image_token_id=12,
        video_token_id=13,
        vision_start_token_id=9,
        vision_end_token_id=10,
    )


def test_prompts_never_hold_the_vision_markers() -> None:
    config = _low_marker_config()
    prompts = torch.cat([p.flatten() for p in prompt_set(config, 8, 256)])
    assert not torch.isin(prompts, torch.tensor([9, 10, 12, 13])).any()
    assert int(prompts.max()) < text_ids(config.text.vocab_size)
    assert len(set(prompts.tolist())) > 100  # still spread over the text ids


def test_a_qwen_vocabulary_keeps_every_id_below_its_specials() -> None:
    # Qwen2's vision markers sit above its text ids: the pool is 0..top-1, in order
    config = tiny_config()
    pool = text_pool(config)
    assert torch.equal(pool, torch.arange(text_ids(config.text.vocab_size)))


def test_time_model_runs_where_the_markers_are_low() -> None:
    config = _low_marker_config()
    model = tiny_model(config)
    prefill_s, decode_tps = time_model(model, 32, 4, torch.device("cpu"))
    assert prefill_s > 0 and decode_tps > 0
