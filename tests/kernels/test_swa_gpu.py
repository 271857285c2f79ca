"""Sliding-window fast paths against the torch reference: the Triton decode step and SDPA prefill.

Runs on CUDA (``make test-gpu``). On the CPU, ``TRITON_INTERPRET=1 pytest -m gpu tests/kernels``
runs the Triton step in Triton's interpreter and the prefill through torch's CPU SDPA.
"""

import pytest
import torch

pytest.importorskip("triton")

from kernels import shared_memory, swa  # noqa: E402
from kernels._testing import assert_close, device_for_kernel_tests, poison_allocator  # noqa: E402
from kernels.swa import prefill_sdpa, prefill_triton, reference, step_triton  # noqa: E402

pytestmark = pytest.mark.gpu

# (B, H, Hkv, D, W): a window that is no multiple of the split, and the published 4B layer
SHAPES = {"small": (2, 4, 2, 32, 100), "4b": (1, 16, 2, 128, 8192)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
OUT_RATIO = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.fixture(scope="module")
def device() -> torch.device:
    return device_for_kernel_tests()


def randn(
    *shape: int, dtype: torch.dtype, device: torch.device, gen: torch.Generator
) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(dtype).to(device)


def filled_ring(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, gen: torch.Generator
):
    B, _, Hkv, D, W = shape
    return randn(B, Hkv, W, D, dtype=dtype, device=device, gen=gen), randn(
        B, Hkv, W, D, dtype=dtype, device=device, gen=gen
    )


@pytest.mark.parametrize("seen_as_tensor", [False, True], ids=["seen-int", "seen-tensor"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_step_decode_past_wrap_matches_reference(
    dtype_name: str, seen_as_tensor: bool, device: torch.device
) -> None:
    dtype = DTYPES[dtype_name]
    B, H, Hkv, D, W = SHAPES["small"]
    gen = torch.Generator().manual_seed(0)
    ring_ref = [torch.zeros(B, Hkv, W, D, dtype=dtype, device=device) for _ in range(2)]
    ring_fast = [r.clone() for r in ring_ref]
    steps = list(range(0, 5)) + list(range(W - 3, W + 3)) + list(range(2 * W - 2, 2 * W + 2))
    for t in range(2 * W + 2):
        q = randn(B, H, D, dtype=dtype, device=device, gen=gen)
        k, v = (randn(B, Hkv, D, dtype=dtype, device=device, gen=gen) for _ in range(2))
        o_ref = reference.step(q, k, v, *ring_ref, t, scale=D**-0.5)
        if t not in steps:
            # keep the fast ring in step without paying a kernel launch per token in the interpreter
            reference.write(*ring_fast, k[:, :, None], v[:, :, None], t)
            continue
        seen = torch.tensor(t, device=device) if seen_as_tensor else t
        poison_allocator(device)
        o = swa.step(q, k, v, *ring_fast, seen, scale=D**-0.5, use_kernel=True)
        assert o.dtype == dtype
        assert_close(f"step at seen={t}", o_ref, o, OUT_RATIO[dtype])
        assert torch.equal(ring_ref[0], ring_fast[0]) and torch.equal(ring_ref[1], ring_fast[1]), (
            f"ring at {t}"
        )


@pytest.mark.parametrize("seen", [5, 8191, 8192, 20000])
def test_step_published_shape(seen: int, device: torch.device) -> None:
    shape = SHAPES["4b"]
    B, H, Hkv, D, W = shape
    gen = torch.Generator().manual_seed(seen)
    ring_ref = list(filled_ring(shape, torch.bfloat16, device, gen))
    ring_fast = [r.clone() for r in ring_ref]
    q = randn(B, H, D, dtype=torch.bfloat16, device=device, gen=gen)
    k, v = (randn(B, Hkv, D, dtype=torch.bfloat16, device=device, gen=gen) for _ in range(2))
    o_ref = reference.step(q, k, v, *ring_ref, seen, scale=D**-0.5)
    poison_allocator(device)
    o = step_triton.step(q, k, v, *ring_fast, seen, scale=D**-0.5)
    assert_close("4b step", o_ref, o, 1e-2)
    assert torch.equal(ring_ref[0], ring_fast[0]) and torch.equal(ring_ref[1], ring_fast[1])


def test_step_in_cuda_graph_across_positions(device: torch.device) -> None:
    if device.type != "cuda":
        pytest.skip("CUDA graphs need CUDA")
    B, H, Hkv, D, W = SHAPES["small"]
    gen = torch.Generator().manual_seed(1)
    dtype = torch.bfloat16
    ring_ref = [torch.zeros(B, Hkv, W, D, dtype=dtype, device=device) for _ in range(2)]
    ring = [r.clone() for r in ring_ref]
    q, k, v = (
        randn(B, H, D, dtype=dtype, device=device, gen=gen),
        *(randn(B, Hkv, D, dtype=dtype, device=device, gen=gen) for _ in range(2)),
    )
    seen = torch.zeros((), dtype=torch.int64, device=device)
    step_triton.step(
        q, k, v, *[r.clone() for r in ring], seen, scale=D**-0.5
    )  # compile outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o_static = step_triton.step(q, k, v, *ring, seen, scale=D**-0.5)
    for t in range(2 * W + 5):
        q.copy_(randn(B, H, D, dtype=dtype, device=device, gen=gen))
        k.copy_(randn(B, Hkv, D, dtype=dtype, device=device, gen=gen))
        v.copy_(randn(B, Hkv, D, dtype=dtype, device=device, gen=gen))
        seen.fill_(t)
        graph.replay()
        o_ref = reference.step(q, k, v, *ring_ref, t, scale=D**-0.5)
        assert_close(f"graph step {t}", o_ref, o_static, 1e-2)
    assert torch.equal(ring_ref[0], ring[0])


PREFILLS = {"sdpa": prefill_sdpa.prefill, "triton": prefill_triton.prefill}


@pytest.mark.parametrize("T", [1, 7, 100, 101, 250], ids=["T1", "T<W", "T=W", "T=W+1", "T>2W"])
@pytest.mark.parametrize("seen", [0, 37, 260], ids=["empty-ring", "partial-ring", "wrapped-ring"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("impl", list(PREFILLS))
def test_prefill_matches_reference(
    impl: str, T: int, seen: int, dtype_name: str, device: torch.device
) -> None:
    dtype = DTYPES[dtype_name]
    shape = SHAPES["small"]
    B, H, Hkv, D, W = shape
    gen = torch.Generator().manual_seed(T + seen)
    ring = filled_ring(shape, dtype, device, gen)
    ring_copy = [r.clone() for r in ring]
    q = randn(B, H, T, D, dtype=dtype, device=device, gen=gen)
    k, v = (randn(B, Hkv, T, D, dtype=dtype, device=device, gen=gen) for _ in range(2))
    o_ref = reference.prefill(q, k, v, *ring, seen, scale=D**-0.5)
    poison_allocator(device)
    o = PREFILLS[impl](q, k, v, *ring, seen, scale=D**-0.5)
    assert o.dtype == dtype
    # float32 SDPA on CUDA may multiply in tf32
    assert_close(f"{impl} prefill", o_ref, o, 2e-3 if dtype == torch.float32 else 1e-2)
    assert all(torch.equal(a, b) for a, b in zip(ring, ring_copy, strict=True)), (
        "prefill changed the ring"
    )


@pytest.mark.parametrize("num_splits", [2, 3, 8])
@pytest.mark.parametrize(("T", "seen"), [(7, 260), (100, 300), (250, 37), (101, 0)])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_split_prefill_matches_reference(
    num_splits: int, T: int, seen: int, dtype_name: str, device: torch.device
) -> None:
    """The band cut into runs of key blocks (the frame step's few queries over a full ring),
    including runs that see no key at all, combined back into one softmax."""
    dtype = DTYPES[dtype_name]
    B, H, Hkv, D, W = SHAPES["small"]
    gen = torch.Generator().manual_seed(T * num_splits + seen)
    ring = filled_ring(SHAPES["small"], dtype, device, gen)
    q = randn(B, H, T, D, dtype=dtype, device=device, gen=gen)
    k, v = (randn(B, Hkv, T, D, dtype=dtype, device=device, gen=gen) for _ in range(2))
    o_ref = reference.prefill(q, k, v, *ring, seen, scale=D**-0.5)
    poison_allocator(device)
    o = prefill_triton.prefill(q, k, v, *ring, seen, scale=D**-0.5, num_splits=num_splits)
    assert_close("split prefill", o_ref, o, 2e-3 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("seen", [0, 20000])
def test_prefill_published_shape(seen: int, device: torch.device) -> None:
    if device.type != "cuda":
        pytest.skip("too slow for Triton's interpreter")
    shape = SHAPES["4b"]
    B, H, Hkv, D, W = shape
    gen = torch.Generator().manual_seed(seen)
    ring = filled_ring(shape, torch.bfloat16, device, gen)
    T = W + 809
    q = randn(B, H, T, D, dtype=torch.bfloat16, device=device, gen=gen)
    k, v = (randn(B, Hkv, T, D, dtype=torch.bfloat16, device=device, gen=gen) for _ in range(2))
    o_ref = reference.prefill(q, k, v, *ring, seen, scale=D**-0.5)
    poison_allocator(device)
    with torch.no_grad():
        o = swa.prefill(q, k, v, *ring, seen, scale=D**-0.5)  # the dispatcher picks Triton
    assert_close("4b prefill", o_ref, o, 1e-2)


def test_prefill_blocks_and_gradients(
    device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    B, H, Hkv, D, W = SHAPES["small"]
    gen = torch.Generator().manual_seed(3)
    monkeypatch.setattr(prefill_sdpa, "QUERY_BLOCK", 64)
    ring = [torch.zeros(B, Hkv, W, D, device=device) for _ in range(2)]
    leaves = [
        randn(B, n, 333, D, dtype=torch.float32, device=device, gen=gen).requires_grad_()
        for n in (H, Hkv, Hkv)
    ]
    grads = {}
    for name, fn in (("reference", reference.prefill), ("sdpa", prefill_sdpa.prefill)):
        o = fn(*leaves, *ring, 0, scale=D**-0.5)
        grads[name] = torch.autograd.grad(o.square().sum(), leaves)
    for n, ga, gb in zip("qkv", grads["reference"], grads["sdpa"], strict=True):
        assert_close(f"grad {n}", ga, gb, 2e-3)


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("seen", [0, 900], ids=["empty-ring", "wrapped-ring"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_prefill_whole_blocks_inside_the_band(
    dtype_name: str, seen: int, num_splits: int, device: torch.device
) -> None:
    """A window several key blocks wide: the blocks every query sees whole go unmasked, the edge
    blocks masked, at the bf16 block shape (128 queries x 64 keys), cut into runs or not."""
    dtype = DTYPES[dtype_name]
    shape = (1, 2, 1, 32, 500)
    B, H, Hkv, D, W = shape
    gen = torch.Generator().manual_seed(seen + num_splits)
    ring = filled_ring(shape, dtype, device, gen)
    T = 700
    q = randn(B, H, T, D, dtype=dtype, device=device, gen=gen)
    k, v = (randn(B, Hkv, T, D, dtype=dtype, device=device, gen=gen) for _ in range(2))
    o_ref = reference.prefill(q, k, v, *ring, seen, scale=D**-0.5)
    if seen:
        keys = reference.ring_then(ring[0], k, seen, dtype)
        values = reference.ring_then(ring[1], v, seen, dtype)
    else:
        keys, values = k.contiguous(), v.contiguous()
    poison_allocator(device)
    o = prefill_triton.launch_prefill(
        q, keys, values, W, D**-0.5, 128, 64, 8, 3, num_splits=num_splits
    )
    assert_close("prefill", o_ref, o, 2e-3 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize(("T", "seen"), [(7, 100), (100, 137), (250, 305), (64, 1000)])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_full_ring_prefill_reads_the_ring_in_place(
    dtype_name: str, T: int, seen: int, num_splits: int, device: torch.device
) -> None:
    """A frame's attention: the full ring read from its oldest slot on, seen on the device."""
    dtype = DTYPES[dtype_name]
    B, H, Hkv, D, W = SHAPES["small"]
    gen = torch.Generator().manual_seed(T + seen + num_splits)
    ring = filled_ring(SHAPES["small"], dtype, device, gen)
    ring_copy = [r.clone() for r in ring]
    q = randn(B, H, T, D, dtype=dtype, device=device, gen=gen)
    # k, v as the attention layer hands them: [B, T, Hkv, D] seen as [B, Hkv, T, D]
    k, v = (
        randn(B, T, Hkv, D, dtype=dtype, device=device, gen=gen).transpose(1, 2) for _ in range(2)
    )
    o_ref = reference.prefill(q, k, v, *ring, seen, scale=D**-0.5)
    poison_allocator(device)
    seen_t = torch.tensor(seen, device=device)
    o = prefill_triton.prefill_full_ring(
        q, k, v, *ring, seen_t, scale=D**-0.5, num_splits=num_splits
    )
    assert_close("full-ring prefill", o_ref, o, 2e-3 if dtype == torch.float32 else 1e-2)
    assert all(torch.equal(a, b) for a, b in zip(ring, ring_copy, strict=True)), "ring changed"


@pytest.mark.parametrize("W", [500, 512])
@pytest.mark.parametrize("past_full", [0, 123])
def test_full_ring_prefill_whole_blocks(past_full: int, W: int, device: torch.device) -> None:
    """A window several key blocks wide read in place: whole blocks straddle the ring's wrap, and
    the boundary between the ring and the new keys falls inside a block (W = 500) or between two
    (W = 512, as the 4B model's 8,192) (bf16 block shape, in float32)."""
    shape = (1, 2, 1, 32, W)
    B, H, Hkv, D, W = shape
    seen = W + past_full  # the oldest slot: 0, or 123 with the wrap inside the ring
    gen = torch.Generator().manual_seed(seen)
    ring = filled_ring(shape, torch.float32, device, gen)
    T = 300
    q = randn(B, H, T, D, dtype=torch.float32, device=device, gen=gen)
    k, v = (randn(B, Hkv, T, D, dtype=torch.float32, device=device, gen=gen) for _ in range(2))
    o_ref = reference.prefill(q, k, v, *ring, seen, scale=D**-0.5)
    poison_allocator(device)
    seen_t = torch.tensor([seen], device=device)
    blocks = (128, 64, 8, 3)  # the bf16 shape: whole blocks of 64 keys
    o = prefill_triton.launch_prefill(q, *ring, W, D**-0.5, *blocks, new=(k, v, seen_t))
    assert_close("full-ring prefill", o_ref, o, 2e-3)


def test_full_ring_prefill_takes_the_layers_layouts(device: torch.device) -> None:
    """One batch and one key/value head, as a frame's layer hands them: k rotated into a [B, T,
    Hkv, D] tensor of its own, v a slice of the fused q/k/v product. Their strides differ only
    along dimensions of size 1, which the kernel never steps along (the frame graph's first GPU
    run failed here)."""
    B, H, Hkv, D, W = 1, 2, 1, 32, 48
    T = 16
    gen = torch.Generator().manual_seed(5)
    ring = filled_ring((B, H, Hkv, D, W), torch.float32, device, gen)
    q = randn(B, H, T, D, dtype=torch.float32, device=device, gen=gen)
    fused = randn(B, T, (H + 2 * Hkv) * D, dtype=torch.float32, device=device, gen=gen)
    k = fused[..., H * D : (H + Hkv) * D].view(B, T, Hkv, D).clone().transpose(1, 2)
    v = fused[..., (H + Hkv) * D :].view(B, T, Hkv, D).transpose(1, 2)
    assert k.is_contiguous() and k.stride() != v.contiguous().stride()
    o_ref = reference.prefill(q, k, v, *ring, W + 7, scale=D**-0.5)
    o = prefill_triton.prefill_full_ring(
        q, k, v, *ring, torch.tensor(W + 7, device=device), scale=D**-0.5
    )
    assert_close("full-ring prefill", o_ref, o, 2e-3)


def test_full_ring_dispatcher_kernel_equals_gather(device: torch.device) -> None:
    """``swa.prefill_full_ring``: the in-place kernel == the ring gathered in token order."""
    B, H, Hkv, D, W = SHAPES["small"]
    gen = torch.Generator().manual_seed(11)
    ring = filled_ring(SHAPES["small"], torch.float32, device, gen)
    q = randn(B, H, 40, D, dtype=torch.float32, device=device, gen=gen)
    k, v = (randn(B, Hkv, 40, D, dtype=torch.float32, device=device, gen=gen) for _ in range(2))
    seen = torch.tensor(W * 3 + 41, device=device)
    with torch.no_grad():
        want = swa.prefill_full_ring(q, k, v, *ring, seen, scale=D**-0.5, use_kernel=False)
        got = swa.prefill_full_ring(q, k, v, *ring, seen, scale=D**-0.5, use_kernel=True)
    assert_close("full ring", want, got, 2e-3)


# the shared memory a program may take: Hopper (227 KiB), an RTX 4090 or 3090 (99), a T4 (64)
SHARED_LIMITS = {"hopper": 227 * 1024, "rtx4090": 99 * 1024, "t4": 64 * 1024}


@pytest.mark.parametrize("limit_name", list(SHARED_LIMITS))
def test_block_shapes_fit_the_gpus_shared_memory(limit_name: str) -> None:
    """Every prefill shape the launcher can pick fits the GPU's shared memory (a shape over it
    fails to launch): frames over a full ring, short and long prompts, in each dtype."""
    limit = SHARED_LIMITS[limit_name]
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for ring, tokens in ((True, 256), (False, 256), (False, prefill_triton.LONG_PROMPT)):
            bm, bn, _, stages = prefill_triton.block_shape(
                dtype, ring=ring, tokens=tokens, limit=limit
            )
            need = shared_memory.program_bytes(bm, bn, stages, 128, dtype.itemsize)
            assert need <= limit, (limit_name, dtype, ring, tokens, (bm, bn, stages), need)
            assert stages >= 2 and min(bm, bn) >= 16


def test_block_shapes_on_hopper_are_the_measured_ones() -> None:
    """Where shared memory allows, the shapes benchmarks/swa_blocks.py timed fastest stand."""
    hopper, bf16 = SHARED_LIMITS["hopper"], torch.bfloat16
    shape = prefill_triton.block_shape
    assert shape(bf16, ring=True, tokens=256, limit=hopper) == (64, 64, 4, 3)
    assert shape(bf16, tokens=prefill_triton.LONG_PROMPT, limit=hopper) == (128, 128, 8, 3)
    assert shape(bf16, tokens=4096, limit=hopper) == (128, 64, 8, 3)


@pytest.mark.parametrize("limit_name", ["rtx4090", "t4"])
def test_prefill_on_a_gpu_with_less_shared_memory_matches_reference(
    limit_name: str, device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shapes fitted to a smaller GPU compute what the reference does, over a partial ring
    and over a full ring read in place."""
    monkeypatch.setattr(shared_memory, "limit", lambda _: SHARED_LIMITS[limit_name])
    dtype = torch.bfloat16
    B, H, Hkv, D, W = SHAPES["small"]
    gen = torch.Generator().manual_seed(7)
    ring = filled_ring(SHAPES["small"], dtype, device, gen)
    T = 150
    q = randn(B, H, T, D, dtype=dtype, device=device, gen=gen)
    k, v = (randn(B, Hkv, T, D, dtype=dtype, device=device, gen=gen) for _ in range(2))
    for seen in (60, 333):
        o_ref = reference.prefill(q, k, v, *ring, seen, scale=D**-0.5)
        o = prefill_triton.prefill(q, k, v, *ring, seen, scale=D**-0.5)
        assert_close("prefill", o_ref, o, 1e-2)
    seen_t = torch.tensor(333, device=device)
    o = prefill_triton.prefill_full_ring(q, k, v, *ring, seen_t, scale=D**-0.5)
    o_ref = reference.prefill(q, k, v, *ring, 333, scale=D**-0.5)
    assert_close("full-ring prefill", o_ref, o, 1e-2)


@pytest.mark.parametrize("limit_name", list(SHARED_LIMITS))
def test_step_shapes_fit_the_gpus_shared_memory(limit_name: str) -> None:
    """The decode step's split kernel fits each GPU's shared memory at the 4B model's shape (8
    query heads a key/value head, 128 dims) and a wider one; Hopper keeps the tuned shape."""
    limit = SHARED_LIMITS[limit_name]
    for dtype in (torch.bfloat16, torch.float32):
        for head_dim, group in ((128, 8), (256, 16)):
            block_n, stages = step_triton.block_shape(head_dim, group, dtype.itemsize, limit)
            rows = step_triton.group_rows(group)
            need = shared_memory.program_bytes(rows, block_n, stages, head_dim, dtype.itemsize)
            assert need <= limit, (limit_name, dtype, head_dim, block_n, stages, need)
    assert step_triton.block_shape(128, 8, 2, SHARED_LIMITS["hopper"]) == (64, 3)


@pytest.mark.parametrize("limit_name", ["rtx4090", "t4"])
def test_step_on_a_gpu_with_less_shared_memory_matches_reference(
    limit_name: str, device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decode steps with the shapes fitted to a smaller GPU match the reference, past the wrap."""
    monkeypatch.setattr(shared_memory, "limit", lambda _: SHARED_LIMITS[limit_name])
    dtype = torch.bfloat16
    B, H, Hkv, D, W = SHAPES["small"]
    gen = torch.Generator().manual_seed(11)
    ring = filled_ring(SHAPES["small"], dtype, device, gen)
    ring_ref = [r.clone() for r in ring]
    for seen in (W - 2, W - 1, W, W + 37):
        q = randn(B, H, D, dtype=dtype, device=device, gen=gen)
        k, v = (randn(B, Hkv, D, dtype=dtype, device=device, gen=gen) for _ in range(2))
        o_ref = reference.step(q, k, v, *ring_ref, seen, scale=D**-0.5)
        o = step_triton.step(q, k, v, *ring, seen, scale=D**-0.5)
        assert_close("step", o_ref, o, 1e-2)
    assert all(torch.equal(a, b) for a, b in zip(ring, ring_ref, strict=True)), "rings differ"
