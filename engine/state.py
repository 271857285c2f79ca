"""Session state: what the next token needs from every layer, at a size fixed when it is allocated.

A Gated DeltaNet layer keeps its recurrent matrix and the tails of its three short convolutions, a
sliding-window layer a ring buffer of its last ``W`` keys/values, a full-attention layer (the
Transformer teacher/baseline only) a growing cache. ``ModelState`` adds the multimodal RoPE position
and the token count, and saves/loads itself as safetensors with a checksum. It knows nothing about
the layers' math.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from engine.config import TextConfig
from engine.errors import StateError

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"


@dataclass(slots=True)
class GDNState:
    """One Gated DeltaNet layer: recurrent matrix and short-convolution tails.

    Attributes:
        S: [B, HV, K, V] float32, the delta-rule state.
        conv_q: [B, H*K, conv_size - 1], the last projected q inputs (before the conv).
        conv_k: [B, H*K, conv_size - 1].
        conv_v: [B, HV*V, conv_size - 1].
    """

    S: torch.Tensor
    conv_q: torch.Tensor
    conv_k: torch.Tensor
    conv_v: torch.Tensor

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"S": self.S, "conv_q": self.conv_q, "conv_k": self.conv_k, "conv_v": self.conv_v}


@dataclass(slots=True)
class SWAState:
    """One sliding-window layer: a ring buffer of the last ``W`` keys/values (after RoPE).

    Attributes:
        k: [B, H_kv, W, D]; token ``i`` lives in slot ``i % W``.
        v: [B, H_kv, W, D].
        seen: tokens written so far (the next one goes to slot ``seen % W``).
        pads: None, or [B] int64: row ``b``'s first ``pads[b]`` tokens are padding that attention
            skips (rows of prompts of different lengths aligned to one ``seen`` to decode as one
            batch: ``engine.model.stack_rows``). Such a state decodes one token at a time.
    """

    k: torch.Tensor
    v: torch.Tensor
    seen: int = 0
    pads: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"k": self.k, "v": self.v}


@dataclass(slots=True)
class FullAttnState:
    """One full-attention layer: every key/value so far. Grows; for the Transformer baseline only.

    Attributes:
        k: [B, H_kv, capacity, D]; the first ``seen`` slots are valid.
        v: [B, H_kv, capacity, D].
        seen: tokens written so far.
    """

    k: torch.Tensor
    v: torch.Tensor
    seen: int = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` [B, H_kv, T, D] (detached) and return all valid keys/values so far.

        The buffer doubles when full, so appends cost amortised O(T).
        """
        T = k.shape[2]
        need = self.seen + T
        if need > self.k.shape[2]:
            capacity = max(need, 2 * self.k.shape[2], 16)
            self.k = _grow(self.k, capacity, self.seen)
            self.v = _grow(self.v, capacity, self.seen)
        self.k[:, :, self.seen : need].copy_(k.detach())
        self.v[:, :, self.seen : need].copy_(v.detach())
        self.seen = need
        return self.k[:, :, :need], self.v[:, :, :need]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"k": self.k[:, :, : self.seen], "v": self.v[:, :, : self.seen]}


def _grow(buf: torch.Tensor, capacity: int, valid: int) -> torch.Tensor:
    out = buf.new_zeros((*buf.shape[:2], capacity, buf.shape[3]))
    out[:, :, :valid].copy_(buf[:, :, :valid])
    return out


def _fits(out: ModelState, state: ModelState, rows: int) -> bool:
    """Whether ``out`` can take ``rows`` rows of ``state`` (``ModelState.select``)."""
    if out is state or out.layer_types != state.layer_types or out.batch < rows:
        return False
    return all(
        not isinstance(a, FullAttnState)
        and all(
            x.shape[1:] == y.shape[1:] and x.dtype == y.dtype and x.data_ptr() != y.data_ptr()
            for x, y in zip(a.tensors().values(), b.tensors().values(), strict=True)
        )
        for a, b in zip(out.layers, state.layers, strict=True)
    )


def _select_rows(t: torch.Tensor, index: torch.Tensor, into: torch.Tensor | None) -> torch.Tensor:
    if into is None:
        return t.index_select(0, index)
    return torch.index_select(t, 0, index, out=into[: index.numel()])


