"""Encoder presets (uni, virchow2, …): built offline at their published size, filled from their
publisher's files (named, or in a Hugging Face cache folder, with the network off), and checked
against the model each card builds, on random weights."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from typer.testing import CliRunner

from slidemill.cli import app
from slidemill.workers import init_bundle, load_bundle, manifest_sha256
from slidemill.workers.errors import ModelBundleError, PresetWeightsError
from slidemill.workers.models import (
    ENCODERS,
    PRESETS,
    PresetEncoder,
    load_preset_encoder,
    preset_statuses,
)

REVISION = "0123456789abcdef0123456789abcdef01234567"
TIMM_PRESETS = [n for n, p in PRESETS.items() if p.library == "timm"]


def card_model(name: str, depth: int | None) -> tuple[nn.Module, Callable[[torch.Tensor], Any]]:
    """The model as its card builds it (arguments written out here, not read from the preset
    table), with `depth` blocks, on the meta device; and how the card takes its embedding."""
    import timm
    import transformers

    swiglu, silu = timm.layers.SwiGLUPacked, torch.nn.SiLU
    timm_cards: dict[str, tuple[str, dict[str, Any]]] = {
        "uni": (
            "vit_large_patch16_224",
            dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
                 dynamic_img_size=True),
        ),
        "uni2-h": (
            "vit_giant_patch14_224",
            dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5,
                 embed_dim=1536, mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True,
                 mlp_layer=swiglu, act_layer=silu, reg_tokens=8, dynamic_img_size=True),
        ),
        "virchow2": (
            "vit_huge_patch14_224",
            dict(img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4, mlp_ratio=5.3375,
                 global_pool="", dynamic_img_size=True, mlp_layer=swiglu, act_layer=silu),
        ),
        "h-optimus-0": (
            "vit_giant_patch14_reg4_dinov2",
            dict(img_size=224, global_pool="token", init_values=1e-5, dynamic_img_size=False,
                 num_classes=0),
        ),
        "prov-gigapath": (
            "vit_giant_patch14_dinov2",
            dict(img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40,
                 num_heads=24, init_values=1e-5, mlp_ratio=5.33334, num_classes=0),
        ),
    }  # fmt: skip
    timm_cards["h-optimus-1"] = timm_cards["h-optimus-0"]
    with torch.device("meta"):
        if name in timm_cards:
            arch, kwargs = timm_cards[name]
            net = timm.create_model(arch, pretrained=False, **kwargs | _blocks("depth", depth))
            if name == "virchow2":
                return net, _virchow2_embedding(net)
            return net, net
        if name == "phikon":
            vit_args: dict[str, Any] = dict(
                hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, hidden_act="gelu", layer_norm_eps=1e-12, image_size=224,
                patch_size=16, num_channels=3, qkv_bias=True,
            )  # fmt: skip
            config = transformers.ViTConfig(**vit_args | _blocks("num_hidden_layers", depth))
            vit = transformers.ViTModel(config, add_pooling_layer=True)  # as saved on the hub
            return vit, lambda x: vit(pixel_values=x).last_hidden_state[:, 0]
        dino_args: dict[str, Any] = dict(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4,
            image_size=224, patch_size=16, layer_norm_eps=1e-6,
        )  # fmt: skip
        dino_config = transformers.Dinov2Config(**dino_args | _blocks("num_hidden_layers", depth))
        dino = transformers.Dinov2Model(dino_config)
        return dino, lambda x: dino(pixel_values=x).last_hidden_state[:, 0]


def _blocks(argument: str, depth: int | None) -> dict[str, int]:
    return {} if depth is None else {argument: depth}


def _virchow2_embedding(net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Its card's embedding: the class token beside the mean of the patch tokens (tokens 1-4
    are registers)."""

    def embed(x: torch.Tensor) -> torch.Tensor:
        out = net(x)
        return torch.cat([out[:, 0], out[:, 5:].mean(1)], dim=-1)

    return embed


def randomise(net: nn.Module, seed: int) -> nn.Module:
    """Give a meta-device model real random tensors (fast: no per-layer init schemes)."""
    net.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in net.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.05)
    return net.eval()


def publisher_file(net: nn.Module, name: str, folder: Path) -> Path:
    """`net`'s tensors under the publisher's key names, in the format of its first file."""
    filename = PRESETS[name].weight_files[0]
    folder.mkdir(parents=True, exist_ok=True)
    if PRESETS[name].library == "transformers":
        net.save_pretrained(folder / "saved")  # type: ignore[operator]  # the hub's key names
        state = load_file(str(folder / "saved" / "model.safetensors"))
        shutil.rmtree(folder / "saved")
    else:
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if filename.endswith(".safetensors"):
        save_file(state, str(folder / filename))
    else:
        torch.save(state, folder / filename)
    return folder / filename


