"""Encoders beyond the built-in ones: any timm model by name, a user's TorchScript file, and the
CUDA inference settings (checked as a pure function, no GPU needed)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from slidemill.cli import app
from slidemill.pipeline.cohort import encoder_bundle
from slidemill.pipeline.errors import InvalidInputError
from slidemill.workers import (
    ENCODERS,
    ModelBundleError,
    TimmEncoder,
    TorchScriptEncoder,
    UnknownComponentError,
    encode_tiles,
    file_sha256,
    inference_settings,
    init_bundle,
    load_bundle,
    read_manifest,
    save_bundle,
)

# torch 2.14 marks torch.jit deprecated; these tests are about files users already have
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:FutureWarning")

TIMM_MODEL = "test_resnet"  # timm's own 0.4 M-parameter test network: fast on CPU


class UserEncoder(nn.Module):
    """Stands in for a user's encoder: conv, batch norm (buffers too), pooling, a projection.

    forward: (B, 3, H, W) → (B, 12).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.proj = nn.Linear(8, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        return self.proj(y.mean(dim=(2, 3)))


def user_module() -> UserEncoder:
    torch.manual_seed(7)
    module = UserEncoder()
    assert module.bn.running_mean is not None and module.bn.running_var is not None
    with torch.no_grad():  # non-trivial running stats, so a lost buffer would show
        module.bn.running_mean.uniform_(-0.5, 0.5)
        module.bn.running_var.uniform_(0.5, 2.0)
    return module.eval()


@pytest.fixture(params=["script", "trace"])
def scripted(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, nn.Module]:
    """A user's TorchScript file (scripted or traced) and the module it came from."""
    module = user_module()
    if request.param == "script":
        compiled = torch.jit.script(module)
    else:
        compiled = torch.jit.trace(module, torch.rand(1, 3, 32, 32))
    path = tmp_path / f"user-{request.param}.pt"
    torch.jit.save(compiled, str(path))
    return path, module


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --- timm -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize(
    ("name", "dim"),
    # mobilenetv3's conv head widens timm's num_features (288) to 1024 pooled features
    [(TIMM_MODEL, 96), ("mobilenetv3_small_050", 1024)],
)
def test_timm_encoder_builds_offline_and_declares_its_width(name: str, dim: int) -> None:
    enc = ENCODERS.build(f"timm:{name}").eval()
    assert isinstance(enc, TimmEncoder)
    with torch.no_grad():
        out = enc(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, dim)
    assert enc.feature_dim == dim


def test_timm_kwargs_reach_the_model() -> None:
    enc = ENCODERS.build(f"timm:{TIMM_MODEL}", global_pool="catavgmax").eval()
    with torch.no_grad():
        out = enc(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 192) and enc.feature_dim == 192  # avg and max, concatenated


def test_unknown_timm_names_and_downloads_are_refused_in_one_line() -> None:
    with pytest.raises(UnknownComponentError, match=r"unknown timm model 'resnet18x'.*resnet18"):
        ENCODERS.build("timm:resnet18x")
    with pytest.raises(UnknownComponentError, match="never a hub"):
        ENCODERS.build("timm:hf-hub:someone/some-model")
    with pytest.raises(UnknownComponentError, match="pretrained not allowed"):
        ENCODERS.build(f"timm:{TIMM_MODEL}", pretrained=True)
    with pytest.raises(UnknownComponentError, match="timm:<name>"):
        ENCODERS.build("timm:")
    with pytest.raises(UnknownComponentError, match=r"known: .*tiny_cnn.*timm:<name>"):
        ENCODERS.build("vit_nonexistent")
    with pytest.raises(UnknownComponentError) as info:
        ENCODERS.build("timm:nope_nope_nope")
    assert "\n" not in str(info.value)


@pytest.mark.usefixtures("no_network")
def test_timm_bundle_encodes_identically_after_reload(tmp_path: Path) -> None:
    manifest = init_bundle(
        tmp_path / "b", encoder=f"timm:{TIMM_MODEL}", head="mean_pool", tile_px=64
    )
    assert (manifest.encoder, manifest.feature_dim) == (f"timm:{TIMM_MODEL}", 96)
    tiles = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    first = load_bundle(tmp_path / "b", torch.device("cpu"))
    a = encode_tiles(first, tiles, batch_size=5)
    torch.manual_seed(123)  # a reload that ignored the saved weights would come out different
    b = encode_tiles(load_bundle(tmp_path / "b", torch.device("cpu")), tiles, batch_size=5)
    assert a.shape == (5, 96) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_timm_weights_come_from_a_local_state_dict(tmp_path: Path) -> None:
    """A plain timm state dict (as timm or a lab saves it, no wrapper prefix) fills the encoder."""
    import timm

    torch.manual_seed(5)
    reference = timm.create_model(TIMM_MODEL, pretrained=False, num_classes=0).eval()
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    init_bundle(
        tmp_path / "b",
        encoder=f"timm:{TIMM_MODEL}",
        encoder_weights=tmp_path / "w.pth",
        head="mean_pool",
        seed=9,
    )
    model = load_bundle(tmp_path / "b", torch.device("cpu"))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x), reference(x))


