"""MIL heads behind one protocol: every registered head's contract, and each family's own math."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slidemill.workers import (
    CLAM,
    HEADS,
    FittedInputHead,
    InstanceLossHead,
    MILHead,
    MILOutput,
    TopKMIL,
    TransMIL,
    init_bundle,
    load_bundle,
    nystrom_attention,
    predict_slide,
    smooth_top1_svm_loss,
)
from slidemill.workers.models import iterative_pinv, nystrom_from_landmarks

IN_DIM = 24
N_CLASSES = 3
# small settings so every head runs in milliseconds; transmil's 8 landmarks put bags of more than
# 8 tiles (+ class token) on the Nyström path rather than the exact one
SMALL: dict[str, dict[str, int | float | str | bool]] = {
    "abmil": {"hidden_dim": 16, "attention_dim": 8},
    "abmil_gated": {"hidden_dim": 16, "attention_dim": 8},
    "mean_pool": {"hidden_dim": 16},
    "max_pool": {"hidden_dim": 16},
    "transmil": {"dim": 32, "heads": 4, "n_landmarks": 8},
}
ORDER_DEPENDENT = {"transmil"}  # PPEG lays tiles on a grid in bag order: by design
EXPECTED = {
    "abmil", "abmil_gated", "clam_sb", "clam_mb", "transmil", "mean_pool", "max_pool", "topk_linear"
}  # fmt: skip


def build(name: str, n_classes: int = N_CLASSES, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return HEADS.build(name, in_dim=IN_DIM, n_classes=n_classes, **SMALL.get(name, {})).eval()


def topk(**kwargs: int) -> TopKMIL:
    head = HEADS.build("topk_linear", in_dim=IN_DIM, **{"n_classes": 2, **kwargs}).eval()
    assert isinstance(head, TopKMIL)
    return head


def run(head: nn.Module, x: torch.Tensor) -> MILOutput:
    with torch.no_grad():
        out = head(x)
    assert isinstance(out, MILOutput)
    return out


def test_the_registry_holds_every_head_family() -> None:
    assert set(HEADS.names()) >= EXPECTED


@pytest.mark.parametrize("name", HEADS.names())
def test_head_class_documents_its_tensor_shapes(name: str) -> None:
    doc = inspect.getdoc(type(build(name))) or ""
    assert "(N, in_dim)" in doc and "MILOutput" in doc and "(N, C)" in doc, doc


@pytest.mark.parametrize("name", HEADS.names())
@pytest.mark.parametrize("n", [1, 2, 5, 37, 20_000])
def test_output_shapes_and_attention_is_a_distribution(name: str, n: int) -> None:
    head = build(name)
    assert isinstance(head, MILHead)
    out = run(head, torch.randn(n, IN_DIM))
    assert out.logits.shape == (N_CLASSES,)
    assert out.attention.shape == (n,)
    assert out.tile_logits.shape == (n, N_CLASSES)
    assert bool(torch.isfinite(out.logits).all() and torch.isfinite(out.tile_logits).all())
    assert bool((out.attention >= 0).all())
    assert float(out.attention.double().sum()) == pytest.approx(1.0, abs=1e-5)
    if n == 1:
        torch.testing.assert_close(out.attention, torch.ones(1))


@pytest.mark.parametrize("name", HEADS.names())
def test_eval_mode_is_deterministic(name: str) -> None:
    head = build(name)
    x = torch.randn(40, IN_DIM)
    a, b = run(head, x), run(head, x)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.attention, b.attention)
    assert torch.equal(a.tile_logits, b.tile_logits)


@pytest.mark.parametrize("name", sorted(set(HEADS.names()) - ORDER_DEPENDENT))
def test_a_bag_is_a_set(name: str) -> None:
    # permuting the tiles permutes attention and tile logits and leaves the slide logits alone
    head = build(name)
    x = torch.randn(50, IN_DIM)
    perm = torch.randperm(50)
    out, shuffled = run(head, x), run(head, x[perm])
    torch.testing.assert_close(shuffled.logits, out.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled.attention, out.attention[perm], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(shuffled.tile_logits, out.tile_logits[perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["abmil", "abmil_gated", "clam_sb", "mean_pool"])
def test_slide_logits_are_the_attention_weighted_tile_logits(name: str) -> None:
    # the classifier is linear and Σ a_i = 1, so W_c Σ a_i h_i + b = Σ a_i (W_c h_i + b): the
    # heatmap's tile scores are the very terms of the slide score
    out = run(build(name), torch.randn(30, IN_DIM))
    torch.testing.assert_close(out.logits, out.attention @ out.tile_logits, atol=1e-5, rtol=1e-5)


def test_clam_mb_pools_each_class_with_its_own_branch() -> None:
    out = run(build("clam_mb"), torch.randn(30, IN_DIM))
    assert out.attention_all is not None and out.attention_all.shape == (N_CLASSES, 30)
    torch.testing.assert_close(out.attention_all.sum(dim=1), torch.ones(N_CLASSES))
    per_class = (out.attention_all * out.tile_logits.T).sum(dim=1)
    torch.testing.assert_close(out.logits, per_class, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.attention, out.attention_all[int(out.logits.argmax())])
    # the branches really differ, or "one per class" would be a single branch in disguise
    assert not torch.allclose(out.attention_all[0], out.attention_all[1])


def test_single_branch_heads_report_no_extra_branches() -> None:
    assert run(build("clam_sb"), torch.randn(5, IN_DIM)).attention_all is None
    assert run(build("abmil_gated"), torch.randn(5, IN_DIM)).attention_all is None


def test_max_pool_takes_each_class_maximum_and_points_at_the_deciding_tile() -> None:
    out = run(build("max_pool"), torch.randn(30, IN_DIM))
    torch.testing.assert_close(out.logits, out.tile_logits.amax(dim=0))
    predicted = int(out.logits.argmax())
    winner = int(out.tile_logits[:, predicted].argmax())
    expected = torch.zeros(30)
    expected[winner] = 1.0
    torch.testing.assert_close(out.attention, expected)


def test_max_pool_splits_attention_between_tied_tiles() -> None:
    x = torch.randn(10, IN_DIM)
    out = run(build("max_pool"), torch.cat([x, x]))  # every tile twice: every maximum ties
    predicted = int(out.logits.argmax())
    winner = int(out.tile_logits[:10, predicted].argmax())
    assert float(out.attention[winner]) == pytest.approx(0.5)
    assert float(out.attention[winner + 10]) == pytest.approx(0.5)


def test_mean_pool_attention_is_uniform() -> None:
    out = run(build("mean_pool"), torch.randn(8, IN_DIM))
    torch.testing.assert_close(out.attention, torch.full((8,), 1 / 8))


@pytest.mark.parametrize("name", HEADS.names())
@pytest.mark.parametrize("shape", [(0, IN_DIM), (IN_DIM,), (2, 3, IN_DIM)])
def test_heads_refuse_anything_but_one_bag(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="N>0"):
        build(name)(torch.zeros(shape))


# abmil_gated predates check_bag and is kept as it was: torch itself refuses the width there
@pytest.mark.parametrize("name", sorted(set(HEADS.names()) - {"abmil_gated"}))
def test_heads_name_the_feature_width_they_expect(name: str) -> None:
    with pytest.raises(ValueError, match=rf"\(N>0, {IN_DIM}\)"):
        build(name)(torch.zeros(4, IN_DIM + 1))


@pytest.mark.parametrize("name", HEADS.names())
def test_manifest_settings_rebuild_the_head(name: str, tmp_path: Path) -> None:
    # head_kwargs travel through manifest.json: the bundle must rebuild and run the same head
    init_bundle(
        tmp_path / name,
        encoder="tiny_cnn",
        head=name,
        head_kwargs=SMALL.get(name, {}),
        class_names=("a", "b", "c"),
        tile_px=32,
    )
    model = load_bundle(tmp_path / name, torch.device("cpu"))
    features = np.random.default_rng(0).standard_normal((12, 32)).astype(np.float32)
    pred = predict_slide(model, features)
    assert pred.probabilities.shape == (3,) and pred.tile_scores.shape == (12, 3)
    assert float(pred.attention.sum()) == pytest.approx(1.0, abs=1e-5)
    again = predict_slide(load_bundle(tmp_path / name, torch.device("cpu")), features)
    np.testing.assert_array_equal(pred.probabilities, again.probabilities)


# --- topk_linear: instance scores on standardised features, top-k pooling ------------------------


def test_topk_pools_the_k_most_suspect_tiles_against_a_negative_class_at_zero() -> None:
    torch.manual_seed(0)
    one = topk(n_classes=N_CLASSES, scorers=1)
    out = run(one, torch.randn(30, IN_DIM))
    s = out.tile_logits[:, 1:]
    assert bool((out.tile_logits[:, 0] == 0).all()) and float(out.logits[0]) == 0.0
    torch.testing.assert_close(out.logits[1:], s.topk(3, dim=0).values.mean(dim=0))
    strongest = 1 + int(out.logits[1:].argmax())
    top = set(out.tile_logits[:, strongest].topk(3).indices.tolist())
    assert set(torch.nonzero(out.attention).flatten().tolist()) == top
    torch.testing.assert_close(out.attention[sorted(top)], torch.full((3,), 1 / 3))
    # a bag of fewer tiles than k pools them all
    few = run(one, torch.randn(2, IN_DIM))
    torch.testing.assert_close(few.logits[1:], few.tile_logits[:, 1:].mean(dim=0))
    with pytest.raises(ValueError, match="k and scorers must be at least 1"):
        HEADS.build("topk_linear", in_dim=IN_DIM, n_classes=2, k=0)


def test_topk_averages_each_scorer_s_own_pooling() -> None:
    """Each scorer pools its own top k (not the top k of the mean score), so the slide's
    evidence is the mean of the scorers' evidence; the tile scores are the mean scores."""
    torch.manual_seed(1)
    five = topk()
    assert five.scorers == 5
    bag = torch.randn(50, IN_DIM)
    one = topk(scorers=1)
    alone = []
    for r in range(5):
        one.score.weight.data.copy_(five.score.weight[r : r + 1])
        one.score.bias.data.copy_(five.score.bias[r : r + 1])
        alone.append(run(one, bag))
    out = run(five, bag)
    torch.testing.assert_close(out.logits, torch.stack([o.logits for o in alone]).mean(0))
    torch.testing.assert_close(out.tile_logits, torch.stack([o.tile_logits for o in alone]).mean(0))
    # the scorers start apart: one start's picks are not every scorer's
    assert len({tuple(o.tile_logits[:, 1].topk(3).indices.tolist()) for o in alone}) > 1