def _select_slots(
    buf: torch.Tensor, index: torch.Tensor, seen: int, into: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows ``index`` of a cache ``buf`` [B, H_kv, slots, D] of which ``seen`` tokens were
    written: only the written slots are copied (a beam search over a short prompt copies a few
    dozen of a 512-slot ring each step, not all of it); the others are zero, as in a new state
    (``into``, when given, has them zero already)."""
    written = min(seen, buf.shape[2])
    if written == buf.shape[2]:
        return _select_rows(buf, index, into)
    rows = index.numel()
    out = buf.new_zeros((rows, *buf.shape[1:])) if into is None else into[:rows]
    out[:, :, :written] = buf[:, :, :written].index_select(0, index)
    return out


def _joined_pads(rings: Sequence[SWAState]) -> torch.Tensor | None:
    """The padding of rings stacked in order: None when none has any, else zero for theirs."""
    if all(r.pads is None for r in rings):
        return None
    return torch.cat(
        [r.k.new_zeros(r.k.shape[0], dtype=torch.long) if r.pads is None else r.pads for r in rings]
    )


LayerState = GDNState | SWAState | FullAttnState


def layer_state_shapes(
    config: TextConfig, layer_type: str, batch: int
) -> dict[str, tuple[int, ...]]:
    """Shapes of one layer's state tensors (a full-attention layer: at zero tokens)."""
    B = batch
    if layer_type == "linear_attention":
        H, K, V = config.num_linear_heads, config.linear_head_dim, config.linear_value_head_dim
        tail = config.conv_size - 1
        return {
            "S": (B, H, K, V),
            "conv_q": (B, H * K, tail),
            "conv_k": (B, H * K, tail),
            "conv_v": (B, H * V, tail),
        }
    Hkv, D = config.num_key_value_heads, config.head_dim
    if layer_type == "sliding_attention":
        W = config.sliding_window
        return {"k": (B, Hkv, W, D), "v": (B, Hkv, W, D)}
    if layer_type == "full_attention":
        return {"k": (B, Hkv, 0, D), "v": (B, Hkv, 0, D)}
    raise StateError(f"unknown layer type {layer_type!r}")


def _new_layer_state(
    config: TextConfig, layer_type: str, batch: int, device: torch.device, dtype: torch.dtype
) -> LayerState:
    shapes = layer_state_shapes(config, layer_type, batch)
    if layer_type == "linear_attention":
        # the recurrent matrix accumulates over the whole session: always float32
        return GDNState(
            S=torch.zeros(shapes["S"], device=device, dtype=torch.float32),
            conv_q=torch.zeros(shapes["conv_q"], device=device, dtype=dtype),
            conv_k=torch.zeros(shapes["conv_k"], device=device, dtype=dtype),
            conv_v=torch.zeros(shapes["conv_v"], device=device, dtype=dtype),
        )
    k = torch.zeros(shapes["k"], device=device, dtype=dtype)
    v = torch.zeros(shapes["v"], device=device, dtype=dtype)
    return SWAState(k, v) if layer_type == "sliding_attention" else FullAttnState(k, v)


@dataclass(slots=True)
class ModelState:
    """Everything a session carries between calls: one state per layer plus the RoPE position.

    Attributes:
        layers: one ``GDNState`` / ``SWAState`` / ``FullAttnState`` per decoder layer.
        layer_types: the config's ``layer_types`` the state was built for.
        position: the text RoPE position the next token gets (Qwen2.5-VL's 3-D positions make it
            differ from ``tokens_seen`` once images were fed).
        tokens_seen: tokens fed so far.
    """

    layers: list[LayerState]
    layer_types: tuple[str, ...]
    position: int = 0
    tokens_seen: int = 0

    @classmethod
    def new(
        cls,
        config: TextConfig,
        batch: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> ModelState:
        """A zero state for ``batch`` sequences (activations in ``dtype``, S in float32)."""
        if batch <= 0:
            raise StateError(f"batch must be positive, got {batch}")
        device = torch.device(device) if device is not None else torch.device("cpu")
        layers = [_new_layer_state(config, t, batch, device, dtype) for t in config.layer_types]
        return cls(layers, tuple(config.layer_types))

    @property
    def batch(self) -> int:
        return next(iter(self.layers[0].tensors().values())).shape[0]

    def clone(self) -> ModelState:
        """An independent copy: feeding either afterwards leaves the other unchanged."""
        layers: list[LayerState] = []
        for st in self.layers:
            if isinstance(st, GDNState):
                layers.append(GDNState(*(t.clone() for t in st.tensors().values())))
            elif isinstance(st, SWAState):
                pads = None if st.pads is None else st.pads.clone()
                layers.append(SWAState(st.k.clone(), st.v.clone(), st.seen, pads))
            else:
                layers.append(FullAttnState(st.k.clone(), st.v.clone(), st.seen))
        return ModelState(layers, self.layer_types, self.position, self.tokens_seen)

    def zeros_like(self, batch: int) -> ModelState:
        """A zero state of ``batch`` rows with this one's layers, cache sizes, dtypes and device
        (a full-attention cache starts empty)."""
        layers: list[LayerState] = []
        for st in self.layers:
            if isinstance(st, FullAttnState):
                empty = (batch, st.k.shape[1], 0, st.k.shape[3])
                layers.append(FullAttnState(st.k.new_zeros(empty), st.v.new_zeros(empty)))
                continue
            zeros = {n: t.new_zeros((batch, *t.shape[1:])) for n, t in st.tensors().items()}
            if isinstance(st, GDNState):
                layers.append(GDNState(**zeros))
            else:
                layers.append(SWAState(zeros["k"], zeros["v"]))
        return ModelState(layers, self.layer_types)

    def select(self, rows: Sequence[int], out: ModelState | None = None) -> ModelState:
        """A state whose row ``i`` is a copy of this state's row ``rows[i]`` (beam search: the
        beams kept at a step, from the rows they continue).

        Args:
            out: where to copy, instead of new tensors: a state of at least ``len(rows)`` rows,
                other than this one, with caches of the same sizes, whose cache slots past this
                state's written ones are zero (a new state, or one this search selected into
                before: it has written fewer slots). Its first ``len(rows)`` rows become the
                returned state, which shares their memory; ignored when it does not fit.
        """
        device = next(iter(self.layers[0].tensors().values())).device
        index = torch.tensor(list(rows), dtype=torch.long, device=device)
        if out is not None and not _fits(out, self, len(rows)):
            out = None
        layers: list[LayerState] = []
        for i, st in enumerate(self.layers):
            into = None if out is None else out.layers[i].tensors()
            if isinstance(st, GDNState):
                taken = {
                    name: _select_rows(t, index, None if into is None else into[name])
                    for name, t in st.tensors().items()
                }
                layers.append(GDNState(**taken))
            else:
                k = _select_slots(st.k, index, st.seen, None if into is None else into["k"])
                v = _select_slots(st.v, index, st.seen, None if into is None else into["v"])
                if isinstance(st, SWAState):
                    pads = None if st.pads is None else st.pads.index_select(0, index)
                    layers.append(SWAState(k, v, st.seen, pads))
                else:
                    layers.append(FullAttnState(k, v, st.seen))
        return ModelState(layers, self.layer_types, self.position, self.tokens_seen)

    @classmethod
    def stack(cls, states: Sequence[ModelState]) -> ModelState:
        """One state whose rows are the rows of ``states``, in order (copies, padding included):
        sequences that have read prompts of the same geometry, or were aligned to one
        (``engine.model.stack_rows``), decoded together (``engine.engine.
        beam_generate_together``).

        Raises:
            StateError: no states, or states that differ in layers, position, tokens seen, a
                ring's fill or a full-attention cache (their rows could not step as one).
        """
        if not states:
            raise StateError("stack: no states given")
        first = states[0]
        if any(isinstance(st, FullAttnState) for st in first.layers):
            raise StateError("stack: a full-attention cache grows per sequence; it cannot stack")
        for other in states[1:]:
            same = (
                other.layer_types == first.layer_types
                and (other.position, other.tokens_seen) == (first.position, first.tokens_seen)
                and all(
                    getattr(a, "seen", None) == getattr(b, "seen", None)
                    for a, b in zip(other.layers, first.layers, strict=True)
                )
            )
            if not same:
                raise StateError(
                    f"stack: states must share layers, position ({first.position} vs "
                    f"{other.position}), tokens seen ({first.tokens_seen} vs "
                    f"{other.tokens_seen}) and each ring's fill"
                )
        layers: list[LayerState] = []
        for i, st in enumerate(first.layers):
            rows = [s.layers[i].tensors() for s in states]
            joined = {name: torch.cat([r[name] for r in rows]) for name in st.tensors()}
            if isinstance(st, GDNState):
                layers.append(GDNState(**joined))
            else:
                rings = [cast(SWAState, s.layers[i]) for s in states]  # the layer types are equal
                layers.append(SWAState(joined["k"], joined["v"], st.seen, _joined_pads(rings)))
        return cls(layers, first.layer_types, first.position, first.tokens_seen)

    def has_pads(self) -> bool:
        """Whether rows were aligned with padding (``SWAState.pads``)."""
        return any(isinstance(st, SWAState) and st.pads is not None for st in self.layers)

    def nbytes(self) -> int:
        """Bytes held by the state's tensors (a full-attention cache counts its allocated size)."""
        total = 0
        for st in self.layers:
            if isinstance(st, GDNState):
                total += sum(t.nbytes for t in st.tensors().values())
            else:
                total += st.k.nbytes + st.v.nbytes
        return total

    def _flat(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, st in enumerate(self.layers):
            for name, t in st.tensors().items():
                out[f"layers.{i}.{name}"] = t.detach().contiguous()
        return out

    def _header(self, fingerprint: str) -> dict[str, str]:
        seen = [st.seen if not isinstance(st, GDNState) else -1 for st in self.layers]
        return {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "tokens_seen": str(self.tokens_seen),
            "position": str(self.position),
            "layer_types": json.dumps(list(self.layer_types)),
            "seen": json.dumps(seen),
        }

    def save(self, path: str | Path, fingerprint: str) -> None:
        """Write the state to ``path`` atomically (temp name, fsync, rename).

        Args:
            path: destination ``.safetensors`` file.
            fingerprint: the model's fingerprint (config and weights); ``load`` insists on it.
        """
        if self.has_pads():
            raise StateError("a state of rows aligned with padding is a search's, never saved")
        path = Path(path)
        tensors = {k: v.cpu() for k, v in self._flat().items()}
        meta = self._header(fingerprint)
        meta["checksum"] = _checksum(meta, tensors)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            save_file(tensors, str(tmp), metadata=meta)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        _fsync_dir(path.parent)
        log.info("saved state (%d tokens, %d bytes) to %s", self.tokens_seen, self.nbytes(), path)

    @classmethod
    def load(
        cls,
        path: str | Path,
        fingerprint: str,
        config: TextConfig,
        device: torch.device | str | None = None,
    ) -> ModelState:
        """Read a state written by :meth:`save` for the model with ``fingerprint`` and ``config``.

        Raises:
            StateError: the file is missing, truncated or tampered with, belongs to another model,
                or holds tensors whose names, shapes or dtypes do not fit ``config``.
        """
        path = Path(path)
        if not path.is_file():
            raise StateError(f"no state file at {path}")
        tensors, meta = _read(path)
        if meta.get("format") != FORMAT_VERSION:
            raise StateError(
                f"{path}: state format {meta.get('format')!r}, expected {FORMAT_VERSION}"
            )
        if meta.get("fingerprint") != fingerprint:
            raise StateError(
                f"{path}: state belongs to model {meta.get('fingerprint')!r}, not {fingerprint!r}"
            )
        expected = meta.get("checksum")
        actual = _checksum({k: v for k, v in meta.items() if k != "checksum"}, tensors)
        if expected != actual:
            raise StateError(
                f"{path}: checksum mismatch (file {expected}, content {actual}): damaged"
            )
        try:
            layer_types = tuple(json.loads(meta["layer_types"]))
            seen = json.loads(meta["seen"])
            position, tokens_seen = int(meta["position"]), int(meta["tokens_seen"])
        except (KeyError, ValueError) as exc:
            raise StateError(f"{path}: unreadable metadata ({exc})") from exc
        if layer_types != tuple(config.layer_types):
            raise StateError(
                f"{path}: state layer_types {list(layer_types)} != model {list(config.layer_types)}"
            )
        device = torch.device(device) if device is not None else torch.device("cpu")
        layers = _layers_from_tensors(path, tensors, seen, config, device)
        return cls(layers, layer_types, position, tokens_seen)


def _layers_from_tensors(
    path: Path,
    tensors: dict[str, torch.Tensor],
    seen: list[int],
    config: TextConfig,
    device: torch.device,
) -> list[LayerState]:
    names = {f"layers.{i}.{n}" for i, t in enumerate(config.layer_types) for n in _names(t)}
    if set(tensors) != names or len(seen) != len(config.layer_types):
        raise StateError(
            f"{path}: tensors {sorted(set(tensors) ^ names)} missing or unexpected for this model"
        )
    batch = tensors["layers.0." + _names(config.layer_types[0])[0]].shape[0]
    layers: list[LayerState] = []
    for i, layer_type in enumerate(config.layer_types):
        shapes = layer_state_shapes(config, layer_type, batch)
        got = {n: tensors[f"layers.{i}.{n}"] for n in shapes}
        for n, shape in shapes.items():
            want = list(shape)
            if layer_type == "full_attention":
                want[2] = seen[i]
            if list(got[n].shape) != want:
                raise StateError(
                    f"{path}: layers.{i}.{n} has shape {list(got[n].shape)}, model expects {want}"
                )
        if layer_type == "linear_attention" and got["S"].dtype != torch.float32:
            raise StateError(f"{path}: layers.{i}.S is {got['S'].dtype}, expected torch.float32")
        got = {n: t.to(device) for n, t in got.items()}
        if layer_type == "linear_attention":
            layers.append(GDNState(**got))
        elif layer_type == "sliding_attention":
            layers.append(SWAState(got["k"], got["v"], seen[i]))
        else:
            layers.append(FullAttnState(got["k"], got["v"], seen[i]))
    return layers


def _names(layer_type: str) -> tuple[str, ...]:
    return ("S", "conv_q", "conv_k", "conv_v") if layer_type == "linear_attention" else ("k", "v")


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise StateError(f"{path}: not a readable state file ({exc})") from exc
    return tensors, meta


def _checksum(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the metadata and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.debug("fsync of %s failed: %s", directory, exc)
    finally:
        os.close(fd)
