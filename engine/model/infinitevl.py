"""InfiniteVL (and Qwen2.5-VL): the vision tower joined to the hybrid decoder and its head.

Tensor names are the published checkpoints' (``model.visual.*``, ``model.language_model.*``,
``lm_head.weight``). ``forward`` feeds one piece of a session: it embeds tokens, puts the vision
tower's outputs into the image/video pad positions, assigns 3-D RoPE positions from the state and
runs the decoder, updating the ``ModelState`` in place. It knows nothing of tokenizers or files.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from engine.config import ModelConfig
from engine.errors import InputError, StateError
from engine.model.lm import LanguageModel
from engine.model.rope import rope_index
from engine.model.vision import VisionTransformer
from engine.state import ModelState

log = logging.getLogger(__name__)

# parameters kept in float32 whatever the model's dtype (as in the published checkpoints)
FLOAT32_PARAMS = ("A_log",)


class VLModel(nn.Module):
    """The ``model.`` prefix: ``visual`` (vision tower) and ``language_model`` (decoder)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.visual = VisionTransformer(config.vision)
        self.language_model = LanguageModel(config.text)


class InfiniteVLForConditionalGeneration(nn.Module):
    """The whole model. Build it under ``torch.device("meta")`` to load weights with ``assign``.

    Build under ``torch.set_default_dtype(torch.bfloat16)`` (or call :meth:`to_dtype`) for a
    bf16 model: ``A_log`` stays float32 either way.

    Args:
        config: the parsed ``config.json``; ``config.text.layer_types`` decides each layer.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = VLModel(config)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share ``lm_head.weight`` with ``embed_tokens.weight`` when ``tie_word_embeddings``.

        Call again after ``load_state_dict(..., assign=True)``, which replaces the parameters.
        """
        if self.config.text.tie_word_embeddings:
            self.lm_head.weight = self.model.language_model.embed_tokens.weight

    @torch.no_grad()
    def to_dtype(self, dtype: torch.dtype) -> InfiniteVLForConditionalGeneration:
        """Cast floating parameters to ``dtype`` in place, keeping ``A_log`` in float32."""
        for name, p in self.named_parameters():
            if p.is_floating_point() and name.rsplit(".", 1)[-1] not in FLOAT32_PARAMS:
                p.data = p.data.to(dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype: that of the embedding table."""
        return self.model.language_model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.language_model.embed_tokens.weight.device

    def new_state(
        self,
        batch: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ModelState:
        """A zero session state on the weights' device and dtype unless told otherwise."""
        return ModelState.new(self.config.text, batch, device or self.device, dtype or self.dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        state: ModelState,
        *,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | list[float] | None = None,
        logits_to_keep: int = 0,
        return_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Feed the next piece of every sequence in the batch and return its logits.

        Args:
            input_ids: [B, T] token ids; an image's pad tokens must all be in this piece.
            state: the session state (``new_state``), updated in place.
            pixel_values: [N, C*tp*p*p] patches of the images in this piece, in order.
            image_grid_thw: [n_images, 3] (t, h, w) in patches, one row per image.
            pixel_values_videos, video_grid_thw: the same for videos.
            second_per_grid_ts: [n_videos] seconds per temporal grid step (default 1.0).
            logits_to_keep: compute logits for the last N positions only (0 = all).
            return_hidden: also return ``num_layers + 1`` hidden states [B, T, hidden]: the
                input embeddings, then each decoder layer's output (before the final norm).
        Returns:
            logits [B, T', vocab] float32 (T' = T, or ``logits_to_keep``), and the hidden states
            as ``(logits, hidden_states)`` when ``return_hidden``.
        """
        self._check_inputs(input_ids, state, logits_to_keep)
        B, T = input_ids.shape
        position_ids, next_position = self._positions(
            input_ids, state.position, image_grid_thw, video_grid_thw, second_per_grid_ts
        )
        lm = self.model.language_model
        embeds = lm.embed_tokens(input_ids)
        embeds = self._scatter_vision(
            embeds, input_ids, self.config.image_token_id, pixel_values, image_grid_thw, "image"
        )
        embeds = self._scatter_vision(
            embeds, input_ids, self.config.video_token_id, pixel_values_videos, video_grid_thw,
            "video",
        )  # fmt: skip
        hidden_states: list[torch.Tensor] | None = [] if return_hidden else None
        h = lm(embeds, position_ids, state.layers, hidden_states)
        state.position = next_position
        state.tokens_seen += T
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h).float()
        if hidden_states is not None:
            return logits, hidden_states
        return logits

    def _check_inputs(
        self, input_ids: torch.Tensor, state: ModelState, logits_to_keep: int
    ) -> None:
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise InputError(f"input_ids must be [B, T] with T >= 1, got {list(input_ids.shape)}")
        if input_ids.is_floating_point():
            raise InputError(f"input_ids must hold integers, got {input_ids.dtype}")
        vocab = self.config.text.vocab_size
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= vocab:
            raise InputError(f"token ids must be in [0, {vocab}), got min {lo} max {hi}")
        if state.layer_types != tuple(self.config.text.layer_types):
            raise StateError(
                f"state built for layer_types {list(state.layer_types)}, model has "
                f"{list(self.config.text.layer_types)}"
            )
        if state.batch != input_ids.shape[0]:
            raise InputError(f"input_ids batch {input_ids.shape[0]} != state batch {state.batch}")
        if logits_to_keep < 0:
            raise InputError(f"logits_to_keep must be >= 0, got {logits_to_keep}")

    def _positions(
        self,
        input_ids: torch.Tensor,
        start: int,
        image_grid_thw: torch.Tensor | None,
        video_grid_thw: torch.Tensor | None,
        second_per_grid_ts: torch.Tensor | list[float] | None,
    ) -> tuple[torch.Tensor, int]:
        """[3, B, T] positions and the next text position (the same for every row)."""
        cfg = self.config
        rows, nexts = [], []
        img = _split_grids(input_ids, cfg.image_token_id, image_grid_thw, "image")
        vid = _split_grids(input_ids, cfg.video_token_id, video_grid_thw, "video")
        sec_all = None
        if second_per_grid_ts is not None:
            sec_all = torch.as_tensor(second_per_grid_ts).flatten()
        used_vid = 0
        for b in range(input_ids.shape[0]):
            vid_b = vid[b]
            n_vid = 0 if vid_b is None else vid_b.shape[0]
            sec = sec_all[used_vid : used_vid + n_vid] if sec_all is not None else None
            used_vid += n_vid
            pos, nxt = rope_index(input_ids[b], img[b], vid[b], sec, start, cfg)
            rows.append(pos)
            nexts.append(nxt)
        if len(set(nexts)) != 1:
            raise InputError(
                f"rows of the batch end at different RoPE positions {nexts}; feed them separately"
            )
        return torch.stack(rows, dim=1), nexts[0]

    def _scatter_vision(
        self,
        embeds: torch.Tensor,
        input_ids: torch.Tensor,
        token_id: int,
        pixels: torch.Tensor | None,
        grid_thw: torch.Tensor | None,
        kind: str,
    ) -> torch.Tensor:
        """Replace the ``token_id`` pad embeddings with the vision tower's outputs, in order."""
        mask = input_ids == token_id  # [B, T]
        n_pads = int(mask.sum())
        if pixels is None:
            if n_pads:
                raise InputError(f"{n_pads} {kind} pad tokens but no {kind} pixel values")
            return embeds
        if grid_thw is None:
            raise InputError(f"{kind} pixel values given without a {kind} grid_thw")
        visual = self.model.visual
        feats = visual(pixels.to(visual.patch_embed.proj.weight.dtype), grid_thw)
        if feats.shape[0] != n_pads:
            raise InputError(
                f"{kind} features and pad tokens do not match: {feats.shape[0]} features from "
                f"grid_thw {grid_thw.tolist()}, {n_pads} pad tokens in input_ids"
            )
        return embeds.masked_scatter(mask.unsqueeze(-1), feats.to(embeds.dtype))


def _split_grids(
    input_ids: torch.Tensor, token_id: int, grid_thw: torch.Tensor | None, kind: str
) -> list[torch.Tensor | None]:
    """The rows of ``grid_thw`` that belong to each sequence of the batch, in order."""
    B = input_ids.shape[0]
    if grid_thw is None:
        return [None] * B
    is_pad = input_ids == token_id
    starts = is_pad & ~torch.nn.functional.pad(is_pad[:, :-1], (1, 0), value=False)
    counts = starts.sum(dim=1).tolist()
    if sum(counts) != grid_thw.shape[0]:
        raise InputError(
            f"{grid_thw.shape[0]} {kind} grid(s) for {sum(counts)} {kind} block(s) in input_ids"
        )
    out: list[torch.Tensor | None] = []
    used = 0
    for n in counts:
        out.append(grid_thw[used : used + n] if n else None)
        used += n
    return out