def test_topk_standardises_with_the_training_tiles_and_keeps_them_in_its_state() -> None:
    head = topk().train()
    assert isinstance(head, FittedInputHead)
    scales = torch.linspace(0.01, 5.0, IN_DIM)
    bags = [torch.randn(n, IN_DIM) * scales + float(n) for n in (200, 301, 150)]
    for bag in bags:
        bag[:, 0] = 7.0  # a constant feature: unit spread, not a division by zero
    head.fit_input(bags)
    centred = torch.cat([b - b.median(dim=0).values for b in bags])
    state = head.state_dict()
    torch.testing.assert_close(state["input_mean"], centred.mean(0))
    assert float(state["input_std"][0]) == 1.0
    torch.testing.assert_close(state["input_std"][1:], centred.std(0)[1:])
    nn.init.normal_(head.score.weight)
    again = topk()
    again.load_state_dict(state)
    bag = torch.randn(40, IN_DIM)
    torch.testing.assert_close(run(again.eval(), bag).logits, run(head.eval(), bag).logits)
    with pytest.raises(ValueError, match="at least one bag"):
        head.fit_input([])


def test_topk_reads_each_tile_against_its_own_slide() -> None:
    """A shift of every tile of a slide alike (its stain, its scanner) changes nothing; a few
    tiles that stand out from their slide along what the scorers weigh become its evidence."""
    torch.manual_seed(2)
    head = topk()
    nn.init.normal_(head.score.weight, std=0.01)  # weights of a trained head's size
    bag = torch.randn(60, IN_DIM)
    shifted = bag + 3.0 * torch.randn(IN_DIM)
    torch.testing.assert_close(run(head, shifted).logits, run(head, bag).logits)
    outliers = bag.clone()
    direction = head.score.weight.mean(dim=0)
    outliers[:3] += 12.0 * direction / direction.norm()
    out = run(head, outliers)
    assert set(torch.nonzero(out.attention).flatten().tolist()) == {0, 1, 2}
    assert float(out.logits[1]) > float(run(head, bag).logits[1])


