"""graph_timing: a graphed call's time is the kernel's, not the host's launch cost."""

import pytest
import torch

from kernels.graph_timing import copies_beyond_l2, graph_us


def test_copies_beyond_l2_fill_twice_the_cache() -> None:
    w = torch.zeros(1024, 1024, dtype=torch.bfloat16)  # 2 MiB
    ws = copies_beyond_l2(w, l2_bytes=5 * 2**20)
    assert len(ws) == 5 and ws[0] is w
    assert all(c.data_ptr() != w.data_ptr() and torch.equal(c, w) for c in ws[1:])
    assert len(copies_beyond_l2(w, l2_bytes=2**20)) == 1  # larger than the cache: itself
    assert len(copies_beyond_l2(torch.zeros(4), l2_bytes=2**30)) == 16  # at most 16


@pytest.mark.gpu
@pytest.mark.timing
def test_graph_us_measures_the_kernel_not_the_launch() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(10**6)  # warm
    start.record()
    torch.cuda._sleep(10**7)
    end.record()
    end.synchronize()
    cycles = 10**7 / (start.elapsed_time(end) * 1e3) * 20  # ~20 us of spinning
    short = graph_us(lambda i: torch.cuda._sleep(int(cycles)))
    long = graph_us(lambda i: torch.cuda._sleep(int(4 * cycles)))
    assert 10 < short < 60, short
    assert 3.0 < long / short < 5.0, (short, long)
    # ~1 us of work: eager launches would measure several us of host time a call
    tiny = graph_us(lambda i: torch.cuda._sleep(int(cycles / 20)))
    assert tiny < 4.0, tiny


@pytest.mark.gpu
def test_graph_us_refuses_inside_a_capture() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    graph = torch.cuda.CUDAGraph()
    x = torch.zeros(4, device="cuda")
    with (
        pytest.raises(RuntimeError, match="capture is already in progress"),
        torch.cuda.graph(graph),
    ):
        x += 1
        graph_us(lambda i: x.add_(1))
