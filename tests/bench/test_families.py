"""`slidemill bench-families`: the leave-one-family-out choice never sees the family held out,
the held-out figures are that family's test figures of the choice, the split, the table, and
what the command passes and refuses (the study itself runs for half an hour: its figures are in
docs/learning-studies.md)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slidemill.bench import (
    FAMILY_STRATEGIES,
    STRATEGIES,
    Candidate,
    FamilySettings,
    HeldOutRow,
    Score,
    choose_setting,
    family_table,
    leave_one_family_out,
    run_family_study,
    split_train_test,
)
from slidemill.cli import app
from slidemill.pipeline.synth import FAMILIES
from slidemill.schemas.errors import InvalidInputError

FAMS = ("a", "b", "c", "d")
CANDS = tuple(Candidate("handcrafted", 112, 0.5, h, "s") for h in ("h0", "h1", "h2"))


def test_the_choice_never_asks_about_the_held_out_family() -> None:
    # each family would pick its own favourite candidate; "d" favours h2 overwhelmingly
    favourite = {"a": "h0", "b": "h1", "c": "h0", "d": "h2"}
    for held_out in FAMS:
        asked: list[tuple[str, str]] = []

        def score(family: str, c: Candidate, asked: list[tuple[str, str]] = asked) -> float:
            asked.append((family, c.head))
            return 1.0 if c.head == favourite[family] else (0.0 if family != "d" else -9.0)

        choice = choose_setting(held_out, FAMS, CANDS, score, cohort=16)
        others = [f for f in FAMS if f != held_out]
        assert {f for f, _ in asked} == set(others)
        assert sorted(asked) == sorted((f, c.head) for f in others for c in CANDS)
        assert choice.others == tuple(others) and choice.cohort == 16
        means = {
            c.head: sum(1.0 if c.head == favourite[f] else (0.0 if f != "d" else -9.0)
                        for f in others) / 3
            for c in CANDS
        }  # fmt: skip
        best = max(CANDS, key=lambda c: (means[c.head], -CANDS.index(c)))
        assert choice.candidate == best.name and choice.score == pytest.approx(means[best.head])
    # ties go to the earlier candidate
    assert choose_setting("a", FAMS, CANDS, lambda f, c: 0.5).candidate == CANDS[0].name
    with pytest.raises(InvalidInputError, match="no family"):
        choose_setting("a", ("a",), CANDS, lambda f, c: 0.5)


def _score(family: str, c: Candidate, cv: float, test: float) -> Score:
    return Score(family, c.name, 16, 2, cv, math.nan, test, 0.5, 1.0)


def test_a_held_out_family_gets_the_test_figures_of_what_the_others_chose() -> None:
    s = FamilySettings(
        families=("a", "b", "c"), cohorts=(16,), encoders=("handcrafted",),
        tilings=((112, 0.5),), heads=("h0", "h1"), strategies=("s",),
    )  # fmt: skip
    h0, h1 = s.candidates()
    # h1 is best on "a" itself (cross-validation and test) but h0 on the others
    scores = [
        _score("a", h0, 0.6, 0.61), _score("a", h1, 0.99, 0.98),
        _score("b", h0, 0.9, 0.91), _score("b", h1, 0.7, 0.71),
        _score("c", h0, 0.8, 0.81), _score("c", h1, 0.75, 0.76),
    ]  # fmt: skip
    choices, rows = leave_one_family_out(scores, s)
    row_a = next(r for r in rows if r.family == "a")
    assert row_a.candidate == h0.name and row_a.test_auroc == 0.61
    assert row_a.cv_score_others == pytest.approx((0.9 + 0.8) / 2)
    assert row_a.best_test_auroc == 0.98  # reported for reading, never chosen on
    assert next(c for c in choices if c.held_out == "a").others == ("b", "c")
    table = family_table(rows)
    assert "| **worst family** | 0.610 (a)" in table


def test_the_split_is_stratified_disjoint_and_seeded() -> None:
    labels = {f"f-{i:03d}": int(i % 2 == 0) for i in range(48)}
    train, test = split_train_test(labels, 16, seed=0)
    assert len(test) == 16 and sum(labels[i] for i in test) == 8
    assert len(train) == 32 and sum(labels[i] for i in train) == 16
    assert not set(train) & set(test) and set(train) | set(test) == set(labels)
    assert split_train_test(labels, 16, seed=0) == (train, test)
    assert split_train_test(labels, 16, seed=1)[1] != test
    with pytest.raises(InvalidInputError, match="too few"):
        split_train_test(dict(list(labels.items())[:10]), 16, seed=0)


def test_the_default_candidates_are_few_and_weight_free() -> None:
    s = FamilySettings()
    cands = s.candidates()
    assert len(cands) == 12 and len(set(cands)) == 12
    assert {c.encoder for c in cands} == {"handcrafted"}
    assert set(s.strategies) == set(FAMILY_STRATEGIES) <= set(STRATEGIES)
    assert s.families == FAMILIES and s.n_train + s.n_test == 48


def test_the_study_refuses_bad_settings_before_any_work(tmp_path: Path) -> None:
    for bad, match in (
        (FamilySettings(families=("crowding", "painted")), "painted"),
        (FamilySettings(families=("crowding",)), "at least two"),
        (FamilySettings(cohorts=(16, 40)), "cohort size 40"),
        (FamilySettings(strategies=("no such",)), "no such"),
    ):
        with pytest.raises(InvalidInputError, match=match):
            run_family_study(tmp_path / "out", tmp_path, bad, console=None)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_the_command_passes_its_settings_and_refuses_bad_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import slidemill.bench as bench

    seen: list[FamilySettings] = []

    def fake(out: Path, texture: Path, s: FamilySettings, console: object) -> list[HeldOutRow]:
        seen.append(s)
        return [HeldOutRow("stroma", 16, "x", 0.9, 0.8, 0.7, 0.95)]

    monkeypatch.setattr(bench, "run_family_study", fake)
    args = ["bench-families", "--out", str(tmp_path), "--texture", str(tmp_path)]
    wa = "fixed 40 epochs + weight averaging"
    res = CliRunner().invoke(
        app,
        [*args, "--families", "stroma, necrosis", "--tilings", "224@0.5", "--heads",
         "topk_linear", "--strategy", wa, "--cohorts", "16", "--size", "2048x2048"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    (s,) = seen
    assert s.families == ("stroma", "necrosis") and s.tilings == ((224, 0.5),)
    assert (s.heads, s.strategies, s.cohorts, s.size) == (
        ("topk_linear",),
        (wa,),
        (16,),
        (2048, 2048),
    )
    assert "stroma" in res.output and "0.800 / 0.700" in res.output
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and seen[1] == FamilySettings(), res.output
    for bad, option in (
        (["--families", "stroma"], "--families"),
        (["--families", "stroma,painted"], "--families"),
        (["--tilings", "224"], "--tilings"),
        (["--strategy", "no such"], "--strategy"),
    ):
        res = CliRunner().invoke(app, [*args, *bad])
        assert res.exit_code == 2 and option in res.output, res.output
    assert len(seen) == 2
