"""Heatmap rasterisation, slide discovery and ids, output publication, store arrays (pure or
local files)."""

from __future__ import annotations

import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import zarr

from slidemill.pipeline.graph import (
    fresh_work_dir,
    publish,
    rasterise,
    read_block,
    work_dir,
    write_array,
    write_block,
)
from slidemill.pipeline.slides import assign_ids, expand
from slidemill.schemas.layout import SLIDE_MARK


def test_rasterise_puts_scores_in_their_cells_and_nan_elsewhere() -> None:
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], np.float32)
    heat = rasterise(scores, np.array([0, 1, 2]), np.array([3, 0, 3]), (3, 4))
    assert heat.shape == (2, 3, 4)
    assert heat[1, 0, 3] == np.float32(0.1) and heat[1, 1, 0] == np.float32(0.8)
    assert heat[0, 2, 3] == np.float32(0.5)
    assert np.isnan(heat).sum() == 2 * (12 - 3)


def test_ids_are_unique_and_filesystem_safe(tmp_path: Path) -> None:
    paths = [Path("/a/x y.svs"), Path("/b/x y.tiff"), Path("/c/X_y.svs"), Path("/d/..svs")]
    ids = [e.slide_id for e in assign_ids(paths)]
    assert ids == ["x_y", "x_y-2", "X_y-3", "slide"]


def test_ids_keep_letters_of_any_script_in_one_spelling() -> None:
    decomposed = unicodedata.normalize("NFD", "ünïcode name")
    paths = [Path(f"/a/{decomposed}.svs"), Path("/b/ünïcode name.tiff"), Path("/c/a%2F#b?c.svs")]
    ids = [e.slide_id for e in assign_ids(paths)]
    assert ids == ["ünïcode_name", "ünïcode_name-2", "a_2F_b_c"]
    assert all(unicodedata.is_normalized("NFC", i) for i in ids)


def test_folders_are_walked_and_named_files_kept(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("b.svs", "a.ndpi", "notes.txt", "sub/c.tif"):
        (tmp_path / name).write_bytes(b"x")
    named = tmp_path / "odd.name"
    found = expand([tmp_path, named, tmp_path / "b.svs"])
    assert [p.name for p in found] == ["a.ndpi", "b.svs", "c.tif", "odd.name"]


def test_publish_replaces_an_earlier_result_whole(tmp_path: Path) -> None:
    first = fresh_work_dir(tmp_path, "s1")
    (first / "old.txt").write_text("1")
    publish(tmp_path, "s1")
    second = fresh_work_dir(tmp_path, "s1")
    (second / "new.txt").write_text("2")
    assert (tmp_path / "s1" / "old.txt").exists()  # untouched until the new one is whole
    publish(tmp_path, "s1")
    assert sorted(p.name for p in (tmp_path / "s1").iterdir()) == [SLIDE_MARK, "new.txt"]
    assert not work_dir(tmp_path, "s1").exists()
    assert list((tmp_path / ".partial").iterdir()) == []


def test_diagnosis_uses_the_trained_threshold_for_two_classes() -> None:
    from slidemill.pipeline.graph import decide_label

    assert decide_label((0.7, 0.3), None) == 0
    assert decide_label((0.7, 0.3), 0.25) == 1  # a low threshold favours the second class
    assert decide_label((0.2, 0.8), 0.9) == 0
    assert decide_label((0.2, 0.3, 0.5), 0.1) == 2  # more than two classes: argmax


def test_an_array_rebuilt_under_the_same_path_is_read_afresh(tmp_path: Path) -> None:
    """Opened arrays are kept per worker; a store planned again must not be read through the
    old array's metadata."""
    store = tmp_path / "slide.zarr"
    zarr.open_group(str(store), mode="w")
    write_array(store, "x", np.arange(5, dtype=np.int64))
    np.testing.assert_array_equal(read_block(store, "x", 0, 10), np.arange(5))
    write_array(store, "x", np.arange(7, dtype=np.int64) * 2)  # same name, new shape and data
    np.testing.assert_array_equal(read_block(store, "x", 0, 10), np.arange(7) * 2)
    write_block(store, "x", 5, np.array([40, 50], dtype=np.int64))
    assert read_block(store, "x", 5, 7).tolist() == [40, 50]
    shutil.rmtree(store / "x")  # gone: an error, as zarr gives, not the old array
    with pytest.raises(FileNotFoundError):
        read_block(store, "x", 0, 1)
