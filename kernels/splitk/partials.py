"""The K-slice products of a split-K linear layer: one batched cuBLAS call, no copies.

``x`` [M, K] and ``weight`` [N, K] are cut along K into ``splits`` equal slices, and slice ``s``
of each is a strided view of the original (batch stride K/S, row stride K), so one
``torch.bmm`` computes every slice's product [S, M, N] in float32 (``out_dtype``: each partial
rounded once, in the sum). With a few hundred rows, a 2,048-wide output is 32 of cuBLAS's
128x128 tiles on a GPU of 132 multiprocessors; S slices give S times the tiles, each reading a
slice of the weight.
"""

import torch


def slice_width(K: int, splits: int) -> int | None:
    """The width of each of ``splits`` slices of K, or None where they would not be equal or not
    16-byte aligned in half precision (K/S a multiple of 8)."""
    if splits < 2 or K % splits:
        return None
    width = K // splits
    return width if width % 8 == 0 else None


def partials(x: torch.Tensor, weight: torch.Tensor, splits: int) -> torch.Tensor:
    """``x`` [M, K] (unit stride on K) and ``weight`` [N, K] contiguous: the float32 products of
    their ``splits`` K-slices, [S, M, N]; their sum is ``x @ weight.T``."""
    M, K = x.shape
    N = weight.shape[0]
    width = slice_width(K, splits)
    if width is None:
        raise ValueError(f"splitk: K={K} does not split into {splits} aligned slices")
    xs = x.as_strided((splits, M, width), (width, x.stride(0), 1))
    ws = weight.as_strided((splits, width, N), (width, 1, weight.stride(0)))
    if x.dtype == torch.float32:
        return torch.bmm(xs, ws)
    if not x.is_cuda:  # torch's CPU bmm has no out_dtype: the same sums in float32
        return torch.bmm(xs.float(), ws.float())
    return torch.bmm(xs, ws, out_dtype=torch.float32)
