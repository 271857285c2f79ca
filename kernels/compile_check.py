"""Compile the project's Triton kernels for a Hopper GPU on a machine without one.

    PYTHONPATH=/tmp/trinp:/tmp/tri:$PWD .venv/bin/python -m kernels.compile_check

(Triton installed as docs/gpu-session.md says.) Each launcher runs once on small CPU tensors of
the 4B model's shapes (the decode step's kernels, and those of a prompt or a frame) under
Triton's interpreter, in a child process, with its kernel's launch captured instead of run; this
process then compiles every captured launch for sm_90 through ptxas (those that take part in
``kernels.pdl`` with ``PDL`` off and on) and prints a line for each. Nothing is executed: it
catches what only a GPU compile would (code under a constexpr branch that the interpreter never
traces, such as the ``griddepcontrol`` instructions of PDL) before device time is spent. Exit
status 1 when any variant fails to compile.

It compiles what a GPU launch would: an ``IEEE`` constexpr (the float32 upcast the launchers take
under the interpreter only) is set False, and the arguments a launch would specialize as 16-byte
aligned (tensors whose storage is, integers divisible by 16 outside ``do_not_specialize``) carry
that hint, which decides whether loads become vector and asynchronous copies. Each line gives the
shared memory a program takes (a Hopper SM has 228 KiB).
"""

import importlib
import inspect
import json
import os
import subprocess
import sys
import tempfile

import torch

# launchers' modules and the kernels they launch
KERNELS = {
    "kernels.rms_norm.norm_triton": ["rms_norm_kernel", "add_rms_norm_kernel"],
    "kernels.swiglu.swiglu_triton": ["silu_mul_kernel"],
    "kernels.splitk.reduce_triton": ["reduce_kernel"],
    "kernels.rope.rope_triton": ["rope_kernel", "rope_vision_kernel"],
    "kernels.short_conv.step_triton": ["short_conv_step3_kernel"],
    "kernels.gated_delta.step_triton": ["gated_delta_step_kernel"],
    "kernels.swa.step_triton": ["swa_step_split_kernel", "swa_step_combine_kernel"],
    "kernels.swa.prefill_triton": ["swa_prefill_kernel", "swa_prefill_combine_kernel"],
    "kernels.short_conv.prefill_triton": [
        "short_conv_prefill_kernel", "short_conv_prefill3_kernel", "short_conv_tail3_kernel",
    ],
    "kernels.gated_delta.gates_triton": ["gates_kernel"],
    "kernels.gated_delta.chunk_triton": ["wy_kernel", "chunk_state_kernel"],
    "kernels.gemv.gemv_triton": ["gemv_kernel"],
}
POINTER = {torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float16: "*fp16"}
OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion", "launch_pdl")


