"""Teacher -> hybrid student: keep every tensor that fits, turn attention into Gated DeltaNet.

As the published recipe (hustvl/InfiniteVL, `convert.py`): layers whose new type is
`linear_attention` get a Gated DeltaNet whose q/k/v/o start from the teacher's attention, the
key/value heads repeated to the Gated DeltaNet head count (in the teacher's grouped-query
pairing); every other tensor (embeddings, MLPs,
norms, vision tower, the kept attention layers) is copied unchanged.
"""

from __future__ import annotations

import logging

import torch

from engine.config import ModelConfig
from engine.model.infinitevl import InfiniteVLForConditionalGeneration

log = logging.getLogger(__name__)


def hybrid_layer_types(num_layers: int, every: int = 4) -> tuple[str, ...]:
    """InfiniteVL's pattern: sliding-window attention where layer % every == 0, else GDN."""
    return tuple(
        "sliding_attention" if i % every == 0 else "linear_attention" for i in range(num_layers)
    )


def _pick_heads(w: torch.Tensor, heads: int, head_dim: int, idx: torch.Tensor) -> torch.Tensor:
    """[heads*head_dim, C] -> [len(idx)*head_dim, C], head j taking source head idx[j]."""
    C = w.shape[-1]
    return w.view(heads, head_dim, C)[idx].reshape(len(idx) * head_dim, C)


@torch.no_grad()
def gdn_from_attention(
    attn: dict[str, torch.Tensor], teacher: ModelConfig, student: ModelConfig
) -> dict[str, torch.Tensor] | None:
    """Gated DeltaNet q/k/v/o weights from one attention layer's, or None when shapes forbid it.

    Args:
        attn: the teacher layer's tensors by short name ("q_proj.weight", ...).
    Returns:
        "q_proj.weight" [H*K, C], "k_proj.weight", "v_proj.weight" [H*V, C], "o_proj.weight"
        [C, H*V]. With value heads wider than the attention heads (expand_v > 1), each value head
        holds `expand_v` copies of the attention head and o_proj splits the weight between them,
        so the map v -> o is the teacher's.
    """
    t, s = teacher.text, student.text
    H, K, V = s.num_linear_heads, s.linear_head_dim, s.linear_value_head_dim
    D, Hq, Hkv = t.head_dim, t.num_attention_heads, t.num_key_value_heads
    if K != D or H % Hq or V % D:
        log.warning(
            "GDN heads (%d x %d/%d) do not fit attention heads (%d x %d): random init",
            H,
            K,
            V,
            Hq,
            D,
        )
        return None
    expand = V // D
    # GDN head j continues query head j % Hq and the key/value head that query head read in the
    # teacher (grouped-query attention: query head i reads kv head i // groups). The published
    # convert.py tiles the kv heads instead, which pairs q and k heads the teacher never paired.
    q_src = torch.arange(H) % Hq
    kv_src = q_src // (Hq // Hkv)
    q = _pick_heads(attn["q_proj.weight"], Hq, D, q_src)
    k = _pick_heads(attn["k_proj.weight"], Hkv, D, kv_src)
    v = _pick_heads(attn["v_proj.weight"], Hkv, D, kv_src)  # [H*D, C]
    v = v.view(H, 1, D, -1).expand(H, expand, D, v.shape[-1]).reshape(H * V, -1)
    o = attn["o_proj.weight"]  # [C, Hq*D]
    o = o.view(o.shape[0], Hq, D)[:, q_src]  # [C, H, D]
    # a query head reused r times contributes r times: divide so the sum is the teacher's
    o = o / (H // Hq) / expand
    o = o.unsqueeze(2).expand(o.shape[0], H, expand, D).reshape(o.shape[0], H * V)
    return {"q_proj.weight": q, "k_proj.weight": k, "v_proj.weight": v, "o_proj.weight": o}


@torch.no_grad()
def student_from_teacher(
    teacher: InfiniteVLForConditionalGeneration, layer_types: tuple[str, ...]
) -> InfiniteVLForConditionalGeneration:
    """Build the hybrid student of `teacher` with `layer_types` and initialise it from the teacher.

    Returns:
        A float32 model on the teacher's device; tensors absent from the teacher (Gated DeltaNet's
        convolutions, gates, decay and norm) keep their fresh initialisation.
    """
    t_cfg = teacher.config
    s_cfg = t_cfg.with_layer_types(layer_types)
    student = InfiniteVLForConditionalGeneration(s_cfg).to(teacher.device)
    t_sd = teacher.state_dict()
    s_sd = student.state_dict()
    copied, converted = 0, 0
    for name, value in s_sd.items():
        src = t_sd.get(name)
        if src is not None and src.shape == value.shape:
            value.copy_(src)
            copied += 1
    prefix = "model.language_model.layers"
    for i, kind in enumerate(layer_types):
        if kind != "linear_attention":
            continue
        attn = {
            k.split("self_attn.", 1)[1]: v
            for k, v in t_sd.items()
            if k.startswith(f"{prefix}.{i}.self_attn.")
        }
        weights = gdn_from_attention(attn, t_cfg, s_cfg)
        if weights is None:
            continue
        for short, w in weights.items():
            s_sd[f"{prefix}.{i}.self_attn.{short}"].copy_(w)
        converted += 1
    student.tie_weights()
    log.info(
        "student: %d tensors copied, %d attention layers converted to Gated DeltaNet",
        copied,
        converted,
    )
    return student