# --- CLAM: the instance-level clustering loss ---------------------------------------------------


def clam(name: str, **kwargs: int | float | str | bool) -> CLAM:
    head = HEADS.build(name, in_dim=IN_DIM, **kwargs)
    assert isinstance(head, CLAM) and isinstance(head, InstanceLossHead)
    return head


@pytest.mark.parametrize("name", ["clam_sb", "clam_mb"])
@pytest.mark.parametrize("subtyping", [False, True])
@pytest.mark.parametrize("loss", ["svm", "ce"])
@pytest.mark.parametrize("label", [0, 1])
def test_instance_loss_is_a_finite_scalar_that_trains_the_right_classifiers(
    name: str, subtyping: bool, loss: str, label: int
) -> None:
    torch.manual_seed(0)
    head = clam(name, n_classes=2, subtyping=subtyping, instance_loss=loss, k_sample=4)
    value = head.instance_loss(torch.randn(30, IN_DIM), torch.tensor(label))
    assert value.shape == () and bool(torch.isfinite(value)) and value.requires_grad
    value.backward()
    assert gradient_mass(head.instance_classifiers[label]) > 0
    assert gradient_mass(head.embed) > 0
    # other classes' classifiers learn only when the classes exclude each other
    assert (gradient_mass(head.instance_classifiers[1 - label]) > 0) == subtyping


