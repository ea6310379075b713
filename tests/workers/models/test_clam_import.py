"""Import of CLAM checkpoints: fake state dicts under CLAM's key names and shapes, imported into a
bundle, must give the slide probabilities and attention of CLAM's published equations, computed
here from the raw checkpoint tensors and never through the slidemill module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from slidemill.cli import app
from slidemill.workers import (
    ENCODERS,
    ModelBundleError,
    import_clam_checkpoint,
    load_bundle,
    predict_slide,
    read_manifest,
)
from slidemill.workers.models import ClamSize, ClamType

IN_DIM = 32  # CLAM's embed_dim: the feature width; 32 is tiny_cnn's, keeping these tests fast
WIDTHS = {"small": (512, 256), "big": (512, 384)}  # CLAM's size_dict, after embed_dim


def fake_clam_state(
    clam_type: str, size: str, n_classes: int, in_dim: int = IN_DIM, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random tensors under the names and shapes a gated CLAM model's state_dict() has."""
    gen = torch.Generator().manual_seed(seed)
    hidden, attn = WIDTHS[size]

    def linear(prefix: str, fan_out: int, fan_in: int) -> dict[str, torch.Tensor]:
        # weights ~ 2/√fan_in so attention is far from uniform and the classes far from a tie
        return {
            f"{prefix}.weight": torch.randn(fan_out, fan_in, generator=gen) * 2 / fan_in**0.5,
            f"{prefix}.bias": torch.randn(fan_out, generator=gen) * 0.1,
        }

    branches = n_classes if clam_type == "clam_mb" else 1
    state = linear("attention_net.0", hidden, in_dim)
    state |= linear("attention_net.3.attention_a.0", attn, hidden)
    state |= linear("attention_net.3.attention_b.0", attn, hidden)
    state |= linear("attention_net.3.attention_c", branches, attn)
    if clam_type == "clam_sb":
        state |= linear("classifiers", n_classes, hidden)
    else:
        for c in range(n_classes):
            state |= linear(f"classifiers.{c}", 1, hidden)
    for c in range(n_classes):
        state |= linear(f"instance_classifiers.{c}", 2, hidden)
    return state