def _launch_all() -> None:
    """Run each launcher at the 4B model's shapes (bf16, batch 1): the decode step's kernels,
    and the prompt and frame kernels of the project's own (rope_vision, sliding-window and
    convolution prefill)."""
    from kernels.gated_delta import chunk_triton, gates_triton
    from kernels.gated_delta import step_triton as gated_delta
    from kernels.gemv import gemv_triton
    from kernels.rms_norm import norm_triton
    from kernels.rope import rope_triton
    from kernels.short_conv import prefill_triton as conv_prefill
    from kernels.short_conv import step_triton as short_conv
    from kernels.splitk import reduce_triton
    from kernels.swa import prefill_triton as swa_prefill
    from kernels.swa import step_triton as swa
    from kernels.swiglu import swiglu_triton

    bf = torch.bfloat16
    x, w = torch.randn(1, 2048, dtype=bf), torch.ones(2048, dtype=bf)
    norm_triton.rms_norm(x, w, 1e-6)
    norm_triton.gated_rms_norm(x, x, w, 1e-6)
    norm_triton.add_rms_norm(x, x, w, 1e-6)
    swiglu_triton.silu_mul(x, x)
    reduce_triton.reduce(torch.randn(4, 2, 2048), None, bf)
    q, k = torch.randn(1, 16, 1, 128, dtype=bf), torch.randn(1, 2, 1, 128, dtype=bf)
    rope_triton.rotate_qk(q, k, torch.randn(1, 1, 128, dtype=bf), torch.randn(1, 1, 128, dtype=bf))
    sizes = (2048, 2048, 4096)
    short_conv.step3(
        tuple(torch.randn(1, n, dtype=bf) for n in sizes),
        tuple(torch.randn(1, n, 3, dtype=bf) for n in sizes),
        tuple(torch.randn(n, 4, dtype=bf) for n in sizes),
    )
    gemv_triton.linear(x, torch.randn(512, 2048, dtype=bf))
    B, H, HV, K, V = 1, 16, 32, 128, 128
    gated_delta.launch_step(
        torch.randn(B, H, K, dtype=bf), torch.randn(B, H, K, dtype=bf),
        torch.randn(B, HV, V, dtype=bf), torch.randn(B, HV, dtype=bf), torch.rand(B, HV, dtype=bf),
        torch.zeros(B, HV, K, V), torch.empty(B, HV, V, dtype=bf), 0.1, True, 32, 4,
        torch.zeros(HV), torch.zeros(HV),
    )  # fmt: skip
    ring = torch.zeros(1, 2, 8192, 128, dtype=bf)
    kv = torch.randn(1, 2, 128, dtype=bf)
    swa.launch_step(torch.randn(1, 16, 128, dtype=bf), kv, kv, ring, ring, torch.tensor(9000),
                    0.088, 1024, 64, 4)  # fmt: skip
    block_n, stages = swa.block_shape(128, 8, 2, 99 * 1024)  # fitted to an RTX 4090
    swa.launch_step(torch.randn(1, 16, 128, dtype=bf), kv, kv, ring, ring, torch.tensor(9000),
                    0.088, 1024, block_n, 4, stages)  # fmt: skip
    # a frame: 256 tokens over a full ring, and the vision tower's 1,024 patches
    T = 256
    qkv = torch.randn(T, 3, 16, 80, dtype=bf)
    rope_triton.rotate_vision_qkv(qkv, torch.randn(T, 80), torch.randn(T, 80))
    keys = torch.randn(1, 2, 8192 + T, 128, dtype=bf)
    swa_prefill.launch_prefill(torch.randn(1, 16, T, 128, dtype=bf), keys, keys, 8192, 0.088,
                               num_splits=4)  # fmt: skip
    # a long prompt's wider key blocks, and the shapes fitted to a GPU of 99 KiB (an RTX 4090)
    for limit in (None, 99 * 1024):
        for ring_mode, tokens in ((False, swa_prefill.LONG_PROMPT), (False, T), (True, T)):
            shape = swa_prefill.block_shape(bf, ring=ring_mode, tokens=tokens, limit=limit)
            swa_prefill.launch_prefill(torch.randn(1, 16, T, 128, dtype=bf), keys, keys, 8192,
                                       0.088, *shape, num_splits=1)  # fmt: skip
    ring, new = torch.randn(1, 2, 8192, 128, dtype=bf), torch.randn(1, 2, T, 128, dtype=bf)
    swa_prefill.prefill_full_ring(torch.randn(1, 16, T, 128, dtype=bf), new, new, ring, ring,
                                  torch.tensor(9000), scale=0.088, num_splits=4)  # fmt: skip
    conv_prefill.prefill(torch.randn(1, T, 4096, dtype=bf), torch.randn(1, 4096, 3, dtype=bf),
                         torch.randn(4096, 4, dtype=bf))  # fmt: skip
    proj = torch.randn(1, T, 12320, dtype=bf)  # a frame's fused Gated DeltaNet projections
    q, k, v, a, b = proj.split((2048, 2048, 4096, 16, 16, 4096), dim=2)[:5]
    conv_prefill.prefill3((q, k, v), tuple(torch.randn(1, c, 3, dtype=bf) for c in (2048, 2048, 4096)),
                          tuple(torch.randn(c, 4, dtype=bf) for c in (2048, 2048, 4096)))  # fmt: skip
    g, beta = gates_triton.gates(a, b, torch.randn(16), torch.randn(16, dtype=bf))
    chunk_triton.chunk(q.view(1, T, 16, 128), k.view(1, T, 16, 128), v.reshape(1, T, 16, 256), g,
                       beta, scale=0.088, initial_state=torch.zeros(1, 16, 128, 256),
                       use_qk_l2norm=True)  # fmt: skip