# --- TorchScript ------------------------------------------------------------------------------


def test_torchscript_bundle_gives_the_users_features(
    scripted: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    path, module = scripted
    manifest = init_bundle(
        tmp_path / "b", encoder="torchscript", encoder_file=path, head="mean_pool", tile_px=32
    )
    assert manifest.feature_dim == 12  # measured on one 32-px tile
    assert manifest.encoder_kwargs == {"file_sha256": file_sha256(path)}
    copied = tmp_path / "b" / "encoder.torchscript.pt"
    assert copied.read_bytes() == path.read_bytes()

    model = load_bundle(tmp_path / "b", torch.device("cpu"))
    assert isinstance(model.encoder, TorchScriptEncoder)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x), module(x))

    # the encode_tiles path on CPU: plain float32, the same numbers as the user's module
    tiles = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    norm = model.manifest.normalisation
    expected_in = (
        torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
        - torch.tensor(norm.mean).view(1, 3, 1, 1)
    ) / torch.tensor(norm.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = module(expected_in).numpy()
    # float32 rounding of the normalisation's order: an absolute floor for outputs near zero
    actual = encode_tiles(model, tiles, batch_size=2)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_torchscript_weights_come_from_the_bundle_and_travel_to_new_bundles(
    scripted: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    """Training saves fold bundles from a loaded encoder bundle: the file must go with it."""
    path, module = scripted
    init_bundle(tmp_path / "enc", encoder="torchscript", encoder_file=path, head="mean_pool")
    loaded = load_bundle(tmp_path / "enc", torch.device("cpu"))
    proj = loaded.encoder.get_submodule("net.proj")
    assert isinstance(proj.bias, torch.Tensor)
    with torch.no_grad():  # weights changed in memory must be what the new bundle holds
        proj.bias.add_(1.0)
    fields = loaded.manifest.model_dump(exclude={"weights_sha256"}) | {"weights_sha256": "0" * 64}
    save_bundle(tmp_path / "fold", loaded.encoder, loaded.head, fields)
    assert (tmp_path / "fold" / "encoder.torchscript.pt").read_bytes() == path.read_bytes()
    again = load_bundle(tmp_path / "fold", torch.device("cpu"))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.encoder(x), module(x) + 1.0)


def test_a_replaced_torchscript_file_is_refused(
    scripted: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    path, _ = scripted
    bundle = tmp_path / "b"
    init_bundle(bundle, encoder="torchscript", encoder_file=path, head="mean_pool", tile_px=32)
    other = user_module()
    with torch.no_grad():
        other.proj.bias.add_(1.0)
    torch.jit.save(torch.jit.script(other), str(bundle / "encoder.torchscript.pt"))
    with pytest.raises(ModelBundleError, match=r"encoder\.torchscript\.pt: sha256 .* manifest"):
        load_bundle(bundle, torch.device("cpu"))
    (bundle / "encoder.torchscript.pt").unlink()
    with pytest.raises(ModelBundleError, match=r"no encoder\.torchscript\.pt"):
        load_bundle(bundle, torch.device("cpu"))


def test_the_file_sha_is_part_of_the_bundle_id(tmp_path: Path) -> None:
    module = user_module()
    paths = []
    for i in range(2):
        with torch.no_grad():
            module.proj.bias.add_(float(i))
        paths.append(tmp_path / f"{i}.pt")
        torch.jit.save(torch.jit.script(module), str(paths[-1]))
    shas = set()
    for i, p in enumerate(paths):
        init_bundle(tmp_path / f"b{i}", encoder="torchscript", encoder_file=p, head="mean_pool")
        shas.add(load_bundle(tmp_path / f"b{i}", torch.device("cpu")).sha256)
        manifest = json.loads((tmp_path / f"b{i}" / "manifest.json").read_text())
        assert manifest["encoder_kwargs"]["file_sha256"] == file_sha256(p)
    assert len(shas) == 2


def test_bad_torchscript_requests_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ModelBundleError, match="--encoder-file"):
        init_bundle(tmp_path / "a", encoder="torchscript")
    with pytest.raises(UnknownComponentError, match="--encoder-file"):
        ENCODERS.build("torchscript")
    not_script = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, not_script)
    with pytest.raises(ModelBundleError, match="not a TorchScript file"):
        init_bundle(tmp_path / "b", encoder="torchscript", encoder_file=not_script)
    with pytest.raises(ModelBundleError, match="for encoder 'torchscript' only"):
        init_bundle(tmp_path / "c", encoder="tiny_cnn", encoder_file=not_script)
    flat = tmp_path / "flat.pt"  # returns feature maps, not vectors
    torch.jit.save(torch.jit.script(nn.Conv2d(3, 4, 3)), str(flat))
    with pytest.raises(ModelBundleError, match=r"gives \(1, 4, 30, 30\).*\(B, feature_dim\)"):
        init_bundle(tmp_path / "d", encoder="torchscript", encoder_file=flat, tile_px=32)
    assert not any(p.name.startswith((".a", ".b", ".c", ".d")) for p in tmp_path.iterdir())


