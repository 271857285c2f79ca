"""CUDA graphs for the two hot paths: the single-token decode step and the per-frame streaming step.

Both run the model's own modules (weights) over the session's own ``ModelState`` tensors, whose
addresses never change, and keep every per-token number on the device: the RoPE position and the
attention caches' token count are 0-d int64 tensors that the captured step reads and advances,
so one capture serves every later position. The host only mirrors the counters (plain integer
adds, no sync), so the ``ModelState`` stays valid for the eager forward, ``save`` and ``clone``.
On a device without graphs (CPU) the same static step runs eagerly: that is what CPU tests check.
The module knows nothing of tokenizers, sessions or the app.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import InputError, StateError
from engine.model.attention import Attention
from engine.model.fused import decode_linear
from engine.model.gated_deltanet import GatedDeltaNet
from engine.model.infinitevl import InfiniteVLForConditionalGeneration
from engine.model.lm import DecoderLayer
from engine.model.rope import apply_rotary, mrope_cos_sin, rope_index
from engine.sampling import Sampler
from engine.state import FullAttnState, GDNState, LayerState, ModelState, SWAState
from kernels import splitk, swa
from kernels.sdpa import sdpa_context

log = logging.getLogger(__name__)

FULL_ATTENTION_KERNELS = ("sdpa", "split_k")


def _attention_seen(state: ModelState) -> int:
    """The token count shared by every attention cache of ``state`` (0 if it has none)."""
    seen = {st.seen for st in state.layers if not isinstance(st, GDNState)}
    if len(seen) > 1:
        raise StateError(f"attention layers have seen different token counts {sorted(seen)}")
    return seen.pop() if seen else 0


def _advance_host(state: ModelState, tokens: int, positions: int) -> None:
    """Mirror on the host what a replay did on the device (plain adds: no sync)."""
    for st in state.layers:
        if not isinstance(st, GDNState):
            st.seen += tokens
    state.tokens_seen += tokens
    state.position += positions


def _qkv(
    attn: Attention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [B, H, T, D], k, v [B, Hkv, T, D] after RoPE, from ``x`` [B, T, hidden]."""
    q, k, v = attn.project(x)
    q, k = apply_rotary(q, k, cos, sin)
    return q, k, v


def attention_step(
    attn: Attention,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    state: SWAState | FullAttnState,
    seen: torch.Tensor,
    full_kernel: str = "sdpa",
) -> torch.Tensor:
    """One decode token through ``attn`` with the cache's token count on the device.

    A sliding-window ring takes ``swa.step`` with ``seen`` as a tensor. A full-attention cache
    must already hold room for this token (``seen < capacity``, checked by the caller); it is
    written at slot ``seen`` and attended either by SDPA with a mask over the whole capacity
    (``"sdpa"``) or by the split-K ring kernel with the capacity as its window (``"split_k"``).

    Args:
        attn: the layer's attention module (weights only).
        x: [B, 1, hidden] normalised hidden state.  cos, sin: [B, 1, D].
        state: the layer's cache, written in place; its ``seen`` is not touched.
        seen: 0-d int64 tensor, tokens in the cache before this one.
        full_kernel: ``"sdpa"`` or ``"split_k"`` (full attention only).
    Returns:
        [B, 1, hidden].
    """
    B = x.shape[0]
    q, k, v = _qkv(attn, x, cos, sin)
    q1, k1, v1 = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    if isinstance(state, SWAState) or full_kernel == "split_k":
        o = swa.step(q1, k1, v1, state.k, state.v, seen, scale=attn.scale)  # [B, H, D]
    else:
        state.k.index_copy_(2, seen.view(1), k.to(state.k.dtype))
        state.v.index_copy_(2, seen.view(1), v.to(state.v.dtype))
        Hkv, cap, D = state.k.shape[1:]
        # the G query heads of a kv group become G queries of one head: no repeated keys
        qg = q1.reshape(B, Hkv, -1, D)
        valid = torch.arange(cap, device=x.device) <= seen  # [cap]
        with sdpa_context(x.device):
            o = F.scaled_dot_product_attention(
                qg, state.k, state.v, attn_mask=valid[None, None, None, :], scale=attn.scale
            )
        o = o.reshape(B, -1, D)
    return decode_linear(attn.o_proj, o.reshape(B, 1, -1))


