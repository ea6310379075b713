"""A seed gives the same weights on machines with other core counts: training and pretraining
run on CPU with a fixed intra-op thread count, whatever the process had before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slidemill.workers import ENCODERS, PretrainConfig, pretrain_encoder


def _pretrained(threads_before: int) -> dict[str, torch.Tensor]:
    saved = torch.get_num_threads()
    torch.set_num_threads(threads_before)
    try:
        torch.manual_seed(0)
        encoder = ENCODERS.build("histo_cnn", width=8)
        tiles = np.random.default_rng(0).integers(0, 256, (48, 48, 48, 3), dtype=np.uint8)
        pretrain_encoder(encoder, tiles, PretrainConfig(steps=4, batch_size=48, seed=0))
        assert torch.get_num_threads() == threads_before  # restored afterwards
        return {k: v.clone() for k, v in encoder.state_dict().items()}
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("threads", [1, 3])
def test_pretraining_gives_the_same_weights_whatever_the_threads_were(threads: int) -> None:
    reference, other = _pretrained(2), _pretrained(threads)
    assert reference.keys() == other.keys()
    assert all(torch.equal(reference[k], other[k]) for k in reference)
