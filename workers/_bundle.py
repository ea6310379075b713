"""Model bundles: `manifest.json` (a `ModelManifest`) + `weights.safetensors`.

A bundle is identified by the sha256 of its canonical manifest, which itself records the sha256
of the weights, so the id changes when either changes.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from schemas import ModelManifest
from workers._encoders import ENCODERS
from workers._heads import HEADS
from workers.errors import ModelBundleError

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def manifest_sha256(manifest: ModelManifest) -> str:
    """The bundle id: sha256 of the manifest's canonical JSON."""
    canonical = json.dumps(manifest.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def read_manifest(bundle: Path) -> ModelManifest:
    """Read and validate a bundle's manifest (cheap: does not touch the weights)."""
    path = bundle / MANIFEST
    if not path.is_file():
        raise ModelBundleError(f"{bundle}: not a model bundle (no {MANIFEST})")
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


def build_modules(manifest: ModelManifest) -> tuple[nn.Module, nn.Module]:
    """Fresh (randomly initialised) encoder and head for a manifest."""
    encoder = ENCODERS.build(manifest.encoder, **manifest.encoder_kwargs)
    if encoder_width(encoder) != manifest.feature_dim:
        raise ModelBundleError(
            f"encoder {manifest.encoder!r} gives {encoder.feature_dim}-d features, "
            f"manifest says {manifest.feature_dim}"
        )
    head = HEADS.build(
        manifest.head,
        in_dim=manifest.feature_dim,
        n_classes=len(manifest.class_names),
        **manifest.head_kwargs,
    )
    return encoder, head


def encoder_width(encoder: nn.Module) -> int:
    """The `feature_dim` every registered encoder declares."""
    width = getattr(encoder, "feature_dim", None)
    if not isinstance(width, int):
        raise ModelBundleError(f"{type(encoder).__name__} declares no integer feature_dim")
    return width


def load_bundle(bundle: Path, device: torch.device | None = None) -> LoadedModel:
    """Load a bundle, checking the weights against the manifest's sha256."""
    manifest = read_manifest(bundle)
    weights = bundle / WEIGHTS
    if not weights.is_file():
        raise ModelBundleError(f"{bundle}: no {WEIGHTS}")
    actual = file_sha256(weights)
    if actual != manifest.weights_sha256:
        raise ModelBundleError(
            f"{weights}: sha256 {actual[:12]}… does not match the manifest's "
            f"{manifest.weights_sha256[:12]}… (corrupt or replaced weights)"
        )
    encoder, head = build_modules(manifest)
    state = load_file(str(weights))
    for prefix, module in (("encoder.", encoder), ("head.", head)):
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as err:
            raise ModelBundleError(f"{weights}: weights do not fit {prefix[:-1]}: {err}") from err
    device = device or default_device()
    encoder.to(device).eval()
    head.to(device).eval()
    return LoadedModel(manifest, manifest_sha256(manifest), encoder, head, device)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def save_bundle(
    out: Path,
    encoder: nn.Module,
    head: nn.Module,
    manifest_fields: Mapping[str, object],
) -> ModelManifest:
    """Write a bundle atomically (a temporary folder renamed into place)."""
    out = out.resolve()
    if out.exists() and any(out.iterdir()):
        raise ModelBundleError(f"{out}: exists and is not empty; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    state = {f"encoder.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    state |= {f"head.{k}": v.contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS))
    manifest = ModelManifest.model_validate(
        {**manifest_fields, "weights_sha256": file_sha256(tmp / WEIGHTS)}
    )
    (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    if out.exists():
        out.rmdir()
    tmp.replace(out)
    return manifest


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
    description: str | None = None,
) -> ModelManifest:
    """A bundle with seeded random weights, for trying the plumbing end to end; with
    `encoder_weights` (a local state dict file) the encoder's weights come from that file."""
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
    if description is not None:
        fields["description"] = description
    enc = ENCODERS.build(encoder, **dict(encoder_kwargs or {}))
    fields["feature_dim"] = encoder_width(enc)
    enc_module, head_module = build_modules(ModelManifest.model_validate(fields))
    if encoder_weights is not None:
        from workers._clam import load_encoder_weights  # it imports this module

        load_encoder_weights(enc, encoder_weights)
    enc_module.load_state_dict(enc.state_dict())
    return save_bundle(out, enc_module, head_module, fields)