def attention_frame(
    attn: Attention,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    state: SWAState,
    seen: torch.Tensor,
) -> torch.Tensor:
    """T new tokens through a sliding-window layer whose ring is full (``seen >= W``).

    With a full ring the banded mask is the same at every position; only the order of the slots
    moves, and ``swa.prefill_full_ring`` reads it from ``seen`` on the device. Same result as the
    eager prefill.

    Args:
        x: [B, T, hidden].  cos, sin: [B, T, D].  state: the full ring, written in place.
        seen: 0-d int64 tensor, tokens written before these (>= W).
    Returns:
        [B, T, hidden].
    """
    B, T, _ = x.shape
    W = state.k.shape[2]
    q, k, v = _qkv(attn, x, cos, sin)
    # the ring read in place from its oldest slot (seen % W) on, then the new keys
    o = swa.prefill_full_ring(q, k, v, state.k, state.v, seen, scale=attn.scale)
    n = min(T, W)
    slots = (torch.arange(T - n, T, device=x.device) + seen) % W
    state.k.index_copy_(2, slots, k[:, :, T - n :].to(state.k.dtype))
    state.v.index_copy_(2, slots, v[:, :, T - n :].to(state.v.dtype))
    return attn.o_proj(o.transpose(1, 2).reshape(B, T, -1))


def reserve_full_attention(state: ModelState, capacity: int) -> None:
    """Give every full-attention cache of ``state`` room for ``capacity`` tokens, in place.

    A graphed decode step cannot grow a cache: reserve before capturing. Valid entries are kept.
    """
    for st in state.layers:
        if isinstance(st, FullAttnState) and st.k.shape[2] < capacity:
            for name in ("k", "v"):
                old = getattr(st, name)
                new = old.new_zeros((*old.shape[:2], capacity, old.shape[3]))
                new[:, :, : st.seen].copy_(old[:, :, : st.seen])
                setattr(st, name, new)


@functools.cache
def _warmup_stream(device: torch.device) -> torch.cuda.Stream:
    """The side stream every graph of ``device`` warms up on."""
    # cuBLAS keeps a workspace per stream (~64 MiB seen on an H100): one stream per graph leaks
    return torch.cuda.Stream(device)


class _Replayable:
    """Runs ``body`` eagerly for ``warmup`` calls, then captures it once and replays it."""

    def __init__(self, body: Callable[[], None], device: torch.device, use_graph: bool) -> None:
        self._body = body
        self._device = device
        self.use_graph = use_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self._generators: list[torch.Generator] = []

    def register_generator(self, generator: torch.Generator) -> None:
        self._generators.append(generator)

    def run(self, warmup: bool) -> None:
        if not self.use_graph:
            self._body()
            return
        if self.graph is not None:
            self.graph.replay()
            return
        if warmup:
            # warm-up on a side stream, as torch's graph docs ask (cuBLAS workspaces, autotuning)
            stream = _warmup_stream(self._device)
            stream.wait_stream(torch.cuda.current_stream(self._device))
            # kernels.splitk times its shapes here: a split runs only inside the graph
            with torch.cuda.stream(stream), splitk.preparing_capture():
                self._body()
            torch.cuda.current_stream(self._device).wait_stream(stream)
            return
        self.graph = torch.cuda.CUDAGraph()
        for gen in self._generators:
            self.graph.register_generator_state(gen)
        with torch.cuda.graph(self.graph):
            self._body()
        # capture records without running: run the step once for real
        self.graph.replay()


