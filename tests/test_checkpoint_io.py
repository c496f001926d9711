"""Checkpoints in and out: safetensors round trip, timm/DeiT layouts, resampling, heads, unsafe files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

import deitlab
from deitlab.errors import CheckpointError
from deitlab.io import read_checkpoint, save_weights
from deitlab.layers import resample_pos_embed

SMALL = dict(img_size=32, depth=2, num_classes=5)


def _model(name: str = "deit_tiny_distilled_patch16_224", **kw) -> torch.nn.Module:
    return deitlab.create_model(name, **{**SMALL, **kw}).eval()


def test_safetensors_round_trip_with_metadata(tmp_path: Path) -> None:
    src = _model()
    path = tmp_path / "w.safetensors"
    save_weights(src, path, extra={"epoch": 3})
    state, meta = read_checkpoint(path)
    assert meta["model"] == "deit_tiny_distilled_patch16_224" and meta["epoch"] == "3"
    dst = deitlab.create_model("deit_tiny_distilled_patch16_224", checkpoint=path, **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst(x).fused(), src(x).fused(), rtol=0, atol=0)
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write leaves no temp file


@pytest.mark.parametrize("layout", ["plain", "deit_official", "ddp"])
def test_pth_layouts_load(tmp_path: Path, layout: str) -> None:
    src = _model()
    sd = src.state_dict()
    obj = {
        "plain": sd,
        "deit_official": {"model": sd, "epoch": 299, "args": {"lr": 5e-4}},
        "ddp": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    }[layout]
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    dst = deitlab.create_model("deit_tiny_distilled_patch16_224", checkpoint=path, **SMALL).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(dst(x).cls_logits, src(x).cls_logits, rtol=0, atol=0)


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204 - what a malicious checkpoint does
        return (open, (self.target, "w"))


def test_pickled_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"model": _Evil(str(marker))}, f, protocol=2)
    with pytest.raises(CheckpointError, match="pickled code"):
        deitlab.create_model("deit_tiny_distilled_patch16_224", checkpoint=path, **SMALL)
    assert not marker.exists()
    zipped = tmp_path / "evil_zip.pth"  # the same payload in torch.save's zip format
    torch.save({"model": _Evil(str(marker))}, zipped)
    with pytest.raises(CheckpointError, match="pickled code"):
        read_checkpoint(zipped)
    assert not marker.exists()


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_checkpoint(bad)
    src = _model()
    good = tmp_path / "good.safetensors"
    save_weights(src, good)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="trunc.safetensors"):
        read_checkpoint(truncated)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_checkpoint(junk)


def test_checkpoint_of_another_architecture_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "small.safetensors"
    save_weights(_model("deit_small_patch16_224"), path)
    with pytest.raises(
        CheckpointError, match=r"deit_small_patch16_224.*cls_token: checkpoint \(1, 1, 384\) vs model \(1, 1, 192\)"
    ):
        deitlab.create_model("deit_tiny_patch16_224", checkpoint=path, **SMALL)
    path2 = tmp_path / "plain.safetensors"
    save_weights(_model("deit_tiny_patch16_224"), path2)
    with pytest.raises(
        CheckpointError,
        match=r"another architecture: pos_embed: checkpoint \(1, 5, 192\) vs model \(1, 6, 192\); "
        r"missing 3 keys \(dist_token, head_dist.weight, head_dist.bias\)",
    ):
        deitlab.create_model("deit_tiny_distilled_patch16_224", checkpoint=path2, **SMALL)


def test_head_of_another_class_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "w.safetensors"
    src = _model(num_classes=10)
    save_weights(src, path)
    kw = dict(img_size=32, depth=2)
    with pytest.raises(CheckpointError, match=r"head.weight: \(10, 192\) in the checkpoint vs \(1000, 192\)"):
        deitlab.create_model("deit_tiny_distilled_patch16_224", checkpoint=path, **kw)
    model = deitlab.create_model("deit_tiny_distilled_patch16_224", checkpoint=path, num_classes=3, **kw)
    assert "dropping the checkpoint's classifier" in caplog.text
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    assert model.head.weight.shape == (3, 192)


def test_loading_at_another_resolution_resamples_pos_embed(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    src = _model()  # 32 px, patch 16 -> 2x2 grid
    save_weights(src, path)
    big = deitlab.create_model("deit_tiny_distilled_patch16_224", checkpoint=path, **{**SMALL, "img_size": 64})
    assert big.pos_embed.shape == (1, 2 + 16, 192)
    torch.testing.assert_close(big.pos_embed[:, :2], src.pos_embed[:, :2], rtol=0, atol=0)  # prefix untouched
    expect = resample_pos_embed(src.pos_embed.detach(), (4, 4), num_prefix_tokens=2)
    torch.testing.assert_close(big.pos_embed.detach(), expect)


def test_resample_to_same_size_is_identity_and_keeps_prefix() -> None:
    pos = torch.randn(1, 2 + 49, 16)
    torch.testing.assert_close(resample_pos_embed(pos, (7, 7), num_prefix_tokens=2), pos, rtol=0, atol=1e-6)
    up = resample_pos_embed(pos, (14, 14), num_prefix_tokens=2)
    assert up.shape == (1, 2 + 196, 16)
    assert torch.equal(up[:, :2], pos[:, :2])
    # a constant grid stays constant under bicubic resampling
    const = torch.cat([torch.zeros(1, 1, 4), torch.full((1, 16, 4), 0.7)], dim=1)
    torch.testing.assert_close(
        resample_pos_embed(const, (6, 6), num_prefix_tokens=1)[:, 1:], torch.full((1, 36, 4), 0.7)
    )
    with pytest.raises(ValueError, match="not a square grid"):
        resample_pos_embed(torch.randn(1, 1 + 10, 4), (3, 3), num_prefix_tokens=1)


def test_resample_is_bicubic_with_align_corners_false() -> None:
    """A ramp (0, 1) resampled to 4 columns, by hand: Keys' cubic kernel with a = -0.75, borders clamped.

    Output column j samples input position (j + 0.5)·2/4 − 0.5 = −0.25, 0.25, 0.75, 1.25; at offset t = 0.25 the
    four taps weigh (−0.10546875, 0.87890625, 0.26171875, −0.03515625). Bilinear would give (0, 0.25, 0.75, 1).
    """
    ramp = torch.tensor([0.0, 1.0]).view(1, 2, 1)  # (1, h*w, D) with a 1x2 grid
    out = resample_pos_embed(ramp, (1, 4), num_prefix_tokens=0, old_grid=(1, 2))
    expect = torch.tensor([-0.10546875, 0.2265625, 0.7734375, 1.10546875]).view(1, 4, 1)
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-6)
