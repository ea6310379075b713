"""The explanations' pure cores, without a cluster: regions of tiles, the masked forward (absent
tiles removed), Shapley values against their closed form and their efficiency, deletion and
insertion curves, and feature-level reasons."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from slidemill.workers import HEADS, TinyCNN
from slidemill.workers.explain import (
    ExplainSettings,
    MaskedBag,
    Players,
    choose_players,
    choose_target,
    deletion_curve,
    empty_log_odds,
    explain_bag,
    feature_groups,
    group_tiles,
    insertion_curve,
    log_odds,
    region_order,
    region_shapley,
    removed_forward,
    tile_reasons,
    tile_shares,
)
from slidemill.workers.models import (
    ENCODERS,
    HANDCRAFTED_FEATURES,
    TEXTURE_FEATURES,
    ConcatEncoder,
    HandcraftedEncoder,
)

D = 12


def _head(name: str, seed: int = 0, **kwargs: Any) -> nn.Module:
    torch.manual_seed(seed)
    small: dict[str, int | str] = {"hidden_dim": 16}
    if "abmil" in name or (name == "ensemble" and "abmil" in str(kwargs.get("member", ""))):
        small["attention_dim"] = 8
    if name == "ensemble":
        small = {"member_kwargs": '{"hidden_dim": 16}'}
    if name == "topk_linear":
        small = {}
    return HEADS.build(name, in_dim=D, n_classes=2, **{**small, **kwargs}).eval()


def _bag(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32))


def _line(n: int) -> np.ndarray:
    """A 1 × n row of tiles on the grid."""
    return np.stack([np.zeros(n, np.int64), np.arange(n)], 1)


# ---- regions ------------------------------------------------------------------------------------


def test_regions_are_connected_parts_of_blocks_numbered_by_their_first_tile() -> None:
    # a 4 × 6 grid: two tissue pieces in the left 4 × 4 block (one tile at (0, 0), an L at
    # (2..3, 1..2)), one piece in the right block
    cells = [(0, 0), (2, 1), (3, 1), (3, 2), (0, 4), (0, 5), (1, 5)]
    players = group_tiles(np.array(cells), cell=4)
    assert players.of_tile.tolist() == [0, 1, 1, 1, 2, 2, 2]
    assert players.sizes.tolist() == [1, 3, 3] and players.connected
    # smaller blocks cut the L where a block edge passes
    assert group_tiles(np.array(cells), cell=2).of_tile.tolist() == [0, 1, 1, 2, 3, 3, 3]


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 30),
    cols=st.integers(1, 30),
    density=st.floats(0.05, 1.0),
    max_players=st.integers(1, 80),
    seed=st.integers(0, 1000),
)
def test_chosen_regions_cover_the_bag_within_the_limit_and_respect_qc(
    rows: int, cols: int, density: float, max_players: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    occupied = np.argwhere(rng.random((rows, cols)) < density)
    if occupied.size == 0:
        return
    keep = rng.random(len(occupied)) < 0.9
    players = choose_players(occupied, max_players, keep)
    assert players.n_players <= max_players
    assert (players.in_bag == keep).all()  # QC-excluded tiles are nobody's
    assert players.sizes.sum() == keep.sum() and (players.sizes > 0).all()
    if players.cell > 1 and players.connected:  # the finest block that fits was taken
        finer = group_tiles(occupied, players.cell - 1, keep)
        assert finer.n_players > max_players


def test_scattered_fragments_fall_back_to_plain_blocks() -> None:
    checkerboard = np.argwhere((np.add.outer(np.arange(12), np.arange(12)) % 2) == 0)  # 72 tiles
    players = choose_players(checkerboard, max_players=10)
    assert not players.connected and players.n_players <= 10


# ---- the masked forward -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("abmil", {}),
        ("abmil_gated", {}),
        ("abmil_gated", {"instance_k": 4}),
        ("mean_pool", {}),
        ("max_pool", {}),
        ("ensemble", {"member": "abmil_gated", "n_members": 3}),
    ],
)
def test_masking_is_removal_for_the_heads_that_pool(name: str, kwargs: dict[str, Any]) -> None:
    head = _head(name, **kwargs)
    x = _bag(40)
    bag = MaskedBag(head, x, target=1, n_classes=2)
    assert bag.exact_masking
    keep = torch.from_numpy(np.random.default_rng(1).random((25, 40)) < 0.3)
    keep[0] = True
    keep[1] = False
    keep[2] = False
    keep[2, 7] = True
    got = bag(keep)
    rows = keep.any(1)
    want = log_odds(removed_forward(head, x, keep[rows]).double(), 1)
    torch.testing.assert_close(got[rows], want, rtol=1e-5, atol=1e-5)
    assert got[1] == pytest.approx(0.0)  # the empty bag: zero logits, log-odds 0 of two classes
    with torch.no_grad():
        whole = float(log_odds(head(x).logits.double(), 1))
    assert bag.full() == pytest.approx(whole, abs=1e-5)


def test_other_heads_run_on_the_kept_tiles() -> None:
    head = _head("topk_linear")
    x = _bag(30)
    bag = MaskedBag(head, x, target=1, n_classes=2)
    assert not bag.exact_masking
    keep = torch.zeros((3, 30), dtype=torch.bool)
    keep[0, :10] = True
    keep[2] = True
    got = bag(keep)
    assert got[1] == pytest.approx(empty_log_odds(2))
    with torch.no_grad():
        first = float(log_odds(head(x[:10]).logits.double(), 1))
    assert got[0] == pytest.approx(first, abs=1e-5)
    assert empty_log_odds(3) == pytest.approx(-math.log(2))


# ---- Shapley values -----------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "budget"), [(5, 120), (8, 3000)])
def test_shapley_values_of_mean_pooling_are_the_closed_form(n: int, budget: int) -> None:
    """Mean pooling's slide log-odds is the mean of its tiles' own, s_i: for f(S) = mean_{i∈S}
    s_i and f(∅) = c, a tile arriving k-th in a random order adds s_i − c when k = 1 and, in
    expectation, (s_i − m_i)/k after (m_i the mean of the others), so
    φ_i = [s_i − c + (H_n − 1)(s_i − m_i)] / n, H_n the n-th harmonic number. With every order
    (5! = 120 ≤ the budget) the values are exact; 3000 sampled orders of 8 tiles come close."""
    head = _head("mean_pool", seed=3)
    x = _bag(n, seed=4)
    with torch.no_grad():
        s = log_odds(head(x).tile_logits.double(), 1).numpy()
    c = 0.0  # the empty bag of two classes
    h = sum(1 / k for k in range(1, n + 1))
    m = (s.sum() - s) / (n - 1)
    closed = (s - c + (h - 1) * (s - m)) / n
    players = group_tiles(_line(n), cell=1)  # one tile per player
    got = region_shapley(MaskedBag(head, x, 1, 2), players, budget=budget, seed=0)
    assert got.exact == (math.factorial(n) <= budget)
    if got.exact:
        assert got.permutations == math.factorial(n)
        np.testing.assert_allclose(got.values, closed, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(got.values, closed, atol=0.05 * np.abs(closed).max())


@pytest.mark.parametrize("name", ["abmil_gated", "topk_linear"])
def test_sampled_values_add_up_to_the_bag_minus_the_empty_bag(name: str) -> None:
    head = _head(name, seed=5)
    x = _bag(60, seed=6)
    grid = np.argwhere(np.ones((6, 10), bool))
    players = choose_players(grid, max_players=15)
    bag = MaskedBag(head, x, 1, 2)
    result = region_shapley(bag, players, budget=4, seed=2)
    assert not result.exact and players.n_players <= 15
    assert result.values.sum() == pytest.approx(bag.full() - bag.empty, abs=1e-4)
    shares = tile_shares(players, result.values)
    assert float(shares.sum()) == pytest.approx(result.values.sum(), abs=1e-4)
    # every order costs P evaluations, the empty bag one more
    assert result.evaluations == 4 * players.n_players + 1


def test_a_seed_gives_the_same_values_and_leaves_the_global_state_alone() -> None:
    head = _head("abmil_gated", seed=7)
    x = _bag(30, seed=8)
    players = group_tiles(_line(30), cell=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = region_shapley(MaskedBag(head, x, 1, 2), players, budget=3, seed=1).values
    after = torch.rand(1)
    b = region_shapley(MaskedBag(head, x, 1, 2), players, budget=3, seed=1).values
    c = region_shapley(MaskedBag(head, x, 1, 2), players, budget=3, seed=2).values
    assert torch.equal(before, after)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


# ---- curves -------------------------------------------------------------------------------------


def test_curves_follow_the_probability_in_the_order_given() -> None:
    weights = np.array([0.1, 0.4, 0.2, 0.3])
    players = group_tiles(_line(4), cell=1)

    def prob(keep: np.ndarray) -> np.ndarray:
        return keep.astype(np.float64) @ weights

    order = region_order(players, weights)
    assert order.tolist() == [1, 3, 2, 0]
    deletion = deletion_curve(prob, players, order)
    np.testing.assert_allclose(deletion.fraction, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(deletion.probability, [1.0, 0.6, 0.3, 0.1, 0.0])
    assert deletion.auc == pytest.approx(0.375)
    assert insertion_curve(prob, players, order).auc == pytest.approx(0.625)
    worst = deletion_curve(prob, players, order[::-1])
    assert worst.auc == pytest.approx(0.625)


def test_a_region_is_ranked_by_its_mean_and_the_fraction_counts_tiles() -> None:
    players = Players(np.array([0, 0, 0, 1, -1, 2], np.int32), cell=3)
    values = np.array([0.2, 0.2, 0.2, 0.5, 9.0, np.nan])
    assert region_order(players, values).tolist() == [1, 0, 2]  # NaN only: last
    steps = deletion_curve(lambda k: k.sum(1).astype(float), players, np.array([0, 1, 2]))
    np.testing.assert_allclose(steps.fraction, [0, 0.6, 0.8, 1.0])  # 3, 1 and 1 of 5 tiles
    np.testing.assert_allclose(steps.probability, [5, 2, 1, 0])  # the excluded tile never kept
    assert sorted(region_order(players, values, np.random.default_rng(0)).tolist()) == [0, 1, 2]


# ---- targets and reasons ------------------------------------------------------------------------


def test_the_target_is_the_positive_class_of_two_else_the_predicted_one() -> None:
    assert choose_target(("neg", "pos"), (0.9, 0.1)) == 1
    assert choose_target(("a", "b", "c"), (0.2, 0.1, 0.7)) == 2
    assert choose_target(("a", "b", "c"), (0.2, 0.1, 0.7), "b") == 1
    with pytest.raises(ValueError, match="no class 'x'"):
        choose_target(("a", "b"), (0.5, 0.5), "x")


def test_feature_groups_name_handcrafted_columns_and_sum_a_learned_part() -> None:
    handcrafted = HandcraftedEncoder()
    assert feature_groups(TinyCNN(), "tiny_cnn") is None
    alone = feature_groups(handcrafted, "handcrafted")
    assert alone is not None and alone.names == HANDCRAFTED_FEATURES
    both = feature_groups(ConcatEncoder([TinyCNN(), handcrafted]), "tiny_cnn+handcrafted")
    assert both is not None
    assert both.names == ("tiny_cnn (learned)", *HANDCRAFTED_FEATURES)
    width = TinyCNN().feature_dim
    assert (both.of_column[:width] == 0).all() and both.of_column[width] == 1
    summed = both.sum(np.ones((2, width + len(HANDCRAFTED_FEATURES))))
    assert summed.shape == (2, len(both.names)) and summed[0, 0] == width
    joined = ENCODERS.build("handcrafted+texture")
    named = feature_groups(joined, "handcrafted+texture")
    assert named is not None and named.names == (*HANDCRAFTED_FEATURES, *TEXTURE_FEATURES)
    assert (named.of_column == np.arange(len(named.names))).all()


def test_reasons_add_up_to_the_tile_s_difference_from_the_median_tile() -> None:
    head = _head("abmil_gated", seed=9)
    x = _bag(20, seed=10)
    groups = feature_groups(HandcraftedEncoder(), "handcrafted")
    assert groups is not None
    # a 12-column bag stands for the first 12 named features
    groups = type(groups)(groups.names[:D], groups.of_column[:D])
    tiles = np.array([3, 11])
    reasons = tile_reasons(head, x, tiles, 1, groups, steps=64)
    assert reasons.shape == (2, D)
    with torch.no_grad():
        score = log_odds(head(x).tile_logits.double(), 1)
        median = x.median(dim=0).values
        moved = x.clone()
        moved[tiles] = median
        base = log_odds(head(moved).tile_logits.double(), 1)
    np.testing.assert_allclose(
        reasons.sum(1), (score - base)[tiles].numpy(), rtol=0.02, atol=1e-3
    )  # Integrated Gradients' completeness


def test_explain_bag_puts_it_together() -> None:
    head = _head("abmil_gated", seed=11)
    x = _bag(48, seed=12).numpy()
    grid = np.argwhere(np.ones((6, 8), bool))
    with torch.no_grad():
        out = head(torch.from_numpy(x))
    scores = torch.softmax(out.tile_logits, -1).numpy()
    keep = np.ones(48, bool)
    keep[:4] = False
    e = explain_bag(
        head,
        x,
        grid,
        out.attention.numpy(),
        scores,
        1,
        ExplainSettings(budget=8, max_players=12, top_regions=2),
        keep=keep,
    )
    assert e.players.n_players <= 12 and np.isnan(e.shapley[:4]).all()
    assert np.nansum(e.shapley) == pytest.approx(e.full_log_odds - e.empty_log_odds, abs=1e-4)
    assert set(e.faithfulness) == {"attention", "tile_score", "shapley"}
    for f in e.faithfulness.values():
        assert f.deletion.fraction[-1] == pytest.approx(1.0)
        # the whole bag (of the kept tiles) first, the empty bag last
        assert f.deletion.probability[0] == pytest.approx(1 / (1 + math.exp(-e.full_log_odds)))
        assert f.deletion.probability[-1] == pytest.approx(0.5)
    assert e.reason_tiles.size == 0 and e.reason_names == ()  # no named features given
