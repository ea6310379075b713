"""Where a worker decodes kept JPEG tiles: a pure choice per worker, no cluster."""

from __future__ import annotations

import pytest

from slidemill.workers import choose_decode, device_decode_available


@pytest.mark.parametrize(
    ("device", "kept", "nvjpeg", "requested", "where"),
    [
        ("cuda", True, True, "auto", "nvjpeg"),  # a GPU worker decodes on its GPU
        ("cuda", True, False, "auto", "cpu"),  # ... unless its torchvision cannot: the host
        ("cuda", True, True, "cpu", "cpu"),  # ... or the run asks for the host
        ("cuda", False, True, "auto", None),  # RGB tiles in the store: nothing to decode
        ("cpu", True, False, "auto", "cpu"),  # a CPU worker: imagecodecs, as before
        ("cpu", True, False, "device", "torchvision"),  # the device path, on the CPU
        ("cpu", False, False, "device", None),
        ("mps", True, False, "device", "cpu"),  # no decode_jpeg there: the host
    ],
)
def test_each_worker_chooses_where_to_decode(
    device: str, kept: bool, nvjpeg: bool, requested: str, where: str | None
) -> None:
    assert choose_decode(device, kept, nvjpeg, requested) == where  # type: ignore[arg-type]


def test_torchvision_decodes_on_the_cpu_and_a_missing_gpu_says_no() -> None:
    assert device_decode_available("cpu")
    assert not device_decode_available("mps")
