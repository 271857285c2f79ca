"""Tiny GGUF files written with the ``gguf`` package, for the llama.cpp backend's tests.

``write_qwen2_gguf`` converts the tiny full-attention checkpoint (the Transformer teacher's shape,
a Qwen2.5-VL text model) to llama.cpp's ``qwen2`` architecture: on text, its 3-D RoPE is plain
RoPE, so llama.cpp must compute what the torch engine computes. ``write_qwen35_gguf`` writes a
random tiny Qwen3.5 (Gated DeltaNet layers with one full-attention layer in four), the hybrid
family the backend exists for. Both carry the tiny checkpoint's byte-level BPE tokenizer.
``write_qwen25vl_mmproj`` writes a random tiny Qwen2.5-VL vision projector for libmtmd.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

QWEN2_VL_STYLE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)
QWEN35_STYLE_TEMPLATE = (
    QWEN2_VL_STYLE_TEMPLATE
    + "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}"
)


def _add_tokenizer(writer: object, tokenizer_json: Path) -> None:
    import gguf

    raw = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab: dict[str, int] = dict(raw["model"]["vocab"])
    for added in raw["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens))), "ids must be 0..n-1"
    special = {a["content"] for a in raw["added_tokens"] if a.get("special")}
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in raw["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<|endoftext|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_pad_token_id(vocab["<|endoftext|>"])
    writer.add_add_bos_token(False)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().contiguous().numpy()


def write_qwen2_gguf(checkpoint: Path, out: Path) -> Path:
    """The text model of a tiny full-attention checkpoint as a float32 ``qwen2`` GGUF."""
    import gguf

    from engine.loader import load_model

    model, config = load_model(checkpoint)
    assert set(config.text.layer_types) == {"full_attention"}, "qwen2 has full attention only"
    text = config.text
    sd = {k.removeprefix("model.language_model."): v for k, v in model.state_dict().items()}
    writer = gguf.GGUFWriter(str(out), "qwen2")
    writer.add_name("tiny-qwen2")
    writer.add_context_length(32768)
    writer.add_embedding_length(text.hidden_size)
    writer.add_block_count(text.num_hidden_layers)
    writer.add_feed_forward_length(text.intermediate_size)
    writer.add_head_count(text.num_attention_heads)
    writer.add_head_count_kv(text.num_key_value_heads)
    writer.add_rope_freq_base(text.rope_theta)
    writer.add_layer_norm_rms_eps(text.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_chat_template(QWEN2_VL_STYLE_TEMPLATE)
    _add_tokenizer(writer, checkpoint / "tokenizer.json")
    writer.add_tensor("token_embd.weight", _np(sd["embed_tokens.weight"]))
    writer.add_tensor("output_norm.weight", _np(sd["norm.weight"]))
    names = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.v_proj.bias": "attn_v.bias",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for i in range(text.num_hidden_layers):
        for ours, theirs in names.items():
            writer.add_tensor(f"blk.{i}.{theirs}", _np(sd[f"layers.{i}.{ours}"]))
    _finish(writer)
    return out


def write_qwen35_gguf(tokenizer_dir: Path, out: Path, *, seed: int = 0) -> Path:
    """A random tiny Qwen3.5 text model: 4 layers (3 Gated DeltaNet, then full attention)."""
    import gguf

    g = torch.Generator().manual_seed(seed)
    C, FF, n_layers = 64, 128, 4
    n_head, n_kv, head_dim = 4, 2, 16  # attention
    k_heads, v_heads, d_state, d_conv = 2, 4, 16, 4  # Gated DeltaNet
    key_dim, value_dim = k_heads * d_state, v_heads * d_state
    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    n_vocab = len(vocab["model"]["vocab"]) + len(vocab["added_tokens"])

    def rand(*shape: int, std: float = 0.05) -> np.ndarray:
        return _np(torch.randn(*shape, generator=g) * std)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    arch = "qwen35"
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name("tiny-qwen35")
    writer.add_context_length(32768)
    writer.add_embedding_length(C)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(FF)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(head_dim // 2)
    writer.add_array(f"{arch}.rope.dimension_sections", [1, 1, 2, 0])
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_uint32(f"{arch}.ssm.conv_kernel", d_conv)
    writer.add_uint32(f"{arch}.ssm.inner_size", value_dim)
    writer.add_uint32(f"{arch}.ssm.state_size", d_state)
    writer.add_uint32(f"{arch}.ssm.time_step_rank", v_heads)
    writer.add_uint32(f"{arch}.ssm.group_count", k_heads)
    writer.add_uint32(f"{arch}.full_attention_interval", 4)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_chat_template(QWEN35_STYLE_TEMPLATE)
    _add_tokenizer(writer, tokenizer_dir / "tokenizer.json")
    writer.add_tensor("token_embd.weight", rand(n_vocab, C, std=1.0))
    writer.add_tensor("output_norm.weight", ones(C))
    for i in range(n_layers):
        b = f"blk.{i}"
        writer.add_tensor(f"{b}.attn_norm.weight", ones(C))
        writer.add_tensor(f"{b}.post_attention_norm.weight", ones(C))
        if (i + 1) % 4:
            writer.add_tensor(f"{b}.attn_qkv.weight", rand(2 * key_dim + value_dim, C))
            writer.add_tensor(f"{b}.attn_gate.weight", rand(value_dim, C))
            writer.add_tensor(
                f"{b}.ssm_conv1d.weight", rand(2 * key_dim + value_dim, d_conv, std=0.5)
            )
            writer.add_tensor(f"{b}.ssm_dt.bias", rand(v_heads, std=0.5))
            writer.add_tensor(f"{b}.ssm_a", -np.exp(rand(v_heads, std=0.5)))
            writer.add_tensor(f"{b}.ssm_beta.weight", rand(v_heads, C))
            writer.add_tensor(f"{b}.ssm_alpha.weight", rand(v_heads, C))
            writer.add_tensor(f"{b}.ssm_norm.weight", ones(d_state))
            writer.add_tensor(f"{b}.ssm_out.weight", rand(C, value_dim))
        else:
            # the query projection carries the output gate: 2 x heads x head_dim rows
            writer.add_tensor(f"{b}.attn_q.weight", rand(2 * n_head * head_dim, C))
            writer.add_tensor(f"{b}.attn_k.weight", rand(n_kv * head_dim, C))
            writer.add_tensor(f"{b}.attn_v.weight", rand(n_kv * head_dim, C))
            writer.add_tensor(f"{b}.attn_output.weight", rand(C, n_head * head_dim))
            writer.add_tensor(f"{b}.attn_q_norm.weight", ones(head_dim))
            writer.add_tensor(f"{b}.attn_k_norm.weight", ones(head_dim))
        writer.add_tensor(f"{b}.ffn_gate.weight", rand(FF, C))
        writer.add_tensor(f"{b}.ffn_up.weight", rand(FF, C))
        writer.add_tensor(f"{b}.ffn_down.weight", rand(C, FF))
    _finish(writer)
    return out


def write_qwen25vl_mmproj(out: Path, text_hidden: int, *, seed: int = 0) -> Path:
    """A random tiny Qwen2.5-VL vision tower + merger (width 32, 2 blocks) as an mmproj GGUF."""
    import gguf

    g = torch.Generator().manual_seed(seed)
    W, FF, L, H, P = 32, 64, 2, 2, 14

    def rand(*shape: int) -> np.ndarray:
        return _np(torch.randn(*shape, generator=g) * 0.05)

    writer = gguf.GGUFWriter(str(out), "clip")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", "qwen2.5vl_merger")
    for key, value in {
        "image_size": 560, "patch_size": P, "embedding_length": W, "feed_forward_length": FF,
        "projection_dim": text_hidden, "block_count": L, "attention.head_count": H,
        "n_wa_pattern": 2, "window_size": 112,
    }.items():  # fmt: skip
        writer.add_uint32(f"clip.vision.{key}", value)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_array("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
    writer.add_array("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])
    writer.add_bool("clip.use_silu", True)
    # the two temporal frames of the patch embedding are two conv kernels
    writer.add_tensor("v.patch_embd.weight", rand(W, 3, P, P))
    writer.add_tensor("v.patch_embd.weight.1", rand(W, 3, P, P))
    for i in range(L):
        b = f"v.blk.{i}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"{b}.{name}.weight", rand(W, W))
            writer.add_tensor(f"{b}.{name}.bias", rand(W))
        writer.add_tensor(f"{b}.ln1.weight", np.ones(W, dtype=np.float32))
        writer.add_tensor(f"{b}.ln2.weight", np.ones(W, dtype=np.float32))
        for name, (n, k) in {"ffn_up": (FF, W), "ffn_gate": (FF, W), "ffn_down": (W, FF)}.items():
            writer.add_tensor(f"{b}.{name}.weight", rand(n, k))
            writer.add_tensor(f"{b}.{name}.bias", rand(n))
    writer.add_tensor("v.post_ln.weight", np.ones(W, dtype=np.float32))
    writer.add_tensor("mm.0.weight", rand(4 * W, 4 * W))
    writer.add_tensor("mm.0.bias", rand(4 * W))
    writer.add_tensor("mm.2.weight", rand(text_hidden, 4 * W))
    writer.add_tensor("mm.2.bias", rand(text_hidden))
    _finish(writer)
    return out


def _finish(writer: object) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