def into_hub_cache(hf_home: Path, hub_id: str, file: Path) -> Path:
    """`file` placed as huggingface_hub caches it: a blob named by its sha256, the snapshot's
    link to it, and refs/main naming the snapshot."""
    repo = hf_home / "hub" / ("models--" + hub_id.replace("/", "--"))
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    shutil.move(file, repo / "blobs" / digest)
    (repo / "snapshots" / REVISION).mkdir(parents=True, exist_ok=True)
    link = repo / "snapshots" / REVISION / file.name
    link.symlink_to(Path("../../blobs") / digest)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    return repo


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face home, the network declared off."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def within_published_figure(params: int, published: str) -> bool:
    """`params` agrees with a rounded figure ("632M", "1.1B") to one unit of its last digit."""
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?([MB])", published)
    assert match, published
    scale = {"M": 1e6, "B": 1e9}[match[3]]
    unit = scale / 10 ** len(match[2] or "")
    return abs(params - float(published[:-1]) * scale) <= unit


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_at_full_size_has_its_published_parameter_count(name: str) -> None:
    preset = PRESETS[name]
    with torch.device("meta"):
        encoder = ENCODERS.build(name)
        width = encoder(torch.empty(2, 3, preset.tile_px, preset.tile_px)).shape
    count = sum(p.numel() for p in encoder.parameters())
    assert count == preset.params
    assert within_published_figure(count, preset.published_params)
    assert tuple(width) == (2, preset.width) and encoder.feature_dim == preset.width


# phikon (ViT-B) at its full size; the larger ones with two blocks at full width
DEPTHS = {name: 2 for name in PRESETS} | {"phikon": None}


@pytest.mark.parametrize("name", list(PRESETS))
def test_published_file_in_the_hub_cache_loads_and_embeds_as_the_card_model(
    name: str, hf_home: Path, tmp_path: Path
) -> None:
    depth = DEPTHS[name]
    card, embed = card_model(name, depth)
    randomise(card, seed=len(name))
    file = publisher_file(card, name, tmp_path / "out")
    into_hub_cache(hf_home, PRESETS[name].hub_id, file)

    encoder, weights = load_preset_encoder(name, depth=depth)

    assert weights.source == f"hf:{PRESETS[name].hub_id}@{REVISION}/{file.name}"
    assert not any(t.is_meta for t in encoder.state_dict().values())
    tiles = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = encoder(tiles), embed(tiles)
    assert got.shape == (2, PRESETS[name].width)
    assert (got - want).abs().max().item() <= 1e-5


def test_lab_named_files_with_wrapper_prefixes_load(tmp_path: Path) -> None:
    card, embed = card_model("uni", 2)
    randomise(card, seed=3)
    torch.save({"module." + k: v for k, v in card.state_dict().items()}, tmp_path / "uni.pth")
    encoder, weights = load_preset_encoder("uni", tmp_path / "uni.pth", depth=2)
    assert weights.source == str((tmp_path / "uni.pth").resolve())
    tiles = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (encoder(tiles) - embed(tiles)).abs().max().item() <= 1e-5

    vit, vit_embed = card_model("phikon", 1)
    randomise(vit, seed=4)
    hub_layout = load_file(str(publisher_file(vit, "phikon", tmp_path / "phikon")))
    torch.save({"vit." + k: v for k, v in hub_layout.items()}, tmp_path / "phikon.bin")
    encoder, _ = load_preset_encoder("phikon", tmp_path / "phikon.bin", depth=1)
    with torch.no_grad():
        assert (encoder(tiles) - vit_embed(tiles)).abs().max().item() <= 1e-5


def test_weights_of_the_wrong_shape_fail_in_one_line_naming_the_file(tmp_path: Path) -> None:
    card, _ = card_model("uni2-h", 2)
    state = randomise(card, seed=5).state_dict()
    state["pos_embed"] = state["pos_embed"][:, :100]
    torch.save(state, tmp_path / "uni2.bin")
    with pytest.raises(PresetWeightsError) as err:
        load_preset_encoder("uni2-h", tmp_path / "uni2.bin", depth=2)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'uni2.bin'}: not the weights of encoder preset")
    assert "1 of the wrong shape (pos_embed 1x100x1536 vs 1x256x1536)" in message


def test_another_presets_weights_fail_in_one_line(tmp_path: Path) -> None:
    card, _ = card_model("virchow2", 2)
    torch.save(randomise(card, seed=6).state_dict(), tmp_path / "v2.bin")
    with pytest.raises(PresetWeightsError, match=r"v2\.bin: not the weights of encoder preset "):
        load_preset_encoder("uni2-h", tmp_path / "v2.bin", depth=2)

    dino, _ = card_model("phikon-v2", 1)
    file = publisher_file(randomise(dino, seed=7), "phikon-v2", tmp_path / "pv2")
    with pytest.raises(PresetWeightsError) as err:
        load_preset_encoder("phikon", file, depth=1)
    assert "\n" not in str(err.value)
    assert f"{file}: not the weights of encoder preset 'phikon' (owkin/phikon" in str(err.value)
    assert "of the wrong shape (embeddings.cls_token 1x1x1024 vs 1x1x768," in str(err.value)


