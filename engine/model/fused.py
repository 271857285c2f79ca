"""Sibling projections of one input read as one matrix, for calls without grad.

A decode token reads every weight once, and a batch-1 matrix-vector product pays a fixed cost per
launch: Gated DeltaNet's q/k/v/a/b/g, attention's q/k/v and the MLP's gate/up are each read as one
matrix (one launch instead of six, three, two). Chat turns and streamed frames (a few hundred
tokens) gain the same way: a 448x448 frame's decoder ran six GEMMs a Gated DeltaNet layer, two of
them (a and b) with 32 output columns, likely the profile's 54 launches of ~5 us of a small-tile
cuBLAS kernel (benchmarks/RESULTS_decode_profile.md, commit eee863e).

The fused matrix is the storage of the original parameters: each ``nn.Linear.weight`` (and bias)
becomes a row-block view of it. So the published names, shapes and ``state_dict`` stay as they
are, no memory is duplicated, and in-place updates (``load_state_dict`` copying into the
parameters, an optimiser step) reach the fused matrix by themselves. A parameter or module
replaced outright (``load_state_dict(assign=True)``, ``.to()``, a quantized or adapted module) is
noticed by its identity or address and the matrix rebuilt on the next call, or the layer falls
back to its separate projections when they are no longer plain ``nn.Linear`` of one dtype and
device.
"""

from __future__ import annotations

import logging
import os
from typing import cast

import torch
from torch import nn

from kernels import gemv, splitk

log = logging.getLogger(__name__)

# the layers' default for ``fuse_decode``; INFINITEVL_FUSED_DECODE=0 starts with the separate ops
FUSED_DECODE_DEFAULT = os.environ.get("INFINITEVL_FUSED_DECODE", "1") != "0"


def identity_of(mods: list[nn.Module]) -> tuple[int, ...]:
    """What a fuse saw of ``mods``: the ids of the modules and of their weight and bias
    Parameters, and where each points. A replaced Parameter, or a ``.data`` moved by ``.to()``,
    changes it; the fused storage stays alive, so no address is reused."""
    seen: list[int] = []
    for m in mods:
        seen.append(id(m))
        for name in ("weight", "bias"):
            p = m._parameters.get(name)
            seen += [id(p), 0 if p is None else p.data_ptr()]
    return tuple(seen)


def restorable(mods: list[nn.Module]) -> bool:
    """Whether the weights of ``mods`` may be moved into one new storage: exactly ``nn.Linear``
    (a quantized or adapted subclass computes something else), plain tensors (a sharded DTensor
    or otherwise managed parameter is left alone), one dtype and device, not meta."""
    if not all(type(m) is nn.Linear for m in mods):
        return False
    if any(type(p.data) is not torch.Tensor for m in mods for p in m.parameters()):
        return False
    weights = [cast("nn.Linear", m).weight for m in mods]
    w0 = weights[0]
    same = all(w.dtype == w0.dtype and w.device == w0.device for w in weights)
    return same and w0.device.type != "meta"


class FusedLinear:
    """One matrix over the ``nn.Linear`` children ``names`` of a module (all with or without bias).

    Args:
        names: attribute names of the projections, in output order.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.weight: torch.Tensor | None = None  # [sum of out_features, in_features]
        self.bias: torch.Tensor | None = None  # [sum of out_features] or None
        self.sizes: tuple[int, ...] = ()
        # what the last fuse saw, for the per-call check: the ids of the modules and of their
        # weight and bias Parameters, and where each points (a replaced Parameter, or a ``.data``
        # moved by ``.to()``, changes it; the fused storage stays alive, so no address is reused);
        # ``_held`` keeps those objects alive so that no id can be reused meanwhile
        self._seen: tuple[int, ...] = ()
        self._held: tuple[object, ...] = ()

    def _linears(self, owner: nn.Module) -> list[nn.Linear] | None:
        mods = [getattr(owner, n) for n in self.names]
        if not restorable(mods):
            return None
        has_bias = mods[0].bias is not None
        if any((m.bias is not None) != has_bias for m in mods):
            return None
        return mods

    def matrices(self, owner: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The fused (weight, bias), rebuilt if the projections were replaced; None if unfusable."""
        if self.weight is not None:
            # the decode step's check, kept cheap (it runs for every layer and token): the same
            # modules holding the same Parameters at the same addresses as when fused
            children = owner._modules
            # the projections are registered modules, never None entries of _modules
            current = cast("list[nn.Module]", [children[n] for n in self.names])
            if identity_of(current) == self._seen:
                assert self.weight is not None
                return self.weight, self.bias
        mods = self._linears(owner)
        if mods is None:
            # let go of the old projections too: nothing here may keep replaced weights alive
            self.weight = self.bias = None
            self._seen, self._held = (), ()
            return None
        self._fuse(mods)
        assert self.weight is not None
        return self.weight, self.bias

    @torch.no_grad()
    def _fuse(self, mods: list[nn.Linear]) -> None:
        self.sizes = tuple(m.out_features for m in mods)
        # the new storage first, then each parameter repointed at its block: the old storage is
        # freed as each parameter lets go of it (nothing else holds these weights)
        weight = torch.cat([m.weight.detach() for m in mods], dim=0)
        for m, block in zip(mods, weight.split(self.sizes, dim=0), strict=True):
            m.weight.data = block
        bias = None
        if mods[0].bias is not None:
            bias = torch.cat([m.bias.detach() for m in mods], dim=0)  # type: ignore[union-attr]
            for m, part in zip(mods, bias.split(self.sizes, dim=0), strict=True):
                assert m.bias is not None
                m.bias.data = part
        self.weight, self.bias = weight, bias
        self._seen = identity_of(list(mods))
        self._held = tuple(mods) + tuple(p for m in mods for p in m._parameters.values())
        log.debug("fused %s: %s rows", self.names, self.sizes)

    def product(self, owner: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """The projections of ``x`` as one tensor [..., sum of out_features] (the fused matrix's
        product, through ``kernels.gemv``); None when the projections cannot be fused."""
        fused = self.matrices(owner)
        if fused is None:
            return None
        return gemv.linear(x, *fused)

    def __call__(self, owner: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each projection of ``x`` [..., in] (a view of one product when fused)."""
        whole = self.product(owner, x)
        if whole is None:
            return tuple(getattr(owner, n)(x) for n in self.names)
        return whole.split(self.sizes, dim=-1)


def decode_linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for the decode step: a plain ``nn.Linear`` goes through ``kernels.gemv``
    (the Triton GEMV for one row on CUDA where it measures faster); a quantized or adapted
    layer computes itself."""
    if type(module) is nn.Linear:
        return gemv.linear(x, module.weight, module.bias)
    return module(x)


def rows_linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for a prompt's or a frame's rows: a plain ``nn.Linear`` goes through
    ``kernels.splitk`` (a few hundred rows on CUDA split along K where that measures faster than
    cuBLAS, ``F.linear`` everywhere else); a quantized or adapted layer computes itself."""
    if type(module) is nn.Linear:
        return splitk.linear(x, module.weight, module.bias)
    return module(x)


def set_fused_decode(model: nn.Module, enabled: bool) -> None:
    """Turn the fused decode path of every layer of ``model`` on or off (tests, comparisons)."""
    for module in model.modules():
        if hasattr(module, "fuse_decode"):
            setattr(module, "fuse_decode", enabled)  # noqa: B010 (an attribute nn.Module types)
