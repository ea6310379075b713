"""`slidemill bench-learning`: cohorts, the table, and what the command refuses (the study itself
runs for minutes: its figures are in the README)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from slidemill.cli import app
from slidemill.pipeline.bench import (
    STRATEGIES,
    LearningSettings,
    StudyRow,
    cohorts,
    run_learning_study,
    study_table,
)
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
