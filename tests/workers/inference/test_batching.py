"""The batch an encode task takes when the run leaves `--batch-size` unset: `fit_batch`'s
arithmetic (pure), the activations measured on one tile, and what a worker reports as free."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from slidemill.workers.inference import (
    AUTO_BATCH_CAP,
    LIVE_OUTPUTS,
    activation_bytes,
    auto_batch_size,
    fit_batch,
    free_memory,
)

GIB = 2**30
memory = st.integers(min_value=-GIB, max_value=2**40)
per_tile = st.integers(min_value=1, max_value=GIB)
caps = st.integers(min_value=1, max_value=4096)
tasks = st.integers(min_value=1, max_value=64)


@given(memory, per_tile, caps, tasks)
def test_a_batch_is_never_below_one_nor_above_the_cap(
    free: int, tile: int, cap: int, n: int
) -> None:
    assert 1 <= fit_batch(free, tile, cap, n) <= cap


@given(memory, memory, per_tile, caps, tasks)
def test_more_memory_never_means_a_smaller_batch(
    a: int, b: int, tile: int, cap: int, n: int
) -> None:
    low, high = sorted((a, b))
    assert fit_batch(low, tile, cap, n) <= fit_batch(high, tile, cap, n)


@given(memory, per_tile, per_tile, caps, tasks, tasks)
def test_larger_tiles_or_more_tasks_never_mean_a_larger_batch(
    free: int, a: int, b: int, cap: int, n: int, m: int
) -> None:
    small, large = sorted((a, b))
    assert fit_batch(free, large, cap, n) <= fit_batch(free, small, cap, n)
    assert fit_batch(free, small, cap, max(n, m)) <= fit_batch(free, small, cap, min(n, m))


@given(per_tile, caps, tasks, st.integers(min_value=1, max_value=4096))
def test_the_batch_is_what_fits_exactly_when_under_the_cap(
    tile: int, cap: int, n: int, k: int
) -> None:
    # k tiles per task fit exactly; one byte less and only k - 1 do
    assert fit_batch(n * k * tile, tile, cap, n) == min(cap, k)
    assert fit_batch(n * k * tile - 1, tile, cap, n) == max(1, min(cap, k - 1))


def test_fit_batch_refuses_a_cap_or_task_count_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        fit_batch(GIB, 1, 0)
    with pytest.raises(ValueError, match="at least 1"):
        fit_batch(GIB, 1, 8, tasks=0)


class Counting(nn.Module):
    """A conv (8 channels out, same size) then pooling; counts its forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x).mean((2, 3))


def test_activations_are_measured_once_from_the_largest_layer_output() -> None:
    encoder = Counting().eval()
    px = 16
    largest = 8 * px * px * 4  # the conv's float32 output for one tile
    expected = LIVE_OUTPUTS * largest + 3 * px * px * 4
    assert activation_bytes(encoder, px, torch.device("cpu")) == expected
    assert activation_bytes(encoder, px, torch.device("cpu")) == expected
    assert encoder.calls == 1
    assert activation_bytes(encoder, 2 * px, torch.device("cpu")) == 4 * expected
    assert encoder.calls == 2


def test_another_threads_batch_does_not_count_in_the_measurement() -> None:
    # a worker's threads share one encoder: while this thread measures, another encodes a
    # 64-tile batch through the layers being watched
    encoder = Counting().eval()
    started, done = threading.Event(), threading.Event()
    original = encoder.conv.forward

    def held(x: torch.Tensor) -> torch.Tensor:
        if threading.current_thread() is threading.main_thread():  # the measurement
            started.set()
            assert done.wait(10)
        return original(x)

    encoder.conv.forward = held  # type: ignore[method-assign,assignment]

    def batch() -> None:
        assert started.wait(10)
        with torch.inference_mode():
            encoder(torch.zeros(64, 3, 16, 16))
        done.set()

    other = threading.Thread(target=batch)
    other.start()
    measured = activation_bytes(encoder, 16, torch.device("cpu"))
    other.join(10)
    assert done.is_set()
    assert measured == LIVE_OUTPUTS * 8 * 16 * 16 * 4 + 3 * 16 * 16 * 4


def test_outside_a_worker_the_host_memory_available_is_shared_by_one_task() -> None:
    free, n = free_memory(torch.device("cpu"))
    assert free > 0 and n == 1


def test_the_automatic_batch_of_a_small_encoder_on_this_machine_is_the_cpu_cap() -> None:
    from slidemill.workers import LoadedModel
    from slidemill.workers.models import ENCODERS

    class Model:  # the parts of a LoadedModel the choice reads
        encoder = ENCODERS.build("tiny_cnn").eval()
        device = torch.device("cpu")

    model: LoadedModel = Model()  # type: ignore[assignment]
    # a 64-px tile of a tiny CNN needs well under a MiB: 64 of them fit any test machine
    assert auto_batch_size(model, 64) == AUTO_BATCH_CAP["cpu"]
