"""Weight quantization: pure quantize/dequantize functions and ``quantize_(model, predicate)``.

``quantize_`` swaps ``nn.Linear`` modules for quantized ones (int8 per output row, int4 per group
of 128 inputs, NF4 per block of 64 values; formats in ``kernels/qlinear/reference.py``). On a
model built on the ``meta`` device it makes empty layers of the right shapes, which is how the
loader reads a quantized checkpoint: build, swap, then assign the stored tensors. On CUDA, NF4 and
int8 layers become bitsandbytes layers computing in bfloat16. Layers kept in higher precision:
``KEEP_IN_FLOAT`` (docs/quantization.md says why). Knows nothing of files or sessions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import ConfigError, EngineError
from kernels import qlinear
from kernels.qlinear import cpu as qcpu
from kernels.qlinear import reference

log = logging.getLogger(__name__)

METHODS = ("int8", "int8-dynamic", "int4", "nf4")
# quantizations whose CUDA layers cannot be captured in a CUDA graph: bitsandbytes' LLM.int8
# splits out the activations' outlier columns, a data-dependent shape (a host sync each call).
# NF4 (bitsandbytes' 4-bit GEMV) and int4 (dequantize, then matmul) decode through the graph.
EAGER_QUANT_ON_CUDA = ("int8", "int8-dynamic")
INT4_GROUP_SIZE = 128
NF4_BLOCK_SIZE = 64
# buffers that stay float32 whatever dtype the model is loaded in
FLOAT32_BUFFERS = ("weight_scale", "weight_zero", "weight_absmax")
# module names (suffixes) that stay in the model's float dtype: docs/quantization.md
KEEP_IN_FLOAT = (
    # the head is the embedding table (tied): a quantized copy would add memory, not save it
    "lm_head",
    # Gated DeltaNet decay and write-strength gates: 2 x heads outputs per layer (0.03% of the
    # weights); their error goes through exp() into every future token of the state
    "a_proj",
    "b_proj",
)

dequantize_int8 = reference.dequantize_int8
dequantize_int4 = reference.dequantize_int4
dequantize_nf4 = reference.dequantize_nf4

Predicate = Callable[[str, nn.Linear], bool]
_NO_BITSANDBYTES = (
    "NF4/int8 on CUDA needs bitsandbytes: .venv/bin/pip install -c constraints.txt -e '.[quant]'"
)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: w [N, K] -> (codes int8 [N, K], scale float32 [N])."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(
    w: torch.Tensor, group_size: int = INT4_GROUP_SIZE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit per group of inputs (tinygemm's convention: w = (q - 8) * scale + zero).

    Args:
        w: [N, K], K a multiple of ``group_size``.
    Returns:
        (codes uint8 [N, K / 2], scale float32 [N, K / G], zero float32 [N, K / G]).
    """
    N, K = w.shape
    if K % group_size:
        raise ValueError(f"int4: {K} inputs are not whole groups of {group_size}")
    g = w.detach().float().view(N, K // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale = ((hi - lo) / 15).clamp_min(1e-12)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).view(N, K)
    zero = lo + reference.INT4_OFFSET * scale
    return reference.pack_nibbles(q), scale, zero


def quantize_nf4(
    w: torch.Tensor, block_size: int = NF4_BLOCK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """NF4 (QLoRA) over blocks of ``block_size`` values of the flattened weight.

    Returns:
        (codes uint8 [ceil(N K / 2)], absmax float32 [ceil(N K / block_size)]).
    """
    flat = w.detach().float().flatten()
    n_blocks = -(-flat.numel() // block_size)
    blocks = F.pad(flat, (0, n_blocks * block_size - flat.numel())).view(n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1).clamp_min(1e-12)
    code = torch.tensor(reference.NF4_CODE, device=w.device)
    mids = (code[1:] + code[:-1]) / 2
    q = torch.bucketize(blocks / absmax[:, None], mids).flatten()[: flat.numel()]
    if q.numel() % 2:
        q = F.pad(q, (0, 1))
    return reference.pack_nibbles(q), absmax


def int4_group_size(in_features: int, preferred: int = INT4_GROUP_SIZE) -> int | None:
    """The group size int4 uses for a layer: ``preferred`` or a smaller power of two dividing K."""
    size = preferred
    while size >= 32:
        if in_features % size == 0:
            return size
        size //= 2
    return None


class QuantLinear(nn.Module):
    """Base of the quantized linear layers: shapes, bias, and the float weight they stand for."""

    method = ""

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def dequantize(self) -> torch.Tensor:
        """The weight these codes stand for: float32 [out_features, in_features]."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, {self.method}, bias={self.bias is not None}"
        )


class Int8Linear(QuantLinear):
    """int8 codes per output row.

    On the CPU, "int8" runs torch's weight-only kernel (bf16 activations); "int8-dynamic" runs
    fbgemm's dynamic GEMM, which also quantizes each call's activations (faster, less exact:
    docs/quantization.md). fbgemm's packing replaces the codes in memory; saving unpacks them.
    """

    weight: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(
        self,
        weight: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        dynamic: bool = False,
    ) -> None:
        super().__init__(weight.shape[1], weight.shape[0], bias)
        self.method = "int8-dynamic" if dynamic else "int8"
        self.register_buffer("weight", weight)  # int8 [N, K]
        self.register_buffer("weight_scale", scale)  # float32 [N]
        self._packed: torch.ScriptObject | None = None

    @classmethod
    def empty(
        cls, n: int, k: int, bias: torch.Tensor | None, device: torch.device, *, dynamic: bool
    ) -> Int8Linear:
        return cls(
            torch.empty(n, k, dtype=torch.int8, device=device),
            torch.empty(n, device=device),
            bias,
            dynamic=dynamic,
        )

    def dequantize(self) -> torch.Tensor:
        return dequantize_int8(*self._codes())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "int8-dynamic" and x.device.type == "cpu":
            if self._packed is None:
                self._packed = qcpu.pack_int8_dynamic(self.weight, self.weight_scale)
                if self._packed is not None:
                    self.weight = torch.empty(0, dtype=torch.int8)
            if self._packed is not None:
                return qcpu.int8_linear_dynamic(x, self._packed, self.bias)
        return qlinear.int8_linear(x, self.weight, self.weight_scale, self.bias)

    def _codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._packed is not None:
            return qcpu.unpack_int8_dynamic(self._packed)
        return self.weight, self.weight_scale

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._packed is not None:
            destination[prefix + "weight"] = self._codes()[0]


class Int4Linear(QuantLinear):
    """4-bit codes per group of inputs; torch's int4 kernel on the CPU where the shape allows.

    The CPU kernel's layout depends on the machine, so the layer packs it at its first CPU call
    and then drops the portable codes (one copy of the weights in memory): such a layer can no
    longer be saved, so save right after :func:`quantize_`, before running the model.
    """

    weight: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero: torch.Tensor

    method = "int4"

    def __init__(
        self,
        weight: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> None:
        super().__init__(weight.shape[1] * 2, weight.shape[0], bias)
        self.register_buffer("weight", weight)  # uint8 [N, K / 2]
        self.register_buffer("weight_scale", scale)  # float32 [N, K / G]
        self.register_buffer("weight_zero", zero)  # float32 [N, K / G]
        self.group_size = self.in_features // scale.shape[1]
        self._packed: torch.Tensor | None = None
        self._scales_zeros: torch.Tensor | None = None

    @classmethod
    def empty(
        cls, n: int, k: int, group_size: int, bias: torch.Tensor | None, device: torch.device
    ) -> Int4Linear:
        return cls(
            torch.empty(n, k // 2, dtype=torch.uint8, device=device),
            torch.empty(n, k // group_size, device=device),
            torch.empty(n, k // group_size, device=device),
            bias,
        )

    def dequantize(self) -> torch.Tensor:
        self._check_portable()
        return dequantize_int4(self.weight, self.weight_scale, self.weight_zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and qcpu.supports_int4(
            self.out_features, self.in_features, self.group_size
        ):
            if self._packed is None:
                self._packed = qcpu.pack_int4(self.weight, self.weight_scale, self.weight_zero)
                self._scales_zeros = qcpu.scales_and_zeros(self.weight_scale, self.weight_zero)
                self.weight = torch.empty(0, dtype=torch.uint8)
            assert self._scales_zeros is not None
            return qcpu.int4_linear(x, self._packed, self._scales_zeros, self.group_size, self.bias)
        self._check_portable()
        return reference.int4_linear(x, self.weight, self.weight_scale, self.weight_zero, self.bias)

    def _check_portable(self) -> None:
        if self._packed is not None:
            raise EngineError(
                "this int4 layer holds only the CPU kernel's packing (it ran on the CPU): "
                "quantize the float checkpoint again to save or move it"
            )

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        self._check_portable()
        super()._save_to_state_dict(destination, prefix, keep_vars)


class NF4Linear(QuantLinear):
    """NF4 codes per block of 64 values (bitsandbytes' format on CUDA; the reference elsewhere)."""

    weight: torch.Tensor
    weight_absmax: torch.Tensor

    method = "nf4"

    def __init__(
        self,
        weight: torch.Tensor,
        absmax: torch.Tensor,
        shape: tuple[int, int],
        block_size: int,
        bias: torch.Tensor | None,
    ) -> None:
        super().__init__(shape[1], shape[0], bias)
        self.block_size = block_size
        self.register_buffer("weight", weight)  # uint8 [ceil(N K / 2)]
        self.register_buffer("weight_absmax", absmax)  # float32 [ceil(N K / B)]

    @classmethod
    def empty(
        cls, n: int, k: int, block_size: int, bias: torch.Tensor | None, device: torch.device
    ) -> NF4Linear:
        return cls(
            torch.empty(-(-n * k // 2), dtype=torch.uint8, device=device),
            torch.empty(-(-n * k // block_size), device=device),
            (n, k),
            block_size,
            bias,
        )

    def dequantize(self) -> torch.Tensor:
        shape = (self.out_features, self.in_features)
        return dequantize_nf4(self.weight, self.weight_absmax, shape, self.block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference.nf4_linear(
            x, self.weight, self.weight_absmax, self.out_features, self.block_size, self.bias
        )


@dataclass(frozen=True, slots=True)
class QuantConfig:
    """What ``quantize_`` did, as config.json's ``quantization_config`` records it."""

    method: str
    modules: tuple[str, ...]  # names of the quantized linear layers
    group_size: int = INT4_GROUP_SIZE
    block_size: int = NF4_BLOCK_SIZE

    @classmethod
    def from_hf(cls, raw: Any) -> QuantConfig:
        if not isinstance(raw, dict) or raw.get("quant_method") != "infinitevl":
            raise ConfigError(
                f"quantization_config {raw!r} is not one this engine wrote "
                "(quant_method 'infinitevl'): re-quantize with `infinitevl quantize`"
            )
        method = raw.get("method")
        if method not in METHODS:
            raise ConfigError(
                f"quantization_config: method must be one of {METHODS}, got {method!r}"
            )
        modules = raw.get("modules")
        if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
            raise ConfigError("quantization_config: 'modules' must be a list of layer names")
        return cls(
            method,
            tuple(modules),
            int(raw.get("group_size", INT4_GROUP_SIZE)),
            int(raw.get("block_size", NF4_BLOCK_SIZE)),
        )

    def to_hf(self) -> dict[str, Any]:
        return {
            "quant_method": "infinitevl",
            "method": self.method,
            "group_size": self.group_size,
            "block_size": self.block_size,
            "modules": list(self.modules),
        }


def default_predicate(name: str, module: nn.Linear) -> bool:
    """Quantize every linear layer but those ``KEEP_IN_FLOAT`` names."""
    return name.rsplit(".", 1)[-1] not in KEEP_IN_FLOAT


def quantize_(
    model: nn.Module,
    predicate: Predicate = default_predicate,
    method: str = "int8",
    *,
    group_size: int = INT4_GROUP_SIZE,
    block_size: int = NF4_BLOCK_SIZE,
    modules: tuple[str, ...] | None = None,
    device: torch.device | str | None = None,
) -> QuantConfig:
    """Swap the model's ``nn.Linear`` layers for quantized ones, in place.

    Args:
        model: a model with float weights, or one built on ``meta`` (empty quantized layers).
        predicate: ``(name, linear) -> bool``, which layers to quantize.
        method: "int8", "int8-dynamic" (activations quantized too, on the CPU), "int4" or "nf4".
        group_size, block_size: int4's group of inputs, NF4's block of values.
        modules: exactly these layers (a stored ``QuantConfig``); overrides ``predicate``.
        device: a CUDA device makes NF4 and int8 layers bitsandbytes layers there, straight from
            the float weights (the same codes; such a model runs but cannot be saved).
    Returns:
        the ``QuantConfig``, also set as ``model.quantization``.
    """
    if method not in METHODS:
        raise ValueError(f"quantization method must be one of {METHODS}, got {method!r}")
    wanted = set(modules) if modules is not None else None
    target = None if device is None else torch.device(device)
    use_bnb = target is not None and target.type == "cuda" and method != "int4"
    if use_bnb and not qlinear.has_bitsandbytes():
        raise EngineError(_NO_BITSANDBYTES)
    done: list[str] = []
    for name, linear in list(model.named_modules()):
        if type(linear) is not nn.Linear:
            continue
        if wanted is not None and name not in wanted:
            continue
        if wanted is None and not predicate(name, linear):
            continue
        if use_bnb:
            assert target is not None and not linear.weight.is_meta
            _set_module(model, name, _bitsandbytes(method, linear.weight, linear.bias, target))
            done.append(name)
            continue
        layer = _quantized(linear, method, group_size, block_size)
        if layer is None:
            if wanted is not None:
                raise ConfigError(f"{name}: shape {list(linear.weight.shape)} cannot be {method}")
            log.info("%s kept in float: %s cannot be %s", name, list(linear.weight.shape), method)
            continue
        _set_module(model, name, layer)
        done.append(name)
    if wanted is not None and set(done) != wanted:
        raise ConfigError(
            f"quantization_config names layers the model lacks: {sorted(wanted - set(done))}"
        )
    config = QuantConfig(method, tuple(done), group_size, block_size)
    # a plain attribute: save_checkpoint writes it as config.json's quantization_config
    setattr(model, "quantization", config)  # noqa: B010
    log.info("quantized %d linear layers to %s", len(done), method)
    return config


def _quantized(
    linear: nn.Linear, method: str, group_size: int, block_size: int
) -> QuantLinear | None:
    w, b = linear.weight, linear.bias
    N, K = w.shape
    dynamic = method == "int8-dynamic"
    if w.is_meta:
        if method.startswith("int8"):
            return Int8Linear.empty(N, K, b, w.device, dynamic=dynamic)
        if method == "int4":
            g = int4_group_size(K, group_size)
            return None if g is None else Int4Linear.empty(N, K, g, b, w.device)
        return NF4Linear.empty(N, K, block_size, b, w.device)
    if method.startswith("int8"):
        return Int8Linear(*quantize_int8(w), b, dynamic=dynamic)
    if method == "int4":
        g = int4_group_size(K, group_size)
        return None if g is None else Int4Linear(*quantize_int4(w, g), b)
    return NF4Linear(*quantize_nf4(w, block_size), (N, K), block_size, b)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def to_bitsandbytes_(model: nn.Module, device: torch.device) -> int:
    """Replace the NF4 and int8 layers with bitsandbytes layers on ``device`` (CUDA, bfloat16).

    Returns:
        how many layers were replaced.
    Raises:
        EngineError: bitsandbytes is not installed.
    """
    if not qlinear.has_bitsandbytes():
        raise EngineError(_NO_BITSANDBYTES)
    count = 0
    for name, layer in list(model.named_modules()):
        if isinstance(layer, NF4Linear | Int8Linear):
            weight = layer.dequantize()
            _set_module(model, name, _bitsandbytes(layer.method, weight, layer.bias, device))
            count += 1
    return count


def _bitsandbytes(
    method: str, weight: torch.Tensor, bias: torch.Tensor | None, device: torch.device
) -> nn.Module:
    from kernels.qlinear import bnb

    # LLM.int8 quantizes activations already: "int8-dynamic" is the same layer on CUDA
    build = bnb.linear_nf4 if method == "nf4" else bnb.linear_int8
    return build(weight, bias, device)


def decodes_eagerly_on(model: nn.Module, device_type: str) -> bool:
    """Whether ``model``'s quantized layers keep its decode out of a CUDA graph on that device:
    int8 on CUDA (``EAGER_QUANT_ON_CUDA``)."""
    config = getattr(model, "quantization", None)
    return device_type == "cuda" and config is not None and config.method in EAGER_QUANT_ON_CUDA


def num_quantized_weights(model: nn.Module) -> int:
    """The number of float weights the quantized layers stand for (for parameter counts)."""
    return sum(
        m.in_features * m.out_features for m in model.modules() if isinstance(m, QuantLinear)
    )
