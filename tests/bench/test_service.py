"""The service's load benchmark, small: batches submitted at once all finish and the ledger is
exact. Its latencies are reported by `slidemill bench-service`, never asserted."""

from __future__ import annotations

from pathlib import Path

from slidemill.bench import load_benchmark


def test_concurrent_batches_all_finish_with_exact_counts(tmp_path: Path) -> None:
    report = load_benchmark(tmp_path / "load", batches=4, slides_per_batch=3)
    assert report.exact
    assert (report.batches, report.slides) == (4, 12)
    assert len(report.submit_ms) == 4 and report.read_ms