def clam_equations(
    state: dict[str, torch.Tensor], x: torch.Tensor, clam_type: str, n_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slide probabilities (C,) and attention (K, N) from the CLAM paper's equations."""

    def lin(name: str, t: torch.Tensor) -> torch.Tensor:
        return t @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    h = torch.relu(lin("attention_net.0", x))  # h_i = ReLU(W_1 x_i)
    gate = torch.tanh(lin("attention_net.3.attention_a.0", h)) * torch.sigmoid(
        lin("attention_net.3.attention_b.0", h)
    )
    a = torch.softmax(lin("attention_net.3.attention_c", gate), dim=0).T  # (K, N), softmax over N
    m = a @ h  # M = A h, (K, hidden)
    if clam_type == "clam_sb":
        logits = lin("classifiers", m[0])
    else:
        logits = torch.stack([lin(f"classifiers.{c}", m[c])[0] for c in range(n_classes)])
    return torch.softmax(logits, dim=0), a


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


CLASSES = {2: ("normal", "tumour"), 3: ("luad", "lusc", "normal")}


@pytest.mark.parametrize("clam_type", ["clam_sb", "clam_mb"])
@pytest.mark.parametrize("size", ["small", "big"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_imported_bundle_reproduces_clam(
    clam_type: ClamType, size: ClamSize, n_classes: int, tmp_path: Path
) -> None:
    state = fake_clam_state(clam_type, size, n_classes, seed=n_classes)
    ckpt = save(state, tmp_path / "s_0_checkpoint.pt")
    manifest = import_clam_checkpoint(
        ckpt,
        tmp_path / "bundle",
        clam_type=clam_type,
        size=size,
        class_names=CLASSES[n_classes],
        encoder="tiny_cnn",
        input_mpp=0.25,
        tile_px=256,
    )
    assert manifest == read_manifest(tmp_path / "bundle")
    assert (manifest.head, manifest.feature_dim, manifest.class_names) == (
        clam_type,
        IN_DIM,
        CLASSES[n_classes],
    )
    assert manifest.head_kwargs["size"] == size
    assert (manifest.input_mpp, manifest.tile_px) == (0.25, 256)
    assert "s_0_checkpoint.pt" in manifest.description

    model = load_bundle(tmp_path / "bundle", torch.device("cpu"))
    x = torch.randn(200, IN_DIM, generator=torch.Generator().manual_seed(7))
    probs, attention = clam_equations(state, x, clam_type, n_classes)
    assert float(attention.max()) > 3 / 200  # the fixture is not a trivially uniform case

    pred = predict_slide(model, x.numpy())
    np.testing.assert_allclose(pred.probabilities, probs.numpy(), rtol=1e-4, atol=1e-6)
    predicted = int(probs.argmax())
    own_branch = attention[predicted if clam_type == "clam_mb" else 0]
    np.testing.assert_allclose(pred.attention, own_branch.numpy(), rtol=1e-4, atol=1e-7)
    if clam_type == "clam_mb":
        with torch.no_grad():
            out = model.head(x)
        assert out.attention_all is not None
        torch.testing.assert_close(out.attention_all, attention, rtol=1e-4, atol=1e-7)


def test_dataparallel_checkpoint_like_clams_demo_imports(tmp_path: Path) -> None:
    # the layout of CLAM's own heatmaps/demo/ckpts/s_0_checkpoint.pt: attention_net wrapped in
    # DataParallel, the smooth-SVM loss's `labels` buffer, 1024-d resnet50_trunc features
    state = fake_clam_state("clam_sb", "small", 2, in_dim=1024)
    stored = {k.replace("attention_net.", "attention_net.module."): v for k, v in state.items()}
    stored["instance_loss_fn.labels"] = torch.arange(2)
    ckpt = save(stored, tmp_path / "demo.pt")
    manifest = import_clam_checkpoint(
        ckpt, tmp_path / "b", clam_type="clam_sb", size="small", class_names=("LUAD", "LSCC")
    )
    assert (manifest.encoder, manifest.feature_dim) == ("resnet50_trunc", 1024)
    assert "RANDOMLY" in manifest.description  # no encoder weights given: said so
    model = load_bundle(tmp_path / "b", torch.device("cpu"))
    x = torch.randn(64, 1024)
    probs, attention = clam_equations(state, x, "clam_sb", 2)
    pred = predict_slide(model, x.numpy())
    np.testing.assert_allclose(pred.probabilities, probs.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(pred.attention, attention[0].numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("clam_type", ["clam_sb", "clam_mb"])
def test_module_prefix_from_dataparallel_is_stripped(clam_type: ClamType, tmp_path: Path) -> None:
    state = fake_clam_state(clam_type, "big", 3, seed=5)
    ckpt = save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pt")
    import_clam_checkpoint(
        ckpt,
        tmp_path / "b",
        clam_type=clam_type,
        size="big",
        class_names=("a", "b", "c"),
        encoder="tiny_cnn",
    )
    x = torch.randn(40, IN_DIM)
    probs, _ = clam_equations(state, x, clam_type, 3)
    pred = predict_slide(load_bundle(tmp_path / "b", torch.device("cpu")), x.numpy())
    np.testing.assert_allclose(pred.probabilities, probs.numpy(), rtol=1e-4, atol=1e-6)


def test_missing_keys_are_named_with_the_file(tmp_path: Path) -> None:
    state = fake_clam_state("clam_sb", "small", 2)
    del state["attention_net.3.attention_b.0.weight"]
    ckpt = save(state, tmp_path / "broken.pt")
    with pytest.raises(ModelBundleError, match=r"broken\.pt") as err:
        import_clam_checkpoint(
            ckpt,
            tmp_path / "b",
            clam_type="clam_sb",
            size="small",
            class_names=("a", "b"),
            encoder="tiny_cnn",
        )
    assert "attention_net.3.attention_b.0.weight" in str(err.value)
    assert not (tmp_path / "b").exists()  # nothing half-written


def test_unexpected_keys_are_named(tmp_path: Path) -> None:
    state = fake_clam_state("clam_sb", "small", 2)
    state["attention_net.5.weight"] = torch.zeros(3)
    with pytest.raises(ModelBundleError, match=r"unexpected keys: attention_net\.5\.weight$"):
        import_clam_checkpoint(
            save(state, tmp_path / "x.pt"),
            tmp_path / "b",
            clam_type="clam_sb",
            size="small",
            class_names=("a", "b"),
            encoder="tiny_cnn",
        )


def test_a_multi_branch_checkpoint_given_as_single_branch_says_so(tmp_path: Path) -> None:
    ckpt = save(fake_clam_state("clam_mb", "small", 2), tmp_path / "mb.pt")
    with pytest.raises(ModelBundleError, match=r"mb\.pt.*looks like a clam_mb checkpoint"):
        import_clam_checkpoint(
            ckpt,
            tmp_path / "b",
            clam_type="clam_sb",
            size="small",
            class_names=("a", "b"),
            encoder="tiny_cnn",
        )


@pytest.mark.parametrize(
    ("size", "classes", "encoder", "message"),
    [
        ("small", ("a", "b", "c"), "tiny_cnn", "has 2 classes but 3 class names"),
        ("big", ("a", "b"), "tiny_cnn", "not CLAM size 'big'.*it is size 'small'"),
        ("small", ("a", "b"), "resnet50_trunc", "takes 32-d features but encoder"),
    ],
)
def test_mismatched_settings_are_refused(
    size: ClamSize, classes: tuple[str, ...], encoder: str, message: str, tmp_path: Path
) -> None:
    ckpt = save(fake_clam_state("clam_sb", "small", 2), tmp_path / "sb.pt")
    with pytest.raises(ModelBundleError, match=message):
        import_clam_checkpoint(
            ckpt,
            tmp_path / "b",
            clam_type="clam_sb",
            size=size,
            class_names=classes,
            encoder=encoder,
        )


def test_a_file_that_is_not_a_state_dict_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    for path in (junk, tmp_path / "absent.pt"):
        with pytest.raises(ModelBundleError, match=path.name):
            import_clam_checkpoint(
                path, tmp_path / "b", clam_type="clam_sb", size="small", class_names=("a", "b")
            )


def test_encoder_weights_are_loaded_from_a_local_file(tmp_path: Path) -> None:
    torch.manual_seed(11)
    trained = ENCODERS.build("tiny_cnn")
    # a foreign layout: DataParallel's prefix, without our `net.` wrapper, with an extra head
    foreign = {f"module.{k.removeprefix('net.')}": v for k, v in trained.state_dict().items()}
    foreign["module.fc.weight"] = torch.zeros(2, 32)
    weights = save(foreign, tmp_path / "enc.pth")
    ckpt = save(fake_clam_state("clam_sb", "small", 2), tmp_path / "sb.pt")
    manifest = import_clam_checkpoint(
        ckpt,
        tmp_path / "b",
        clam_type="clam_sb",
        size="small",
        class_names=("a", "b"),
        encoder="tiny_cnn",
        encoder_weights=weights,
    )
    assert "enc.pth" in manifest.description and "RANDOMLY" not in manifest.description
    model = load_bundle(tmp_path / "b", torch.device("cpu"))
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[key], value)

    del foreign["module.2.weight"]  # the second conv's weight
    with pytest.raises(ModelBundleError, match=r"enc2\.pth.*1 tensors missing \(net\.2\.weight\)"):
        import_clam_checkpoint(
            ckpt,
            tmp_path / "c",
            clam_type="clam_sb",
            size="small",
            class_names=("a", "b"),
            encoder="tiny_cnn",
            encoder_weights=save(foreign, tmp_path / "enc2.pth"),
        )


# --- the command line -----------------------------------------------------------------------------

runner = CliRunner()


def test_import_clam_command_writes_a_bundle(tmp_path: Path) -> None:
    ckpt = save(fake_clam_state("clam_mb", "big", 3), tmp_path / "mb.pt")
    args = ["model", "import-clam", str(ckpt), "--type", "clam_mb", "--size", "big"]
    args += ["--classes", "x,y,z", "--out", str(tmp_path / "m"), "--encoder", "tiny_cnn"]
    res = runner.invoke(app, [*args, "--mpp", "0.25", "--tile-px", "256"])
    assert res.exit_code == 0, res.output
    assert "encoder weights: random" in res.output
    manifest = read_manifest(tmp_path / "m")
    assert (manifest.head, manifest.class_names) == ("clam_mb", ("x", "y", "z"))
    assert (manifest.input_mpp, manifest.tile_px) == (0.25, 256)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--type": "clam_xl"}, "CLAM type must be 'clam_sb' or 'clam_mb'"),
        ({"--size": "huge"}, "CLAM size must be 'small' or 'big'"),
        ({"--classes": "only"}, "two or more distinct"),
        ({"CKPT": "absent.pt"}, "absent.pt: no such CLAM checkpoint file"),
        # key names must survive the console's markup
        ({"--type": "clam_mb"}, "missing keys: classifiers.0.bias, classifiers.0.weight"),
    ],
)
def test_import_clam_usage_errors_exit_2_with_one_line(
    change: dict[str, str], message: str, tmp_path: Path
) -> None:
    ckpt = save(fake_clam_state("clam_sb", "small", 2), tmp_path / "sb.pt")
    opts = {"--type": "clam_sb", "--size": "small", "--classes": "a,b", "--encoder": "tiny_cnn"}
    opts |= {"--out": str(tmp_path / "m")} | change
    path = str(tmp_path / opts.pop("CKPT")) if "CKPT" in opts else str(ckpt)
    res = runner.invoke(
        app, ["model", "import-clam", path, *(t for kv in opts.items() for t in kv)]
    )
    assert res.exit_code == 2
    assert message in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
