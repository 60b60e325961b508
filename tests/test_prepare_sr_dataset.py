"""scripts/prepare_super_resolution_dataset.py on generated images: colour and grayscale inputs, odd sizes,
nested folders, a corrupt file, re-runs into an existing output folder, and the manifests DataModule reading
the result."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "prepare_super_resolution_dataset.py"
_spec = importlib.util.spec_from_file_location("prepare_sr", SCRIPT)
prep = importlib.util.module_from_spec(_spec)
sys.modules["prepare_sr"] = prep      # (dataclasses look the module up while the class is built)
_spec.loader.exec_module(prep)


def _raw(root: Path) -> tuple[Path, Path]:
    """train: colour JPEG (odd size), grayscale PNG (odd, non-square), 16-bit PNG and RGBA in nested folders, one
    corrupt file and one non-image; test: a colour and a grayscale image."""
    rng = np.random.default_rng(0)
    tr, te = root / "raw" / "train", root / "raw" / "test"
    (tr / "site_a" / "deep").mkdir(parents=True)
    te.mkdir(parents=True)
    Image.fromarray((rng.random((37, 53, 3)) * 255).astype(np.uint8)).save(tr / "colour.jpg")
    Image.fromarray((rng.random((41, 29)) * 255).astype(np.uint8)).save(tr / "site_a" / "gray.png")
    Image.fromarray((rng.random((20, 20)) * 4095).astype(np.uint16)).save(tr / "site_a" / "deep" / "ct16.png")
    Image.fromarray((rng.random((19, 23, 4)) * 255).astype(np.uint8), mode="RGBA").save(tr / "site_a" / "deep" / "rgba.png")
    (tr / "site_a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG body")
    (tr / "notes.txt").write_text("not an image")
    Image.fromarray((rng.random((33, 33, 3)) * 255).astype(np.uint8)).save(te / "t0.png")
    Image.fromarray((rng.random((16, 17)) * 255).astype(np.uint8)).save(te / "t1.bmp")
    return tr, te


def test_grayscale_nested_odd_sizes_corrupt_file_and_manifests(tmp_path):
    tr, te = _raw(tmp_path)
    out = tmp_path / "data"
    with pytest.warns(UserWarning, match="broken.png"):
        summary = prep.prepare(tr, te, out, grayscale=True, write_manifests=True, size=16)
    assert summary.written == {"train": 4, "test": 2} and [Path(p).name for p in summary.corrupt["train"]] == ["broken.png"]
    assert summary.high_bit_depth == 1
    train = (out / "train_images.txt").read_text().split()
    assert train == ["train/colour.png", "train/site_a/deep/ct16.png", "train/site_a/deep/rgba.png",
                     "train/site_a/gray.png"]
    assert (out / "test_images.txt").read_text().split() == ["test/t0.png", "test/t1.png"]
    for rel in train:
        with Image.open(out / rel) as img:
            assert img.mode == "L" and img.size == (16, 16)          # single channel on disk
    ct = np.asarray(Image.open(out / "train/site_a/deep/ct16.png"))
    assert ct.min() < 60 and ct.max() > 200                           # 12-bit data stretched by its own range

    from datamodules.images import ImageManifestDataModule

    dm = ImageManifestDataModule(root=str(out), resolution=16, channels=3, batch_size=2, hflip=False)
    batch = next(iter(dm.train_dataloader()))
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    assert x.shape == (2, 3, 16, 16) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert np.allclose(x[:, 0].numpy(), x[:, 2].numpy())              # grayscale replicated to 3 channels


def test_colour_mode_and_reruns_never_overwrite_silently(tmp_path, capsys):
    tr, te = _raw(tmp_path)
    out = tmp_path / "data"
    with pytest.warns(UserWarning):
        first = prep.prepare(tr, te, out, write_manifests=True, size=16)
    assert first.written["train"] == 4
    with Image.open(out / "train" / "site_a" / "gray.png") as img:
        assert img.mode == "RGB"                                       # colour mode: every image RGB
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    with pytest.warns(UserWarning):
        again = prep.prepare(tr, te, out, write_manifests=True, size=16)     # same content: nothing rewritten
    assert again.written == {"train": 0, "test": 0} and again.unchanged == {"train": 4, "test": 2}
    assert stamp == {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}

    before = (out / "train" / "colour.png").read_bytes()
    with pytest.raises(prep.ConflictError, match="colour.png exists with different content"):
        prep.prepare(tr, te, out, write_manifests=True, size=24)           # different size: every file conflicts
    assert (out / "train" / "colour.png").read_bytes() == before          # nothing was written
    with pytest.warns(UserWarning):
        forced = prep.prepare(tr, te, out, write_manifests=True, size=24, overwrite=True)
    assert forced.written["train"] == 4 and Image.open(out / "train" / "colour.png").size == (24, 24)

    # the command line: exit status 1 and a message on a conflict (in-process), 0 on success (a real process)
    args = ["--train-dir", str(tr), "--test-dir", str(te), "--output-root", str(out), "--write-manifests"]
    assert prep.main(args + ["--size", "16"]) == 1
    assert "different content" in capsys.readouterr().err
    good = subprocess.run([sys.executable, str(SCRIPT), *args, "--size", "24"], capture_output=True, text=True, cwd=REPO)
    assert good.returncode == 0 and "4 unchanged" in good.stdout and "1 skipped as unreadable" in good.stdout
    assert "warning: skipping" in good.stderr


def test_argument_errors(tmp_path):
    tr, te = _raw(tmp_path)
    with pytest.raises(ValueError, match="overlap"):
        prep.prepare(tr, tr / "site_a", tmp_path / "o")
    with pytest.raises(ValueError, match="not a folder"):
        prep.prepare(tmp_path / "missing", te, tmp_path / "o")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tr / "colour.png")       # colour.jpg and colour.png collide
    with pytest.raises(ValueError, match="would both be written"):
        prep.prepare(tr, te, tmp_path / "o")
