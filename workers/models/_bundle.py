"""Model bundles: `manifest.json` (a `ModelManifest`) + `weights.safetensors`.

A bundle is identified by the sha256 of its canonical manifest, which itself records the sha256
of the weights, so the id changes when either changes. A `torchscript` encoder's file travels in
the bundle as `encoder.torchscript.pt`, its sha256 in the manifest's `encoder_kwargs`.

A bundle made from an encoder preset (`uni`, …) records the preset, the sha256 of its
publisher's weight file and where it was read (`encoder_preset`, `encoder_weights_sha256`,
`encoder_weights_source`); a bundle made with a local `encoder_weights` file records the last two.

Format 2 (`slidemill train`) adds the training features' reference (`reference.safetensors`,
its sha256 in the manifest's `reference`) and the temperature calibration (`calibration`).
A format-1 bundle (`model init`, a CLAM import) has neither: no OOD score, no calibration.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from slidemill.schemas import ModelManifest, Normalisation
from slidemill.schemas.files import staged_dir
from slidemill.schemas.layout import (
    ENCODER_TORCHSCRIPT,
    MANIFEST_JSON,
    REFERENCE_FILE,
    WEIGHTS_FILE,
)
from slidemill.workers.errors import ModelBundleError
from slidemill.workers.models._device import default_device, inference_settings
from slidemill.workers.models._encoders import ENCODERS, TorchScriptEncoder
from slidemill.workers.models._heads import HEADS
from slidemill.workers.models._preset_weights import fill_presets, preset_parts
from slidemill.workers.models._presets import PRESETS
from slidemill.workers.models._reference import ReferenceStats, load_reference, save_reference
from slidemill.workers.models._weights import load_encoder_weights

TORCHSCRIPT = "torchscript"

_ENCODER_WEIGHTS_FIELDS = ("encoder_preset", "encoder_weights_sha256", "encoder_weights_source")
"""Where the encoder's weights came from: optional, in format 1 and 2 alike."""
_OPTIONAL_FIELDS = ("reference", "calibration", *_ENCODER_WEIGHTS_FIELDS)
"""Manifest fields added after format 1, left out of the id when empty: a bundle written before
they existed keeps its id."""


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def manifest_sha256(manifest: ModelManifest) -> str:
    """The bundle id: sha256 of the manifest's canonical JSON (later fields left out when empty,
    so a bundle keeps the id it had before they existed)."""
    data = manifest.model_dump(mode="json")
    for key in _OPTIONAL_FIELDS:
        if data.get(key) is None:
            data.pop(key, None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _manifest_json(manifest: ModelManifest) -> str:
    """The manifest file: the encoder-weights fields written only when set, so a bundle without
    them is the file it was before they existed (and older slidemill still reads it)."""
    unset = {k for k in _ENCODER_WEIGHTS_FIELDS if getattr(manifest, k) is None}
    return manifest.model_dump_json(indent=2, exclude=unset) + "\n"


def read_manifest(bundle: Path) -> ModelManifest:
    """Read and validate a bundle's manifest (cheap: does not touch the weights)."""
    path = bundle / MANIFEST_JSON
    if not path.is_file():
        raise ModelBundleError(f"{bundle}: not a model bundle (no {MANIFEST_JSON})")
    try:
        return ModelManifest.model_validate_json(path.read_bytes())
    except ValidationError as err:
        raise ModelBundleError(f"{path}: invalid manifest: {err}") from err


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A bundle in memory, ready for inference (eval mode, on `device`)."""

    manifest: ModelManifest
    """The bundle's manifest."""
    sha256: str
    """The bundle id."""
    encoder: nn.Module
    """Tile encoder: (B, 3, H, W) → (B, feature_dim)."""
    head: nn.Module
    """MIL head: (N, feature_dim) → MILOutput."""
    device: torch.device
    """Where the modules live."""
    reference: ReferenceStats | None = None
    """The training features' reference (format 2), None without one."""


def build_modules(
    manifest: ModelManifest, bundle: Path | None = None
) -> tuple[nn.Module, nn.Module]:
    """Fresh (randomly initialised) encoder and head for a manifest; a `torchscript` encoder is
    built from the file in `bundle`, which is then required."""
    return build_encoder(manifest, bundle), build_head(manifest)


def build_encoder(manifest: ModelManifest, bundle: Path | None = None) -> nn.Module:
    """The manifest's encoder, checked to give `feature_dim`-wide features."""
    if manifest.encoder == TORCHSCRIPT:
        kwargs = _torchscript_kwargs(manifest, bundle)
    else:
        kwargs = dict(manifest.encoder_kwargs)
    encoder = ENCODERS.build(manifest.encoder, **kwargs)
    if encoder_width(encoder) != manifest.feature_dim:
        raise ModelBundleError(
            f"encoder {manifest.encoder!r} gives {encoder.feature_dim}-d features, "
            f"manifest says {manifest.feature_dim}"
        )
    return encoder


def _torchscript_kwargs(manifest: ModelManifest, bundle: Path | None) -> dict[str, object]:
    """The bundle's TorchScript file as factory kwargs; `check_bundle` verifies its sha256.

    The width comes from the manifest rather than a probe tile: the checked file is the one
    whose width `init_bundle` measured.
    """
    if bundle is None:
        raise ModelBundleError("a torchscript encoder is built from its bundle folder; none given")
    return {
        "file": str(_torchscript_file(manifest, bundle)[0]),
        "feature_dim": manifest.feature_dim,
    }


def _torchscript_file(manifest: ModelManifest, bundle: Path) -> tuple[Path, str]:
    """The bundle's TorchScript file and the sha256 its manifest records for it."""
    path = bundle / ENCODER_TORCHSCRIPT
    kwargs = dict(manifest.encoder_kwargs)
    expected = kwargs.pop("file_sha256", None)
    if kwargs or not isinstance(expected, str):
        raise ModelBundleError(
            f"{bundle / MANIFEST_JSON}: a torchscript encoder's encoder_kwargs hold file_sha256 "
            "only; "
            f"found {', '.join(sorted(manifest.encoder_kwargs)) or 'none'}"
        )
    if not path.is_file():
        raise ModelBundleError(
            f"{bundle}: no {ENCODER_TORCHSCRIPT} (the torchscript encoder's file)"
        )
    return path, expected


def build_head(manifest: ModelManifest) -> nn.Module:
    """The manifest's MIL head, sized by its feature_dim and classes."""
    return HEADS.build(
        manifest.head,
        in_dim=manifest.feature_dim,
        n_classes=len(manifest.class_names),
        **manifest.head_kwargs,
    )


def encoder_width(encoder: nn.Module) -> int:
    """The `feature_dim` every registered encoder declares."""
    width = getattr(encoder, "feature_dim", None)
    if not isinstance(width, int):
        raise ModelBundleError(f"{type(encoder).__name__} declares no integer feature_dim")
    return width


def check_bundle(bundle: Path) -> ModelManifest:
    """A bundle's validated manifest, once its files are checked against it: the weights (and a
    torchscript encoder's file) must have the sha256 it records. `load_bundle` starts with this
    check; the batch runs it in the client too, so a corrupt bundle stops a run before any
    cluster starts."""
    manifest = read_manifest(bundle)
    weights = bundle / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelBundleError(f"{bundle}: no {WEIGHTS_FILE}")
    _check_sha256(weights, manifest.weights_sha256, "weights")
    if manifest.encoder == TORCHSCRIPT:
        _check_sha256(*_torchscript_file(manifest, bundle), "encoder file")
    if manifest.reference is not None:
        if not (bundle / REFERENCE_FILE).is_file():
            raise ModelBundleError(f"{bundle}: no {REFERENCE_FILE} (the manifest records one)")
        _check_sha256(bundle / REFERENCE_FILE, manifest.reference.sha256, "feature reference")
    return manifest


def _check_sha256(path: Path, expected: str, what: str) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise ModelBundleError(
            f"{path}: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}… "
            f"(corrupt or replaced {what})"
        )


def load_bundle(bundle: Path, device: torch.device | None = None) -> LoadedModel:
    """Load a bundle once `check_bundle` passes; on CUDA the encoder is put in channels_last
    for `encode_tiles`."""
    manifest = check_bundle(bundle)
    weights = bundle / WEIGHTS_FILE
    # a preset's every tensor comes from the bundle: built on the meta device, a 1.1 B-parameter
    # encoder is not first initialised at random
    meta = manifest.encoder in PRESETS
    with torch.device("meta") if meta else contextlib.nullcontext():
        encoder = build_encoder(manifest, bundle)
    head = build_head(manifest)
    state = load_file(str(weights))
    for prefix, module, assign in (("encoder.", encoder, meta), ("head.", head, False)):
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(part, strict=True, assign=assign)
        except RuntimeError as err:
            raise ModelBundleError(f"{weights}: weights do not fit {prefix[:-1]}: {err}") from err
    device = device or default_device()
    encoder.to(device).eval()
    if inference_settings(device).channels_last:  # once here; encode_tiles sends NHWC inputs
        encoder.to(memory_format=torch.channels_last)
    head.to(device).eval()
    reference = (
        load_reference(bundle / REFERENCE_FILE, manifest.feature_dim)
        if manifest.reference is not None
        else None
    )
    return LoadedModel(manifest, manifest_sha256(manifest), encoder, head, device, reference)


def save_bundle(
    out: Path,
    encoder: nn.Module,
    head: nn.Module,
    manifest_fields: Mapping[str, object],
    reference: ReferenceStats | None = None,
) -> ModelManifest:
    """Write a bundle atomically (a temporary folder renamed into place).

    With `reference`, the fields' `reference` (threshold, rule, shrinkage) is completed with the
    written file's sha256 and its counts, and the manifest is format 2; so it is with a
    `calibration`.

    A `TorchScriptEncoder`'s file is copied in as `encoder.torchscript.pt` and its sha256 put
    in the manifest's encoder_kwargs (where one is already recorded, the file must still match).
    """
    out = out.resolve()
    if out.exists() and any(out.iterdir()):
        raise ModelBundleError(f"{out}: exists and is not empty; choose a new folder")
    scripted = isinstance(encoder, TorchScriptEncoder)
    if scripted != (manifest_fields.get("encoder") == TORCHSCRIPT):
        raise ModelBundleError(
            f"{out}: encoder {type(encoder).__name__} saved under the name "
            f"{manifest_fields.get('encoder')!r}; a TorchScriptEncoder is {TORCHSCRIPT!r}"
        )
    with staged_dir(out) as tmp:
        fields = dict(manifest_fields)
        if isinstance(encoder, TorchScriptEncoder):
            fields["encoder_kwargs"] = _copy_encoder_file(encoder, tmp, fields)
        state = {f"encoder.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
        state |= {f"head.{k}": v.contiguous() for k, v in head.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        if reference is not None:
            save_reference(tmp / REFERENCE_FILE, reference)
            given = fields.get("reference")
            if not isinstance(given, Mapping):
                raise ModelBundleError(f"{out}: a reference needs its manifest entry (threshold)")
            fields["reference"] = {
                **given,
                "sha256": file_sha256(tmp / REFERENCE_FILE),
                "n_slides": reference.n_slides,
                "n_tiles": reference.n_tiles,
            }
        if fields.get("reference") is not None or fields.get("calibration") is not None:
            fields["format_version"] = 2
        manifest = ModelManifest.model_validate(
            {**fields, "weights_sha256": file_sha256(tmp / WEIGHTS_FILE)}
        )
        (tmp / MANIFEST_JSON).write_text(_manifest_json(manifest))
    return manifest


def _copy_encoder_file(
    encoder: TorchScriptEncoder, tmp: Path, fields: Mapping[str, object]
) -> dict[str, object]:
    """Copy the encoder's TorchScript file into a bundle being written; its encoder_kwargs."""
    shutil.copyfile(encoder.source, tmp / ENCODER_TORCHSCRIPT)
    actual = file_sha256(tmp / ENCODER_TORCHSCRIPT)
    given = fields.get("encoder_kwargs") or {}
    kwargs = dict(given) if isinstance(given, Mapping) else {}
    recorded = kwargs.get("file_sha256")
    if recorded is not None and recorded != actual:
        raise ModelBundleError(
            f"{encoder.source}: sha256 {actual[:12]}… is not the {str(recorded)[:12]}… "
            "recorded for this encoder (the file changed since it was loaded)"
        )
    return {**kwargs, "file_sha256": actual}


def init_bundle(
    out: Path,
    *,
    encoder: str = "resnet18",
    encoder_kwargs: Mapping[str, int | float | str | bool] | None = None,
    head: str = "abmil_gated",
    head_kwargs: Mapping[str, int | float | str | bool] | None = None,
    class_names: tuple[str, ...] = ("negative", "positive"),
    mpp: float = 0.5,
    tile_px: int = 224,
    seed: int = 0,
    encoder_weights: Path | None = None,
    encoder_file: Path | None = None,
    description: str | None = None,
    hub_cache: Path | None = None,
) -> ModelManifest:
    """A bundle with seeded random weights, for trying the plumbing end to end; with
    `encoder_weights` (a local state dict file) the encoder's weights come from that file, and
    the manifest records its sha256 and path.

    An encoder preset (`uni`, …, alone or in "A+B") takes its publisher's weights: from
    `encoder_weights` in the publisher's layout, else from the Hugging Face cache (`hub_cache`,
    default `hub_cache_dir()`), never the network; missing or foreign weights are an error,
    never a random preset. The manifest records the preset, the file's sha256 and its source,
    and the preset's normalisation.

    `encoder="torchscript"` takes the user's TorchScript file `encoder_file` (architecture and
    weights); its width is measured on one `tile_px` tile.
    """
    if encoder == TORCHSCRIPT and encoder_file is None:
        raise ModelBundleError(
            f"encoder {TORCHSCRIPT!r} needs its TorchScript file (encoder_file, --encoder-file)"
        )
    if encoder != TORCHSCRIPT and encoder_file is not None:
        raise ModelBundleError(
            f"encoder {encoder!r}: a TorchScript file (--encoder-file) is for encoder "
            f"{TORCHSCRIPT!r} only"
        )
    if encoder_file is not None and encoder_kwargs:
        raise ModelBundleError(f"encoder {TORCHSCRIPT!r} takes no encoder_kwargs")
    if encoder_file is None:
        # an encoder that measures in µm is told the tiles' resolution, unless the caller did
        encoder_kwargs = {**ENCODERS.resolution_kwargs(encoder, mpp), **(encoder_kwargs or {})}
    torch.manual_seed(seed)
    fields: dict[str, object] = {
        "encoder": encoder,
        "encoder_kwargs": dict(encoder_kwargs or {}),
        "feature_dim": 1,  # replaced below, once the encoder tells its width
        "head": head,
        "head_kwargs": dict(head_kwargs or {}),
        "class_names": class_names,
        "input_mpp": mpp,
        "tile_px": tile_px,
        "weights_sha256": "0" * 64,
        "description": f"random initialisation, seed {seed}: for plumbing checks, not diagnosis",
    }
    if encoder_weights is not None:
        fields["description"] = (
            f"encoder weights from {encoder_weights.name}; head randomly initialised (seed {seed})"
        )
    elif encoder_file is not None:
        fields["description"] = (
            f"TorchScript encoder {encoder_file.name}; head randomly initialised (seed {seed}): "
            "for plumbing checks, not diagnosis"
        )
    if encoder_file is not None:
        enc = ENCODERS.build(TORCHSCRIPT, file=str(encoder_file), probe_px=tile_px)
        fields["encoder_kwargs"] = {"file_sha256": file_sha256(encoder_file)}
    else:
        # a preset's every tensor comes from its publisher's file: built on the meta device, a
        # 1.1 B-parameter encoder is not first initialised at random
        with torch.device("meta") if encoder in PRESETS else contextlib.nullcontext():
            enc = ENCODERS.build(encoder, **dict(encoder_kwargs or {}))
    if len(preset_parts(enc)) == 1:
        fields |= _preset_fields(enc, encoder, tile_px)
    fields["feature_dim"] = encoder_width(enc)
    manifest = ModelManifest.model_validate(fields)  # before gigabytes of weights are read
    found = fill_presets(enc, encoder_weights, hub_cache)
    if found is not None:
        fields |= {
            "encoder_preset": found.preset,
            "encoder_weights_sha256": file_sha256(found.path),
            "encoder_weights_source": found.source,
            "description": f"encoder preset {found.preset} with its published weights "
            f"({found.source}); head randomly initialised (seed {seed})",
        }
    elif encoder_weights is not None:
        load_encoder_weights(enc, encoder_weights)
        fields |= {
            "encoder_weights_sha256": file_sha256(encoder_weights),
            "encoder_weights_source": str(encoder_weights.resolve()),
        }
    if description is not None:
        fields["description"] = description
    torch.manual_seed(seed)  # the head's random start does not depend on the encoder built above
    head_module = build_head(manifest)
    return save_bundle(out, enc, head_module, fields)


def _preset_fields(enc: nn.Module, encoder: str, tile_px: int) -> dict[str, object]:
    """A preset's manifest fields: its normalisation; its tile size where it takes no other."""
    preset = preset_parts(enc)[0].preset
    if not preset.any_tile_size and tile_px != preset.tile_px:
        raise ModelBundleError(
            f"encoder preset {preset.name!r} takes {preset.tile_px}-px tiles only (its position "
            f"embeddings are fixed), not {tile_px}"
        )
    norm = Normalisation(mean=preset.mean, std=preset.std)
    if encoder != preset.name and norm != Normalisation():
        raise ModelBundleError(
            f"encoder {encoder!r}: preset {preset.name!r} normalises tiles with its own mean and "
            "std, which the other parts do not expect; use it alone"
        )
    return {"normalisation": norm.model_dump()}