class DecodeGraph:
    """The whole single-token decode step over ``state``, captured once in a CUDA graph.

    Embedding lookup, every layer (Gated DeltaNet step, sliding-window ring step, or a
    preallocated full-attention cache), final norm, ``lm_head`` and the next token (greedy, or
    ``sampler``) run from static buffers; the chosen token is written back as the next input, so
    a replay needs nothing from the host. :meth:`step` reads the new token (the one host sync).

    Args:
        model: the model (weights are used, not copied).
        state: the session state the graph reads and writes; its tensors must keep their
            addresses (eager feeding between steps is fine: counters are re-read when changed).
        sampler: chooses the next token on the device; None is greedy argmax.
        use_graph: capture a CUDA graph (default: on CUDA); False runs the same step eagerly.
        warmup_steps: eager steps (on a side stream) before the capture.
        full_kernel: attention kernel for full-attention layers (``"sdpa"`` or ``"split_k"``).
    """

    def __init__(
        self,
        model: InfiniteVLForConditionalGeneration,
        state: ModelState,
        *,
        sampler: Sampler | None = None,
        use_graph: bool | None = None,
        warmup_steps: int = 2,
        full_kernel: str = "sdpa",
    ) -> None:
        if state.batch != 1:
            raise InputError(f"DecodeGraph decodes one sequence, the state holds {state.batch}")
        if full_kernel not in FULL_ATTENTION_KERNELS:
            raise InputError(f"full_kernel must be one of {FULL_ATTENTION_KERNELS}")
        self.model, self.state, self.sampler = model, state, sampler
        self.full_kernel = full_kernel
        device = model.device
        self.device = device
        use_graph = device.type == "cuda" if use_graph is None else use_graph
        if use_graph and not swa.has_triton():
            raise InputError(
                "a graphed decode step needs Triton (the ring step reads seen on device)"
            )
        cfg = model.config.text
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)  # [B, 1] next input
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self.seen = torch.zeros((), dtype=torch.long, device=device)
        self.logits = torch.zeros(1, cfg.vocab_size, dtype=torch.float32, device=device)
        self._token_host = torch.zeros(1, dtype=torch.long, pin_memory=device.type == "cuda")
        self._mirror: tuple[int, int] | None = None  # (tokens_seen, position) the device holds
        self._warmup_left = warmup_steps if use_graph else 0
        self._runner = _Replayable(self._body, device, use_graph)
        if sampler is not None and sampler.generator is not None:
            self._runner.register_generator(sampler.generator)

    @property
    def graph(self) -> torch.cuda.CUDAGraph | None:
        return self._runner.graph

    @property
    def captures_next(self) -> bool:
        """True when the next step captures the graph (a capture that fails runs nothing)."""
        return self._runner.use_graph and self.graph is None and self._warmup_left == 0

    def _body(self) -> None:
        lm = self.model.model.language_model
        x = lm.embed_tokens(self.token)  # [1, 1, hidden]
        position_ids = self.position.view(1, 1, 1).expand(3, 1, 1)
        cos, sin = mrope_cos_sin(position_ids, lm.config, x.dtype)
        layers = zip(lm.layers, self.state.layers, strict=True)
        mixers = [self._mixer(layer, st, cos, sin) for layer, st in layers]
        normed = lm.run_layers(x, mixers)
        assert normed is not None
        logits = decode_linear(self.model.lm_head, normed)[:, -1].float()  # [1, vocab]
        self.logits.copy_(logits)
        if self.sampler is None:
            nxt = logits.argmax(dim=-1)
        else:
            nxt = self.sampler(logits)
            self.sampler.observe(nxt)
        self.token.copy_(nxt.view(1, 1))
        self.position.add_(1)
        self.seen.add_(1)

    def _mixer(
        self, layer: nn.Module, st: LayerState, cos: torch.Tensor, sin: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        assert isinstance(layer, DecoderLayer)
        mixer = layer.self_attn
        if isinstance(mixer, GatedDeltaNet):
            assert isinstance(st, GDNState)
            return lambda h: mixer(h, st)
        assert isinstance(st, SWAState | FullAttnState)
        return lambda h: attention_step(mixer, h, cos, sin, st, self.seen, self.full_kernel)

    def _sync_counters(self) -> None:
        """Copy the host counters into the device buffers if the state moved outside the graph."""
        st = self.state
        if self._mirror == (st.tokens_seen, st.position):
            return
        self.seen.fill_(_attention_seen(st))
        self.position.fill_(st.position)
        self._mirror = (st.tokens_seen, st.position)

    def _check_room(self, steps: int) -> None:
        for i, st in enumerate(self.state.layers):
            if isinstance(st, FullAttnState) and st.seen + steps > st.k.shape[2]:
                raise StateError(
                    f"layer {i}: full-attention cache holds {st.k.shape[2]} slots, {st.seen} used; "
                    f"reserve room before graph decoding ({steps} more)"
                )

    def step(self, token: int | torch.Tensor | None = None) -> int:
        """Feed one token (None: the one the last step chose) and return the next one.

        Args:
            token: the input token id (an int, or a tensor on the device: no host copy).
        Returns:
            the chosen next token id (also the next step's input).
        """
        self.advance(token)
        self._token_host.copy_(self.token[0], non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return int(self._token_host[0])

    def advance(self, token: int | torch.Tensor | None = None) -> None:
        """:meth:`step` without reading the token back (for timing and batched reads)."""
        self._check_room(1)
        self._sync_counters()
        if token is not None:
            if isinstance(token, torch.Tensor):
                self.token.copy_(token.reshape(1, 1))
            else:
                self.token.fill_(token)
        warmup = self._warmup_left > 0
        self._warmup_left -= int(warmup)
        with torch.no_grad():
            self._runner.run(warmup)
        _advance_host(self.state, 1, 1)
        self._mirror = (self.state.tokens_seen, self.state.position)

    def decode(self, token: int, steps: int) -> list[int]:
        """Feed ``token`` and ``steps - 1`` of the chosen tokens; returns the ``steps`` chosen."""
        out = [self.step(token)]
        out += [self.step() for _ in range(steps - 1)]
        return out


class FrameGraph:
    """The per-frame streaming step: vision tower and decoder over one image's tokens, graphed.

    Every frame has the same size, so its patches, grid and RoPE offsets are static; the decoder
    state must have its final shape first (every sliding-window ring full), so replays write a
    growing window rather than one fixed slot range (the published demo's mistake). Frames fed
    before that go through the model's eager forward. Only the image's pad tokens are fed (no
    logits): a question after the frames goes through the normal forward.

    Args:
        model: the model; ``state``: the session state (as for :class:`DecodeGraph`).
        grid_thw: [1, 3] (t, h, w) patches of every frame, e.g. (1, 32, 32) for 448 x 448.
        use_graph: capture on CUDA (default); False runs the static step eagerly.
        warmup_steps: frames run through the static step eagerly before the capture.
    """

    def __init__(
        self,
        model: InfiniteVLForConditionalGeneration,
        state: ModelState,
        grid_thw: torch.Tensor,
        *,
        use_graph: bool | None = None,
        warmup_steps: int = 1,
    ) -> None:
        if state.batch != 1:
            raise InputError(f"FrameGraph feeds one sequence, the state holds {state.batch}")
        if any(isinstance(st, FullAttnState) for st in state.layers):
            raise InputError("FrameGraph needs a fixed-size state: no full-attention layers")
        self.model, self.state = model, state
        device = model.device
        self.device = device
        cfg = model.config
        self.grid_thw = grid_thw.detach().to("cpu", torch.long).reshape(1, 3)
        t, h, w = (int(v) for v in self.grid_thw[0])
        m = cfg.vision.spatial_merge_size
        self.num_tokens = t * h * w // (m * m)
        self.input_ids = torch.full(
            (1, self.num_tokens), cfg.image_token_id, dtype=torch.long, device=device
        )
        base, self.position_step = rope_index(
            self.input_ids[0].cpu(), self.grid_thw, None, None, 0, cfg
        )
        self.base_positions = base.view(3, 1, -1).to(device)  # [3, 1, T]
        visual = model.model.visual
        self.pixels = torch.zeros(
            t * h * w, visual.patch_dim, dtype=visual.patch_embed.proj.weight.dtype, device=device
        )
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self.seen = torch.zeros((), dtype=torch.long, device=device)
        use_graph = device.type == "cuda" if use_graph is None else use_graph
        self._warmup_left = warmup_steps if use_graph else 0
        self._runner = _Replayable(self._body, device, use_graph)
        self._mirror: tuple[int, int] | None = None

    @property
    def graph(self) -> torch.cuda.CUDAGraph | None:
        return self._runner.graph

    @property
    def is_static(self) -> bool:
        """True once every ring is full: frames then take the static (graphed) step."""
        W = self.model.config.text.sliding_window
        return all(st.seen >= W for st in self.state.layers if isinstance(st, SWAState))

    def _body(self) -> None:
        lm = self.model.model.language_model
        # the vision tower's SDPA calls, without cuDNN's backend (kernels.sdpa)
        with sdpa_context(self.device):
            feats = self.model.model.visual(self.pixels, self.grid_thw)  # [T, hidden]
        x = feats.to(lm.embed_tokens.weight.dtype).unsqueeze(0)  # [1, T, hidden]
        cos, sin = mrope_cos_sin(self.base_positions + self.position, lm.config, x.dtype)
        layers = zip(lm.layers, self.state.layers, strict=True)
        mixers = [self._mixer(layer, st, cos, sin) for layer, st in layers]
        # no logits: nothing after the last layer's token mixer is needed
        lm.run_layers(x, mixers, logits=False)
        self.position.add_(self.position_step)
        self.seen.add_(self.num_tokens)

    def _mixer(
        self, layer: nn.Module, st: LayerState, cos: torch.Tensor, sin: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        assert isinstance(layer, DecoderLayer)
        mixer = layer.self_attn
        if isinstance(mixer, GatedDeltaNet):
            assert isinstance(st, GDNState)
            return lambda h: mixer(h, st)
        assert isinstance(st, SWAState)
        return lambda h: attention_frame(mixer, h, cos, sin, st, self.seen)

    def feed(self, pixel_values: torch.Tensor) -> bool:
        """Feed one frame's patches [t*h*w, C*tp*p*p]; returns True if it took the static step."""
        with torch.no_grad():
            if not self.is_static:
                self.model(
                    self.input_ids,
                    self.state,
                    pixel_values=pixel_values,
                    image_grid_thw=self.grid_thw.to(self.device),
                    logits_to_keep=1,
                )
                return False
            st = self.state
            if self._mirror != (st.tokens_seen, st.position):
                self.seen.fill_(_attention_seen(st))
                self.position.fill_(st.position)
            self.pixels.copy_(pixel_values, non_blocking=True)
            warmup = self._warmup_left > 0
            self._warmup_left -= int(warmup)
            self._runner.run(warmup)
        _advance_host(st, self.num_tokens, self.position_step)
        self._mirror = (st.tokens_seen, st.position)
        return True
