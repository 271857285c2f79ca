"""Tensor names, shapes and dtypes equal the published checkpoints' listings (built on meta)."""

from pathlib import Path

import pytest
import torch

from engine.config import ModelConfig
from engine.model.infinitevl import InfiniteVLForConditionalGeneration

REFERENCE = Path(__file__).resolve().parents[1] / "reference"
HERE = Path(__file__).parent


def _read_tsv(path: Path) -> dict[str, tuple[list[int], str | None]]:
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        shape = [int(s) for s in cols[1].strip("[]").split(",") if s.strip()]
        out[cols[0]] = (shape, cols[2] if len(cols) > 2 else None)
    return out


def _build_meta_bf16(config: ModelConfig) -> InfiniteVLForConditionalGeneration:
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            return InfiniteVLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)


@pytest.mark.parametrize(
    ("config_path", "tsv"),
    [
        (REFERENCE / "infinitevl-4b.config.json", REFERENCE / "infinitevl-4b.weights.tsv"),
        (HERE / "qwen2.5-vl-3b.config.json", REFERENCE / "qwen2.5-vl-3b.weights.tsv"),
    ],
    ids=["infinitevl-4b", "qwen2.5-vl-3b"],
)
def test_state_dict_matches_published_listing(config_path, tsv):
    if not tsv.is_file():
        pytest.skip(f"reference listing {tsv} not present")
    expected = _read_tsv(tsv)
    model = _build_meta_bf16(ModelConfig.from_file(config_path))
    got = {k: (list(v.shape), str(v.dtype)) for k, v in model.state_dict(keep_vars=True).items()}

    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    assert not missing and not unexpected, f"missing {missing[:10]}, unexpected {unexpected[:10]}"
    wrong_shape = {k: (got[k][0], v[0]) for k, v in expected.items() if got[k][0] != v[0]}
    assert not wrong_shape, f"shapes (ours, published): {sorted(wrong_shape.items())[:10]}"
    wrong_dtype = {
        k: (got[k][1], v[1]) for k, v in expected.items() if v[1] is not None and got[k][1] != v[1]
    }
    assert not wrong_dtype, f"dtypes (ours, published): {sorted(wrong_dtype.items())[:10]}"
    n_params = sum(int(torch.Size(s).numel()) for s, _ in expected.values())
    assert sum(p.numel() for p in model.state_dict().values()) == n_params


def test_lm_head_is_tied_when_configured():
    model = _build_meta_bf16(ModelConfig.from_file(REFERENCE / "infinitevl-4b.config.json"))
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    model.to_dtype(torch.float32)
    layer = model.model.language_model.layers[1].self_attn
    assert layer.A_log.dtype == torch.float32 and layer.q_proj.weight.dtype == torch.float32
    model.to_dtype(torch.bfloat16)
    assert layer.A_log.dtype == torch.float32 and layer.q_proj.weight.dtype == torch.bfloat16
