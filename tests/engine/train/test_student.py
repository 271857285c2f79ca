"""Teacher -> student conversion: shared tensors copied, attention q/k/v/o mapped into Gated
DeltaNet with key/value heads repeated, and the value -> output map kept."""

from __future__ import annotations

import pytest
import torch

from engine.config import ModelConfig, tiny_config
from engine.model.infinitevl import InfiniteVLForConditionalGeneration
from engine.train.build import freeze
from engine.train.config import STAGE1_TRAINABLE, DataConfig, TrainConfig, trainable_patterns
from engine.train.student import gdn_from_attention, hybrid_layer_types, student_from_teacher

FULL = ("full_attention",) * 4


def _teacher(expand_v: int) -> InfiniteVLForConditionalGeneration:
    raw = {
        **tiny_config(FULL).to_hf(),
        "num_linear_heads": 4,
        "num_linear_key_value_heads": 4,
        "expand_v": expand_v,
    }
    torch.manual_seed(0)
    return InfiniteVLForConditionalGeneration(ModelConfig.from_hf(raw))


@pytest.mark.parametrize("expand_v", [1, 2])
def test_gdn_keeps_the_value_to_output_map(expand_v: int) -> None:
    teacher = _teacher(expand_v)
    attn = {
        k.split("self_attn.", 1)[1]: v
        for k, v in teacher.state_dict().items()
        if k.startswith("model.language_model.layers.1.self_attn.")
    }
    cfg = teacher.config
    w = gdn_from_attention(attn, cfg, cfg.with_layer_types(hybrid_layer_types(4)))
    assert w is not None
    x = torch.randn(3, cfg.text.hidden_size)
    # the teacher's value path with every query head reading its kv head, summed by o_proj
    groups = cfg.text.num_attention_heads // cfg.text.num_key_value_heads
    D = cfg.text.head_dim
    v_t = (x @ attn["v_proj.weight"].T).view(3, -1, D).repeat_interleave(groups, dim=1)
    expected = v_t.reshape(3, -1) @ attn["o_proj.weight"].T
    got = (x @ w["v_proj.weight"].T) @ w["o_proj.weight"].T
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # key heads repeated in the teacher's pairing: GDN head h reads kv head h // groups
    k = w["k_proj.weight"].view(4, D, -1)
    kv = attn["k_proj.weight"].view(cfg.text.num_key_value_heads, D, -1)
    for h in range(4):
        assert torch.equal(k[h], kv[h // groups])


def test_student_copies_every_shared_tensor() -> None:
    teacher = _teacher(2)
    student = student_from_teacher(teacher, hybrid_layer_types(4))
    assert student.config.text.layer_types == hybrid_layer_types(4)
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    kept = [
        k
        for k in s_sd
        if ".layers.1." not in k
        and ".layers.2." not in k
        and ".layers.3." not in k
        or ".mlp." in k
        or "layernorm" in k
    ]
    for k in kept:
        assert torch.equal(s_sd[k], t_sd[k]), k


def test_stage1_trains_exactly_the_gated_deltanet_tensors() -> None:
    student = student_from_teacher(_teacher(2), hybrid_layer_types(4))
    cfg = TrainConfig(
        stage="distill_layerwise",
        init="x",
        out_dir="y",
        data=DataConfig(),
        teacher="t",
        trainable=STAGE1_TRAINABLE,
    )
    names = freeze(student, cfg, student.config)
    assert all(".self_attn." in n and n.split(".")[3] in ("1", "2", "3") for n in names)
    per_layer = {n.split("self_attn.", 1)[1] for n in names}
    assert per_layer == {
        "A_log",
        "dt_bias",
        "q_proj.weight",
        "k_proj.weight",
        "v_proj.weight",
        "a_proj.weight",
        "b_proj.weight",
        "q_conv1d.weight",
        "k_conv1d.weight",
        "v_conv1d.weight",
        "g_proj.weight",
        "o_norm.weight",
        "o_proj.weight",
    }
    assert trainable_patterns(cfg, student.config)[0].pattern.count("(?:1|2|3)") == 1
