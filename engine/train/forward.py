"""The training forward: a fresh state per batch, rows of different image layouts side by side.

`InfiniteVLForConditionalGeneration.forward` feeds one piece of a session and so insists that
every row ends at the same RoPE position; training rows never continue, so this wrapper assigns
each row its own 3-D positions and runs the model's parts (embedding, vision tower, decoder,
head) itself. It is an nn.Module so that FSDP's root hooks see every call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.model.infinitevl import InfiniteVLForConditionalGeneration
from engine.model.rope import rope_index_rows
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


@dataclass(slots=True)
class DecoderInputs:
    """What the decoder reads: the token embeddings with the image features scattered in, and
    each token's M-RoPE position. A distillation student whose embedding and vision tower are
    the teacher's (frozen, equal) reads the teacher's instead of computing them again."""

    embeds: torch.Tensor  # [B, T, hidden]
    position_ids: torch.Tensor  # [3, B, T]


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
        *,
        inputs: DecoderInputs | None = None,
        inputs_out: list[DecoderInputs] | None = None,
        layer_inputs: dict[int, torch.Tensor] | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run whole sequences from an empty state.

        Args:
            input_ids: [B, T] right-padded token ids.
            pixel_values: [N, D] patches of every image of the batch, row by row.
            image_grid_thw: [num_images, 3].
            return_hidden: collect the input embeddings and each decoder layer's output.
            glyph_logits: if given (and the glyph head exists), the head's [image tokens,
                SLOTS, NUM_CLASSES] logits of this batch's images are appended to it.
            inputs: the decoder's inputs, already computed (by a teacher with this model's
                embedding and vision tower): pixel_values and image_grid_thw go unused.
            inputs_out: if given, the decoder inputs this call computed are appended to it.
            layer_inputs: {layer index: [B, T, hidden]}: run only these Gated DeltaNet layers,
                each on its own input from an empty state (stage 1's layer-wise distillation);
                nothing else runs, and the logits are empty.
            position_ids: [3, B, T] each row's M-RoPE positions, as `data.collate` computes them
                with the model's config; None computes them here.
        Returns:
            logits [B, T, vocab] float32 and the hidden states ([] unless `return_hidden`):
            num_layers + 1 tensors [B, T, hidden]; with `layer_inputs`, the outputs of those
            layers in the order of their indices.
        """
        if layer_inputs is not None:
            return self._layers_alone(input_ids.shape[0], layer_inputs)
        if inputs is None:
            inputs = self._decoder_inputs(
                input_ids, pixel_values, image_grid_thw, glyph_logits, position_ids
            )
        if inputs_out is not None:
            inputs_out.append(inputs)
        m = self.model
        embeds = inputs.embeds
        if torch.is_grad_enabled() and not embeds.requires_grad:
            # with frozen embeddings nothing upstream needs grad; a layer that trains must still
            # see inputs that do, or it treats the call as inference and reuses its state in place
            embeds = embeds.detach().requires_grad_(True)
        state = m.new_state(batch=input_ids.shape[0], device=input_ids.device, dtype=embeds.dtype)
        hidden: list[torch.Tensor] = []
        lm = m.model.language_model
        h = lm(embeds, inputs.position_ids, state.layers, hidden if return_hidden else None)
        return m.lm_head(h).float(), hidden

    def _decoder_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        glyph_logits: list[torch.Tensor] | None,
        position_ids: torch.Tensor | None,
    ) -> DecoderInputs:
        m = self.model
        cfg = m.config
        lm = m.model.language_model
        if position_ids is None:
            # integer bookkeeping of a few ops per row: on the CPU, then one copy, instead of
            # a stream of tiny kernels and host syncs per row on a GPU (the data workers do it
            # when the loader has the model's config: data.collate)
            position_ids = self._positions(input_ids, image_grid_thw)
        embeds = lm.embed_tokens(input_ids)
        if pixel_values is not None:
            assert image_grid_thw is not None
            visual = m.model.visual
            feats = visual(pixel_values.to(visual.patch_embed.proj.weight.dtype), image_grid_thw)
            if glyph_logits is not None and self.glyph_head is not None:
                glyph_logits.append(self.glyph_head(feats))
            # rope_index has checked each row's pad tokens against its grids, so the features
            # fill the pad tokens exactly (a count on the device would wait for the tower)
            mask = (input_ids == cfg.image_token_id).unsqueeze(-1)
            embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
        return DecoderInputs(embeds, position_ids.to(input_ids.device))

    def _positions(
        self, input_ids: torch.Tensor, image_grid_thw: torch.Tensor | None
    ) -> torch.Tensor:
        """[3, B, T] M-RoPE positions of each row, computed on the CPU."""
        cfg = self.model.config
        ids = input_ids.cpu()
        grids = None if image_grid_thw is None else image_grid_thw.cpu()
        return rope_index_rows(ids, _grids_per_row(ids, cfg.image_token_id, grids), cfg)

    def _layers_alone(
        self, batch: int, layer_inputs: dict[int, torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Each listed Gated DeltaNet layer on its own input, from an empty state."""
        layers = self.model.model.language_model.layers
        first = next(iter(layer_inputs.values()))
        state = self.model.new_state(batch=batch, device=first.device, dtype=first.dtype)
        outputs = []
        for i in sorted(layer_inputs):
            layer = layers[i]
            assert layer.layer_type == "linear_attention", f"layer {i} is {layer.layer_type}"
            x = layer_inputs[i].detach().requires_grad_(torch.is_grad_enabled())
            # Gated DeltaNet has no positions: its cos/sin arguments go unused
            none = x.new_empty(0)
            outputs.append(layer(x, none, none, state.layers[i]))
        return first.new_empty(0), outputs


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
