"""The features folder `slidemill features` writes: its encoder bundle, every slide folder and
whether its features are usable, and the bags read lazily from each slide's Zarr store."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from slidemill.schemas import ModelManifest, SlideResult
from slidemill.schemas.layout import (
    ENCODER_BUNDLE,
    MANIFEST_JSON,
    RESULT_JSON,
    SLIDE_STORE,
    StoreArray,
)
from slidemill.workers.errors import TrainingError
from slidemill.workers.models import read_manifest

"""The folder of a features folder that holds the encoder the features were computed with."""


@dataclass(frozen=True, slots=True)
class FeatureSlide:
    """One slide folder of a features folder."""

    slide_id: str
    """Folder name = slide id."""
    path: str
    """The slide file's path, from `result.json` ('' when unreadable)."""
    store: Path
    """Its `slide.zarr` group."""
    n_tiles: int
    """Rows of its `features` array (0 when it has none)."""
    reason: str | None
    """Why it has no usable features (not done, no `features` array, ...); None when usable."""


@dataclass(frozen=True, slots=True)
class FeatureFolder:
    """A features folder as scanned: the encoder bundle and every slide folder."""

    root: Path
    """The folder."""
    encoder_bundle: Path
    """`root/encoder-bundle`: the encoder the features were computed with."""
    manifest: ModelManifest
    """The encoder bundle's manifest (feature_dim, input_mpp, tile_px, normalisation)."""
    slides: Mapping[str, FeatureSlide]
    """Slide id → slide folder, usable or not."""


def scan_features(root: Path) -> FeatureFolder:
    """Read a features folder's encoder manifest and every `<slide_id>/result.json`.

    A slide has usable features when its result is `done` and its `slide.zarr/features` array is
    (N > 0, feature_dim). Features of another width mean the folder mixes encoders: an error.
    """
    import zarr

    root = Path(root)
    if not root.is_dir():
        raise TrainingError(f"{root}: no such features folder")
    bundle = root / ENCODER_BUNDLE
    if not (bundle / MANIFEST_JSON).is_file():
        raise TrainingError(
            f"{root}: not a features folder (no {ENCODER_BUNDLE}/manifest.json); "
            "make one with `slidemill features`"
        )
    manifest = read_manifest(bundle)
    slides: dict[str, FeatureSlide] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        result_path = folder / RESULT_JSON
        if folder.name.startswith(".") or folder.name == ENCODER_BUNDLE:
            continue
        if not result_path.is_file():
            continue
        store = folder / SLIDE_STORE
        try:
            result = SlideResult.model_validate_json(result_path.read_bytes())
        except (ValidationError, OSError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            slides[folder.name] = FeatureSlide(
                folder.name, "", store, 0, f"unreadable result.json ({first})"
            )
            continue
        if result.status != "done":
            why = f"status {result.status}: {result.error}" if result.error else result.status
            slides[folder.name] = FeatureSlide(folder.name, result.path, store, 0, why)
            continue
        try:
            shape = tuple(zarr.open_array(store=str(store / StoreArray.FEATURES), mode="r").shape)
        except (FileNotFoundError, OSError, ValueError, KeyError) as err:
            slides[folder.name] = FeatureSlide(
                folder.name, result.path, store, 0, f"no features array ({type(err).__name__})"
            )
            continue
        if len(shape) != 2 or shape[0] == 0:
            slides[folder.name] = FeatureSlide(
                folder.name, result.path, store, 0, f"features of shape {shape}, no tiles"
            )
            continue
        if shape[1] != manifest.feature_dim:
            raise TrainingError(
                f"{store}: {shape[1]}-d features, but {bundle} makes {manifest.feature_dim}-d "
                "ones; a features folder holds one encoder's features"
            )
        slides[folder.name] = FeatureSlide(folder.name, result.path, store, int(shape[0]), None)
    return FeatureFolder(root, bundle, manifest, slides)


class FeatureBags(Mapping[str, NDArray[np.float32]]):
    """Slide id → features (N, D) float32, read from each slide's Zarr store on first access.

    Bags are kept in memory while they fit in `cache_bytes`; beyond that they are read again at
    every access (each epoch), so a cohort larger than memory still trains.
    """

    def __init__(self, stores: Mapping[str, Path], cache_bytes: int = 8 << 30) -> None:
        self._stores = dict(stores)
        self._cache: dict[str, NDArray[np.float32]] = {}
        self._cache_bytes = cache_bytes
        self._cached = 0

    def __getitem__(self, slide_id: str) -> NDArray[np.float32]:
        import zarr

        bag = self._cache.get(slide_id)
        if bag is not None:
            return bag
        store = self._stores[slide_id]
        data = zarr.open_array(store=str(store / StoreArray.FEATURES), mode="r")[...]
        bag = np.ascontiguousarray(np.asarray(data), dtype=np.float32)
        if self._cached + bag.nbytes <= self._cache_bytes:
            self._cache[slide_id] = bag
            self._cached += bag.nbytes
        return bag

    def shape_of(self, slide_id: str) -> tuple[int, ...]:
        """The bag's shape, from the cache or the array's metadata (no data read)."""
        import zarr

        bag = self._cache.get(slide_id)
        if bag is not None:
            return tuple(bag.shape)
        array = zarr.open_array(store=str(self._stores[slide_id] / StoreArray.FEATURES), mode="r")
        return tuple(int(n) for n in array.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._stores)

    def __len__(self) -> int:
        return len(self._stores)

    def __contains__(self, slide_id: object) -> bool:
        return slide_id in self._stores
