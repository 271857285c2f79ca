"""The training forward: a fresh state per batch, rows of different image layouts side by side.

`InfiniteVLForConditionalGeneration.forward` feeds one piece of a session and so insists that
every row ends at the same RoPE position; training rows never continue, so this wrapper assigns
each row its own 3-D positions and runs the model's parts (embedding, vision tower, decoder,
head) itself. It is an nn.Module so that FSDP's root hooks see every call.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.model.infinitevl import InfiniteVLForConditionalGeneration
from engine.model.rope import rope_index
from engine.train.synthetic.glyphs import NUM_CLASSES, SLOTS

# beside an exported checkpoint: the head's weights, so a further run of the stage keeps them
GLYPH_HEAD_FILE = "glyph_head.safetensors"


class GlyphHead(nn.Module):
    """Training-only reader of the vision tower's output: each merged image token -> the
    classes of the characters it covers, `glyphs.SLOTS` of them (see synthetic.glyphs)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, SLOTS * NUM_CLASSES)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """[tokens, hidden] -> [tokens, SLOTS, NUM_CLASSES] logits."""
        return self.proj(feats).view(feats.shape[0], SLOTS, NUM_CLASSES)


class TrainingForward(nn.Module):
    """Wraps the model; `forward(input_ids, pixel_values, image_grid_thw)` -> logits (+ hidden).

    Args:
        model: the model; its parameters are this module's (``self.model``).
        glyph_head: add a GlyphHead (``self.glyph_head``) on the vision tower's output. Its
            parameters train with the model's but are not the model's: exports leave them out.
    """

    def __init__(self, model: InfiniteVLForConditionalGeneration, glyph_head: bool = False) -> None:
        super().__init__()
        self.model = model
        vision_out = model.config.vision.out_hidden_size
        device = next(model.parameters()).device  # the head sits beside the model
        self.glyph_head = GlyphHead(vision_out).to(device) if glyph_head else None

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        return_hidden: bool = False,
        glyph_logits: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run whole sequences from an empty state.

        Args:
            input_ids: [B, T] right-padded token ids.
            pixel_values: [N, D] patches of every image of the batch, row by row.
            image_grid_thw: [num_images, 3].
            return_hidden: collect the input embeddings and each decoder layer's output.
            glyph_logits: if given (and the glyph head exists), the head's [image tokens,
                SLOTS, NUM_CLASSES] logits of this batch's images are appended to it.
        Returns:
            logits [B, T, vocab] float32 and the hidden states ([] unless `return_hidden`):
            num_layers + 1 tensors [B, T, hidden].
        """
        m = self.model
        cfg = m.config
        lm = m.model.language_model
        B = input_ids.shape[0]
        # the positions are integer bookkeeping of a few ops per row: on the CPU, then one copy,
        # instead of a stream of tiny kernels and host syncs per row on a GPU
        ids = input_ids.cpu()
        grid_rows = _grids_per_row(
            ids, cfg.image_token_id, None if image_grid_thw is None else image_grid_thw.cpu()
        )
        position_ids = torch.stack(
            [rope_index(ids[b], grid_rows[b], None, None, 0, cfg)[0] for b in range(B)], dim=1
        ).to(input_ids.device)  # [3, B, T]
        embeds = lm.embed_tokens(input_ids)
        if pixel_values is not None:
            assert image_grid_thw is not None
            visual = m.model.visual
            feats = visual(pixel_values.to(visual.patch_embed.proj.weight.dtype), image_grid_thw)
            if glyph_logits is not None and self.glyph_head is not None:
                glyph_logits.append(self.glyph_head(feats))
            mask = (input_ids == cfg.image_token_id).unsqueeze(-1)
            assert int(mask.sum()) == feats.shape[0], "image features and pad tokens differ"
            embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
        if torch.is_grad_enabled() and not embeds.requires_grad:
            # with frozen embeddings nothing upstream needs grad; a layer that trains must still
            # see inputs that do, or it treats the call as inference and reuses its state in place
            embeds = embeds.detach().requires_grad_(True)
        state = m.new_state(batch=B, device=input_ids.device, dtype=embeds.dtype)
        hidden: list[torch.Tensor] = []
        h = lm(embeds, position_ids, state.layers, hidden if return_hidden else None)
        return m.lm_head(h).float(), hidden


def _grids_per_row(
    input_ids: torch.Tensor, token_id: int, grid_thw: torch.Tensor | None
) -> list[torch.Tensor | None]:
    """Split `grid_thw` rows by the image blocks (runs of pad tokens) of each row."""
    if grid_thw is None:
        return [None] * input_ids.shape[0]
    is_pad = input_ids == token_id
    starts = is_pad & ~nn.functional.pad(is_pad[:, :-1], (1, 0), value=False)
    out: list[torch.Tensor | None] = []
    used = 0
    for n in starts.sum(dim=1).tolist():
        out.append(grid_thw[used : used + n] if n else None)
        used += n
    assert used == grid_thw.shape[0], f"{grid_thw.shape[0]} grids for {used} image blocks"
    return out
