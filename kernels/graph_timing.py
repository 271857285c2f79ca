"""GPU time of a short CUDA call, launched as the decode step launches it: from a CUDA graph.

A batch-1 decode kernel runs for 3 to 40 us. Timed with eager launches, back to back, the host's
launch cost (a Triton launch goes through Python: tens of us) is what gets measured, not the
kernel; inside the decode step's CUDA graph that cost is gone. ``graph_us`` captures ``calls``
calls of ``call(i)`` in one graph, replays it, and returns microseconds a call: the kernels and
the gaps between them, as a graphed decode step would run them.
"""

from collections.abc import Callable

import torch

# one warm-up stream per device for every timing: cuBLAS keeps a workspace (32 MiB on Hopper) for
# each stream it has run on, for the life of the process, so a new stream per timing leaks one
_warm_streams: dict[int, torch.cuda.Stream] = {}


def graph_us(call: Callable[[int], object], calls: int = 24, replays: int = 5) -> float:
    """Microseconds per call of ``call(i)``, ``i`` = 0..calls-1, replayed from one CUDA graph.

    ``call`` must be capturable (CUDA work only, no host sync) and is run eagerly three times
    first (compiles, autotunes, warms cuBLAS). The graph's memory is freed on return. Must not
    be called while another capture is in progress.
    """
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError("graph_us: a CUDA graph capture is already in progress")
    device = torch.cuda.current_device()
    side = _warm_streams.get(device)
    if side is None:
        side = _warm_streams[device] = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(3):
            call(i)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            call(i)
    graph.replay()  # the first replay uploads the graph
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    us = start.elapsed_time(end) * 1e3 / (replays * calls)
    del graph
    return us


def copies_beyond_l2(weight: torch.Tensor, l2_bytes: int = 50 * 2**20) -> list[torch.Tensor]:
    """``weight`` and enough clones of it that cycling through them reads from memory, not L2.

    The decode step reads each weight once per token, from memory (7.5 GB of weights against an
    H100's 50 MB of L2). Copies summing to twice ``l2_bytes`` make a timed loop do the same; where
    the clones do not fit in free GPU memory, fewer are made.
    """
    want = min(16, -(-2 * l2_bytes // max(weight.nbytes, 1)))
    ws = [weight]
    for _ in range(want - 1):
        try:
            ws.append(weight.clone())
        except torch.cuda.OutOfMemoryError:
            break
    return ws