def test_full_size_weights_of_another_preset_are_named() -> None:
    with torch.device("meta"):  # shapes only: nothing allocated
        uni = ENCODERS.build("uni")
        target = ENCODERS.build("virchow2")
    assert isinstance(uni, PresetEncoder) and isinstance(target, PresetEncoder)
    uni_state = uni.net.state_dict()
    with pytest.raises(PresetWeightsError, match=r"; they fit preset uni$"):
        target.load_published_state(uni_state, "lab.bin")


def test_missing_weights_name_the_hub_id_and_the_cache_folder(
    hf_home: Path, tmp_path: Path
) -> None:
    folder = hf_home / "hub" / "models--bioptimus--H-optimus-0"
    with pytest.raises(PresetWeightsError) as err:
        load_preset_encoder("h-optimus-0")
    assert str(err.value).startswith(
        "no weights for encoder preset 'h-optimus-0': no pytorch_model.bin of "
        f"bioptimus/H-optimus-0 in the Hugging Face cache {folder};"
    )
    with pytest.raises(PresetWeightsError, match="no such weights file for encoder preset"):
        load_preset_encoder("uni", tmp_path / "absent.bin")

    res = CliRunner().invoke(
        app, ["model", "init", "--out", str(tmp_path / "m"), "--encoder", "virchow2"]
    )
    assert res.exit_code == 2
    assert "paige-ai/Virchow2" in res.output and "models--paige-ai--Virchow2" in res.output
    assert not (tmp_path / "m").exists()


def test_a_preset_bundle_records_its_weights_and_normalisation(
    hf_home: Path, tmp_path: Path
) -> None:
    card, embed = card_model("h-optimus-0", 1)
    file = publisher_file(randomise(card, seed=8), "h-optimus-0", tmp_path / "out")
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    into_hub_cache(hf_home, "bioptimus/H-optimus-0", file)

    manifest = init_bundle(tmp_path / "b", encoder="h-optimus-0", encoder_kwargs={"depth": 1})

    assert manifest.encoder_preset == "h-optimus-0"
    assert manifest.encoder_weights_sha256 == digest
    assert manifest.encoder_weights_source == (
        f"hf:bioptimus/H-optimus-0@{REVISION}/pytorch_model.bin"
    )
    assert manifest.normalisation.mean == PRESETS["h-optimus-0"].mean
    assert manifest.feature_dim == 1536
    model = load_bundle(tmp_path / "b", torch.device("cpu"))
    tiles = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (model.encoder(tiles) - embed(tiles)).abs().max().item() <= 1e-5
    with pytest.raises(ModelBundleError, match="takes 224-px tiles only"):
        init_bundle(tmp_path / "c", encoder="h-optimus-0", tile_px=256)


def test_a_preset_joined_with_handcrafted_features_takes_its_file(tmp_path: Path) -> None:
    card, embed = card_model("uni", 1)
    torch.save(randomise(card, seed=9).state_dict(), tmp_path / "uni.bin")
    manifest = init_bundle(
        tmp_path / "b",
        encoder="uni+handcrafted",
        encoder_kwargs={"uni.depth": 1},
        encoder_weights=tmp_path / "uni.bin",
    )
    assert manifest.encoder_preset == "uni"
    assert manifest.encoder_weights_source == str((tmp_path / "uni.bin").resolve())
    model = load_bundle(tmp_path / "b", torch.device("cpu"))
    tiles = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (model.encoder(tiles)[:, :1024] - embed(tiles)).abs().max().item() <= 1e-5
    with pytest.raises(ModelBundleError, match="normalises tiles with its own mean and std"):
        init_bundle(
            tmp_path / "c",
            encoder="h-optimus-0+handcrafted",
            encoder_kwargs={"h-optimus-0.depth": 1},
        )


def test_bundles_without_the_new_fields_are_written_and_identified_as_before(
    tmp_path: Path,
) -> None:
    manifest = init_bundle(tmp_path / "b", encoder="tiny_cnn", head="mean_pool")
    doc = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert not {"encoder_preset", "encoder_weights_sha256", "encoder_weights_source"} & set(doc)
    for key in ("reference", "calibration"):
        assert doc.pop(key) is None
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    assert manifest_sha256(manifest) == hashlib.sha256(canonical.encode()).hexdigest()


def test_the_listing_finds_weights_in_the_cache_named_by_hf_home(
    hf_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"not read by the listing")
    into_hub_cache(hf_home, "owkin/phikon", tmp_path / "model.safetensors")
    repo = hf_home / "hub" / "models--owkin--phikon" / "snapshots" / REVISION

    rows = {row.preset.name: row for row in preset_statuses()}

    assert list(rows) == list(PRESETS)
    assert rows["phikon"].weights is not None
    assert rows["phikon"].weights.path == repo / "model.safetensors"
    assert rows["uni"].weights is None
    assert rows["uni"].looked_in == hf_home / "hub" / "models--MahmoodLab--UNI"

    monkeypatch.setenv("COLUMNS", "250")
    res = CliRunner().invoke(app, ["encoders"])
    assert res.exit_code == 0, res.output
    assert f"hf:owkin/phikon@{REVISION}/model.safetensors" in res.output
    assert all(name in res.output for name in PRESETS)
    assert "1,135 M" in res.output  # H-optimus and Prov-GigaPath