def test_features_folder_keeps_to_one_torchscript_file(
    scripted: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    path, _ = scripted
    out = tmp_path / "features"

    def bundle_for(file: Path) -> Path:
        return encoder_bundle(
            out,
            encoder="torchscript",
            encoder_weights=None,
            tile_mpp=0.5,
            tile_px=32,
            seed=0,
            encoder_file=file,
        )

    bundle = bundle_for(path)
    assert read_manifest(bundle).encoder_kwargs["file_sha256"] == file_sha256(path)
    assert bundle_for(path) == bundle  # the same file: the folder's bundle, reused
    other = tmp_path / "other.pt"
    torch.jit.save(
        torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 5))), str(other)
    )
    with pytest.raises(InvalidInputError, match="another --out"):
        bundle_for(other)


def test_cli_model_init_takes_a_torchscript_file(
    scripted: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    path, module = scripted
    out = tmp_path / "m"
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "model",
            "init",
            "--encoder",
            "torchscript",
            "--encoder-file",
            str(path),
            "--out",
            str(out),
            "--tile-px",
            "32",
        ],
    )
    assert res.exit_code == 0, res.output
    model = load_bundle(out, torch.device("cpu"))
    assert model.manifest.feature_dim == 12
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x), module(x))
    res = runner.invoke(
        app, ["model", "init", "--encoder", "torchscript", "--out", str(tmp_path / "n")]
    )
    assert res.exit_code == 2
    assert "--encoder-file" in res.output


# --- CUDA settings, as a pure function --------------------------------------------------------


def test_inference_settings_cpu_stays_plain_float32() -> None:
    s = inference_settings(torch.device("cpu"), bf16_supported=True)
    assert (s.pin_memory, s.channels_last, s.autocast_dtype) == (False, False, None)


@pytest.mark.parametrize(("bf16", "dtype"), [(True, torch.bfloat16), (False, torch.float16)])
def test_inference_settings_cuda(bf16: bool, dtype: torch.dtype) -> None:
    for device in (torch.device("cuda"), torch.device("cuda:1")):
        s = inference_settings(device, bf16_supported=bf16)
        assert (s.pin_memory, s.channels_last, s.autocast_dtype) == (True, True, dtype)