def gradient_mass(module: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_instance_loss_works_on_bags_smaller_than_k() -> None:
    head = clam("clam_mb", n_classes=3, k_sample=8, subtyping=True)
    assert bool(torch.isfinite(head.instance_loss(torch.randn(3, IN_DIM), 2)))
    with pytest.raises(ValueError, match="label"):
        head.instance_loss(torch.randn(3, IN_DIM), 3)


def test_instance_loss_pseudo_labels_the_most_and_least_attended_tiles() -> None:
    # k = N/2: every tile is a pseudo-positive or a pseudo-negative, so the loss is the
    # criterion over all tiles with targets given by attention rank, computed here by hand
    torch.manual_seed(3)
    head = clam("clam_sb", n_classes=2, k_sample=5, instance_loss="ce").eval()
    x = torch.randn(10, IN_DIM)
    with torch.no_grad():
        out = head(x)
        h = head.embed(x)
        order = torch.argsort(out.attention, descending=True)
        targets = torch.zeros(10, dtype=torch.long)
        targets[order[:5]] = 1
        expected = nn.functional.cross_entropy(head.instance_classifiers[1](h), targets)
        torch.testing.assert_close(head.instance_loss(x, 1), expected)


def test_smooth_svm_loss_matches_its_two_class_closed_form() -> None:
    # two classes, α = τ = 1: τ log(1 + exp(1 + s_other − s_y)) = softplus(1 + s_other − s_y)
    logits = torch.tensor([[0.3, -1.2], [2.0, 2.5], [-4.0, 5.0]])
    target = torch.tensor([0, 1, 0])
    s_y = logits[torch.arange(3), target]
    s_other = logits[torch.arange(3), 1 - target]
    expected = nn.functional.softplus(1 + s_other - s_y).mean()
    torch.testing.assert_close(smooth_top1_svm_loss(logits, target), expected)


# --- TransMIL and Nyström attention -------------------------------------------------------------


def test_transmil_depends_on_tile_order() -> None:
    # not a bug: the PPEG convolutions see the tiles laid out on a grid in bag order
    head = build("transmil")
    x = torch.randn(50, IN_DIM)
    out, shuffled = run(head, x), run(head, x[torch.randperm(50)])
    assert not torch.allclose(out.logits, shuffled.logits, atol=1e-4)


@pytest.mark.parametrize("n", [1, 50])
def test_transmil_trains_every_parameter(n: int) -> None:
    torch.manual_seed(0)
    head = HEADS.build("transmil", in_dim=IN_DIM, n_classes=2, **SMALL["transmil"])
    out = head(torch.randn(n, IN_DIM))
    (nn.functional.cross_entropy(out.logits[None], torch.tensor([1])) + out.attention[0]).backward()
    for name, param in head.named_parameters():
        assert param.grad is not None, name
        assert bool(torch.isfinite(param.grad).all()), name
        assert float(param.grad.abs().sum()) > 0, name


def test_transmil_attention_is_the_class_tokens_last_layer_softmax() -> None:
    # recomputed from the last layer's own projections: softmax(q_cls Kᵀ/√d) per head, averaged,
    # restricted to the real tiles (not the class token or the square's padding) and renormalised
    head = build("transmil")
    assert isinstance(head, TransMIL)
    n = 10  # 4 × 4 grid: 6 padding tiles
    x = torch.randn(n, IN_DIM)
    captured: list[torch.Tensor] = []
    handle = head.layer2.attention.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    try:
        out = run(head, x)
    finally:
        handle.remove()
    (tokens,) = captured
    assert tokens.shape == (1 + 16, 32)
    q, k, _ = head.layer2.attention.to_qkv(tokens).detach().chunk(3, dim=-1)
    q, k = (t.reshape(17, 4, 8).transpose(0, 1) for t in (q, k))
    row = torch.softmax((q[:, :1] @ k.transpose(-1, -2))[:, 0] / math.sqrt(8), dim=-1)  # (H, 17)
    expected = row.mean(dim=0)[1 : n + 1]
    torch.testing.assert_close(out.attention, expected / expected.sum(), atol=1e-6, rtol=1e-5)


def test_iterative_pinv_converges_to_a_pseudo_inverse() -> None:
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(4, 16, 8) @ torch.randn(4, 8, 16) * 0.5, dim=-1).double()
    residual = [float((a @ iterative_pinv(a, i) @ a - a).abs().max()) for i in (2, 6, 20)]
    assert residual[0] > residual[1] > residual[2]
    assert residual[2] < 1e-6
    z = iterative_pinv(a, 20)
    torch.testing.assert_close(z @ a @ z, z, atol=1e-5, rtol=1e-5)  # the other Penrose condition


def test_nystrom_is_exact_when_the_landmarks_are_the_tokens() -> None:
    torch.manual_seed(1)
    q, k, v = (torch.randn(4, 16, 8, dtype=torch.float64) * 0.5 for _ in range(3))
    exact = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
    torch.testing.assert_close(nystrom_from_landmarks(q, k, v, q, k, 20), exact)


def test_nystrom_segment_means_are_exact_on_piecewise_constant_sequences() -> None:
    # each run of 3 equal tokens is one segment: the landmarks are the distinct tokens and the
    # approximation (which pools adaptively, no padding) must equal full softmax attention
    torch.manual_seed(2)
    q, k, v = (
        (torch.randn(4, 16, 8, dtype=torch.float64) * 0.5).repeat_interleave(3, dim=1)
        for _ in range(3)
    )
    exact = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
    torch.testing.assert_close(
        nystrom_attention(q, k, v, n_landmarks=16, pinv_iterations=20), exact
    )
    # the default 6 iterations already come close
    approx = nystrom_attention(q, k, v, n_landmarks=16, pinv_iterations=6)
    assert float((approx - exact).abs().max()) < 0.1