def _capture(path: str) -> None:
    """(Child, under the interpreter.) Write each launch's signature, constants and options."""
    specs = []

    class Capture:
        def __init__(self, module: str, name: str, jit) -> None:
            self.module, self.name, self.jit, self.fn = module, name, jit, jit.fn

        def __getitem__(self, grid):
            return lambda *args, **kwargs: specs.append(self._spec(args, kwargs))

        def _spec(self, args: tuple, kwargs: dict) -> tuple:
            params = inspect.signature(self.fn).parameters
            fixed = set(getattr(self.jit, "do_not_specialize", ()))
            sig, consts, opts, aligned = {}, {}, {}, []
            for i, (name, a) in enumerate(zip(params, args, strict=False)):
                tensor16 = isinstance(a, torch.Tensor) and a.data_ptr() % 16 == 0
                int16 = type(a) is int and a % 16 == 0 and name not in fixed and i not in fixed
                if tensor16 or int16:
                    aligned.append(i)
                if isinstance(a, torch.Tensor):
                    sig[name] = POINTER[a.dtype] if a.is_floating_point() else "*i64"
                elif a is None:
                    sig[name], consts[name] = "constexpr", None
                elif isinstance(a, bool):
                    sig[name] = "i1"
                elif isinstance(a, int):
                    sig[name] = "i32" if abs(a) < 2**31 else "i64"
                else:
                    sig[name] = "fp32"
            for name, v in kwargs.items():
                if name in OPTIONS:
                    opts[name] = v
                else:
                    sig[name], consts[name] = "constexpr", v
            for name, p in params.items():
                if name not in sig:  # a constexpr left at its default, or the autotuned tile
                    sig[name] = "constexpr"
                    consts[name] = {"BLOCK_N": 2, "BLOCK_K": 1024}.get(name, p.default)
            if "IEEE" in consts:  # the interpreter's float32 upcast: a GPU takes the bf16 dots
                consts["IEEE"] = False
            return self.module, self.name, sig, consts, opts, aligned

    for module, names in KERNELS.items():
        mod = importlib.import_module(module)
        for name in names:
            setattr(mod, name, Capture(module, name, getattr(mod, name)))
    _launch_all()
    with open(path, "w") as f:
        json.dump(specs, f)


def main() -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "specs.json")
        env = dict(os.environ, TRITON_INTERPRET="1")
        code = f"from kernels.compile_check import _capture; _capture({path!r})"
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        with open(path) as f:
            specs = json.load(f)
    target, failed, total = GPUTarget("cuda", 90, 32), 0, 0
    for module, name, sig, consts, opts, aligned in specs:
        fn = getattr(importlib.import_module(module), name)
        # kernels that take part in kernels.pdl compile with it off and on, the others once
        variants = (False, True) if "PDL" in sig else (None,)
        for on in variants:
            total += 1
            with_pdl = {} if on is None else {"PDL": on}
            label = "" if on is None else f"PDL={on!s:5s}"
            try:
                attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
                src = ASTSource(fn, sig, constexprs=dict(consts, **with_pdl), attrs=attrs)
                kernel = triton.compile(src, target=target, options=dict(opts, launch_pdl=bool(on)))
                pdl_in_ptx = "griddepcontrol" in kernel.asm["ptx"]
                print(
                    f"{name:26s} {label:9s} compiled for sm_90 (griddepcontrol: {pdl_in_ptx}; "
                    f"shared {kernel.metadata.shared // 1024} KiB)"
                )
            except Exception as e:  # noqa: BLE001 (each variant reports on its own)
                failed += 1
                print(f"{name:26s} {label:9s} FAILED: {type(e).__name__}: {str(e)[-400:]}")
    print(f"{total - failed} of {total} compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
