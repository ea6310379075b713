"""`slidemill bench-learning`: cohorts, the table, and what the command refuses (the study itself
runs for minutes: its figures are in docs/learning-studies.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from slidemill.bench import (
    DEFAULT_TILING,
    STRATEGIES,
    LearningSettings,
    StudyRow,
    cohorts,
    encoder_folder,
    features_folder,
    run_learning_study,
    study_table,
)
from slidemill.cli import app
from slidemill.schemas.errors import InvalidInputError
from slidemill.workers import TrainConfig


def test_cohorts_are_disjoint_balanced_and_seeded() -> None:
    labels = {f"s{i:02d}": int(i % 3 == 0) for i in range(36)}  # 12 positive, 24 negative
    groups = cohorts(labels, 8, seed=0)
    assert len(groups) == 3  # 12 positives make three cohorts of 4
    assert all(len(g) == 8 and sum(labels[i] for i in g) == 4 for g in groups)
    flat = [i for g in groups for i in g]
    assert len(set(flat)) == len(flat) and all(isinstance(i, str) for i in flat)
    assert cohorts(labels, 8, seed=0) == groups != cohorts(labels, 8, seed=1)
    assert cohorts(labels, 30, seed=0) == []


def test_every_strategy_is_a_valid_training_config() -> None:
    for name, settings in STRATEGIES.items():
        kwargs = {k: v for k, v in settings.items() if k != "instance_k"}
        config = TrainConfig(**kwargs)  # type: ignore[arg-type]
        assert config.first_decision <= config.max_epochs, name
    defaults = LearningSettings()
    assert set(defaults.strategies) | set(defaults.baseline_strategies) <= set(STRATEGIES)


def test_the_table_has_a_column_per_generator_and_cohort() -> None:
    rows = [
        StudyRow(g, n, "abmil_gated", "s", 1, 0.9, 0.3, 40.0, 0.8, 0.7, 0.5)
        for g in ("textured", "drawn")
        for n in (16, 32)
    ]
    table = study_table(rows).splitlines()
    assert table[0].startswith("| strategy | head | drawn n=16 | drawn n=32 | textured n=16")
    assert len(table) == 3 and table[2].count("0.900") == 4


def test_a_cohort_larger_than_the_set_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="cohort size 40"):
        run_learning_study(tmp_path, tmp_path, LearningSettings(cohorts=(16, 40)), console=None)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())
    res = CliRunner().invoke(app, ["bench-learning", "--out", str(tmp_path), "--cohorts", "x"])
    assert res.exit_code == 2 and "--cohorts" in res.output


def test_features_and_encoder_folders_name_the_encoder_and_any_other_tiling(
    tmp_path: Path,
) -> None:
    assert features_folder(tmp_path, "histo_cnn") == tmp_path / "features"
    assert features_folder(tmp_path, "histo_cnn+handcrafted") == (
        tmp_path / "features-histo_cnn_handcrafted"
    )
    assert features_folder(tmp_path, "timm:resnet18", *DEFAULT_TILING) == (
        tmp_path / "features-timm-resnet18"
    )
    assert features_folder(tmp_path, "handcrafted", 112, 0.5) == (
        tmp_path / "features-handcrafted-112px-0.5mpp"
    )
    assert features_folder(tmp_path, "histo_cnn", 128, 1.0) == tmp_path / "features-128px-1mpp"
    assert encoder_folder(tmp_path) == tmp_path / "encoder"
    assert encoder_folder(tmp_path, 112, 0.5) == tmp_path / "encoder-112px-0.5mpp"


def test_the_command_passes_encoders_tiling_generators_and_strategies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import slidemill.bench as bench

    seen: list[LearningSettings] = []

    def fake(out: Path, texture: Path, s: LearningSettings, console: object) -> list[StudyRow]:
        seen.append(s)
        return []

    monkeypatch.setattr(bench, "run_learning_study", fake)
    wa = "fixed 40 epochs + weight averaging"
    args = ["bench-learning", "--out", str(tmp_path), "--texture", str(tmp_path)]
    res = CliRunner().invoke(
        app,
        [*args, "--encoders", "handcrafted, histo_cnn+handcrafted", "--tile-px", "128",
         "--tile-mpp", "0.5", "--generators", "textured", "--strategy", wa],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    (s,) = seen
    assert s.encoders == ("handcrafted", "histo_cnn+handcrafted")
    assert (s.tile_px, s.tile_mpp, s.generators) == (128, 0.5, ("textured",))
    assert s.strategies == s.baseline_strategies == (wa,)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and seen[1] == LearningSettings(), res.output
    for bad, option in (
        (["--generators", "drawn,painted"], "--generators"),
        (["--strategy", "no such"], "--strategy"),
        (["--encoders", " , "], "--encoders"),
    ):
        res = CliRunner().invoke(app, [*args, *bad])
        assert res.exit_code == 2 and option in res.output, res.output
    assert len(seen) == 2


def test_an_unknown_generator_is_refused_before_any_work(tmp_path: Path) -> None:
    s = LearningSettings(generators=("drawn", "painted"))
    with pytest.raises(InvalidInputError, match="painted"):
        run_learning_study(tmp_path, tmp_path, s, console=None)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())
