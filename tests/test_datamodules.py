"""DataModules: predict items (keys, shapes, seeded measurements), fit loaders, Navier–Stokes generation and
cache reuse, the InverseBench LMDB layout, synthetic black holes, black-hole files (.npy / .h5 / FITS), image
folders and manifests, and the error messages. Everything is tiny (16 x 16 fields, a handful of items)."""
from __future__ import annotations

import io
import contextlib

import numpy as np
import pytest
import torch

from datamodules import navier_stokes as ns_module
from datamodules.blackhole import BlackHoleDataModule
from datamodules.images import ImageFolderDataModule, ImageManifestDataModule
from datamodules.navier_stokes import NavierStokesDataModule, periodic_shift
from diffinv.datasets.array_files import write_lmdb
from diffinv.datasets.blackhole_synthetic import SyntheticBlackHoleConfig, SyntheticBlackHoles
from diffinv.operators import GaussianNoise
from diffinv.operators.navier_stokes import NavierStokes

N = 16
NS_COUNTS = dict(num_train=4, num_val=2, num_test=3)


def ns_operator():
    return NavierStokes(resolution=N, time=0.02, downsample=2, noise=GaussianNoise(1.0))


def first_batch(loader):
    return next(iter(loader))


def check_seeded(make_dm, expect_x, expect_y):
    """Predict items of two fresh DataModules: same ids -> identical y_obs; the expected shapes."""
    items = [list(make_dm().predict_dataloader()) for _ in range(2)]
    a, b = items[0][0], items[1][0]
    assert set(a) == {"id", "x_true", "y_obs"}
    assert tuple(a["x_true"].shape[1:]) == expect_x and tuple(a["y_obs"].shape[1:]) == expect_y
    assert a["x_true"].dtype == torch.float32
    assert a["id"] == b["id"]
    torch.testing.assert_close(a["y_obs"], b["y_obs"], rtol=0, atol=0)
    return a


# ---------------------------------------------------------------------------------------------- Navier-Stokes
@pytest.fixture(scope="module")
def ns_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ns") / "data"
    dm = NavierStokesDataModule(root=str(root), resolution=N, burn_in=0.1, **NS_COUNTS)
    dm.prepare_data()
    return root


def test_ns_generation_is_cached(ns_root, monkeypatch):
    shard = ns_root / "train" / "shard_00000.npy"
    mtime = shard.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(ns_module._gen, "generate_dataset", lambda *a, **k: calls.append(1))
    dm = NavierStokesDataModule(root=str(ns_root), resolution=N, burn_in=0.1, **NS_COUNTS)
    dm.prepare_data()
    dm.setup("fit")
    assert calls == [] and shard.stat().st_mtime_ns == mtime
    # a smaller request is served by the same cache
    dm = NavierStokesDataModule(root=str(ns_root), resolution=N, num_train=2, num_val=1, num_test=1, burn_in=0.1)
    dm.prepare_data()
    assert calls == [] and len(dm.train_dataset()) == 2
    with pytest.warns(UserWarning, match="burn_in"):     # other settings: the cache wins, with a warning
        NavierStokesDataModule(root=str(ns_root), resolution=N, **NS_COUNTS).prepare_data()
    assert calls == []


def test_ns_predict_items_and_units(ns_root):
    make = lambda: NavierStokesDataModule(root=str(ns_root), resolution=N, batch_size=3, operator=ns_operator(),  # noqa: E731
                                          burn_in=0.1, **NS_COUNTS)
    batch = check_seeded(make, (1, N, N), (1, N // 2, N // 2))
    assert batch["id"] == ["ns-test-00000", "ns-test-00001", "ns-test-00002"]
    stored = np.load(ns_root / "test" / "shard_00000.npy")
    torch.testing.assert_close(batch["x_true"], torch.from_numpy(stored) / 10.0)   # prior units
    assert not torch.allclose(batch["y_obs"][0], batch["y_obs"][1])


def test_ns_fit_loaders(ns_root):
    dm = NavierStokesDataModule(root=str(ns_root), resolution=N, batch_size=2, augment=True, burn_in=0.1, **NS_COUNTS)
    dm.setup("fit")
    x = first_batch(dm.train_dataloader())
    assert x.shape == (2, 1, N, N) and x.dtype == torch.float32
    assert first_batch(dm.val_dataloader()).shape == (2, 1, N, N)
    # the augmentation is a periodic shift: same multiset of values
    f = dm.val_dataset()[0]
    torch.testing.assert_close(periodic_shift(f).flatten().sort().values, f.flatten().sort().values)


def test_ns_errors(ns_root, tmp_path):
    with pytest.raises(ValueError, match="generate"):
        NavierStokesDataModule(root=str(tmp_path / "none"), resolution=N, generate=False).prepare_data()
    dm = NavierStokesDataModule(root=str(ns_root), resolution=N, num_train=100, num_test=None, burn_in=0.1)
    dm.prepare_data()                                       # the cache exists: nothing to generate ...
    assert len(dm.predict_truth()) == 3                     # ... predict needs only the test fields ...
    with pytest.raises(ValueError, match="fewer than num_train=100"):
        dm.train_dataset()                                  # ... fit wants more training fields than cached
    with pytest.raises(ValueError, match="cannot give resolution"):
        NavierStokesDataModule(root=str(ns_root), resolution=32, burn_in=0.1, **NS_COUNTS).setup()
    with pytest.raises(ValueError, match="split"):
        NavierStokesDataModule(root=str(ns_root), split="dev")


def test_ns_inversebench_lmdb(tmp_path):
    rng = np.random.default_rng(0)
    fields = rng.standard_normal((5, 1, N, N)).astype(np.float32) * 0.5   # already divided by 10
    write_lmdb(tmp_path / "ns.lmdb", fields)
    make = lambda: NavierStokesDataModule(lmdb_path=str(tmp_path / "ns.lmdb"), resolution=N, num_test=None,  # noqa: E731
                                          batch_size=5, operator=ns_operator())
    batch = check_seeded(make, (1, N, N), (1, N // 2, N // 2))
    assert batch["id"][-1] == "ns-test-00004"
    torch.testing.assert_close(batch["x_true"], torch.from_numpy(fields))      # returned as stored
    # root pointing at the LMDB; fit: train = entries before the last num_val
    dm = NavierStokesDataModule(root=str(tmp_path / "ns.lmdb"), resolution=N, num_train=None, num_val=2, batch_size=3)
    assert len(dm.train_dataset()) == 3 and len(dm.val_dataset()) == 2
    torch.testing.assert_close(dm.val_dataset()[1], torch.from_numpy(fields[4]))
    # finer data than the prior: Fourier truncation to 8 x 8
    dm = NavierStokesDataModule(lmdb_path=str(tmp_path / "ns.lmdb"), resolution=8, num_val=0, batch_size=2)
    assert first_batch(dm.train_dataloader()).shape == (2, 1, 8, 8)


# ---------------------------------------------------------------------------------------------- black holes
def bh_operator():
    from diffinv.operators.blackhole import BlackHoleImaging

    return BlackHoleImaging(npix=N, fov_uas=160.0, tadv_s=3600.0)


def test_synthetic_black_holes_range_peak_and_variety():
    gen = SyntheticBlackHoles(SyntheticBlackHoleConfig(npix=N), seed=3)
    imgs = torch.from_numpy(gen.images("train", range(6)))
    assert imgs.shape == (6, 1, N, N) and imgs.min() >= -1 and imgs.max() <= 1
    torch.testing.assert_close(imgs.flatten(1).max(1).values, torch.ones(6))      # peak 1
    assert min((imgs[i] - imgs[j]).abs().max() for i in range(6) for j in range(i)) > 0.05
    again = SyntheticBlackHoles(SyntheticBlackHoleConfig(npix=N), seed=3).image("train", 4)
    torch.testing.assert_close(again, imgs[4])                                       # seeded per index
    assert not torch.allclose(gen.image("test", 4), imgs[4])                          # splits differ


def test_blackhole_synthetic_datamodule(tmp_path, monkeypatch):
    kw = dict(root=str(tmp_path / "missing"), resolution=N, synthetic_dir=str(tmp_path / "cache"),
              num_train=5, num_val=2, num_test=3, batch_size=3)
    dm = BlackHoleDataModule(**kw)
    dm.prepare_data()
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 3
    mtimes = [f.stat().st_mtime_ns for f in files]
    dm.setup("fit")
    x = first_batch(dm.train_dataloader())
    assert x.shape == (3, 1, N, N) and x.max() == 1.0 and x.min() >= -1.0
    assert len(dm.val_dataset()) == 2
    # reuse: a fresh module regenerates nothing
    monkeypatch.setattr(SyntheticBlackHoles, "images", lambda *a, **k: pytest.fail("regenerated"))
    op = bh_operator()
    batch = check_seeded(lambda: BlackHoleDataModule(operator=op, **kw), (1, N, N), (2 * op.n_vis + 1,))
    assert batch["id"] == ["bh-test-00000", "bh-test-00001", "bh-test-00002"]
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert not torch.allclose(batch["y_obs"][0], batch["y_obs"][1])


def _ring(n, shift=0.0):
    yy, xx = np.meshgrid(np.arange(n) - n / 2 + 0.5, np.arange(n) - n / 2 + 0.5, indexing="ij")
    r = np.hypot(xx - shift, yy)
    return np.exp(-0.5 * ((r - n / 5) / (n / 20)) ** 2) * (1.5 + xx / n)


def test_blackhole_folder_npy_h5_fits(tmp_path):
    import h5py
    from diffinv.operators.eht_array import import_ehtim

    eh = import_ehtim()
    from ehtim.const_def import RADPERUAS

    root = tmp_path / "bh"
    root.mkdir()
    np.save(root / "a_single.npy", 3.0 * _ring(N))
    np.save(root / "b_stack.npy", np.stack([_ring(2 * N, s) for s in (0.0, 2.0)]))       # resized 32 -> 16
    with h5py.File(root / "c_grmhd.h5", "w") as f:
        f["images"] = np.stack([_ring(N, s) for s in (1.0, 3.0, 5.0)])[:, None]
        f["meta"] = np.arange(3)
    fits_img = _ring(N, 4.0) * 1e-3
    im = eh.image.Image(fits_img, 160.0 * RADPERUAS / N, 187.7, 12.39, rf=230e9, source="M87")
    with contextlib.redirect_stdout(io.StringIO()):
        im.save_fits(str(root / "d_model.fits"))

    with pytest.raises(ValueError, match="h5_dataset"):
        BlackHoleDataModule(root=str(root), resolution=N, synthetic=False).setup()
    dm = BlackHoleDataModule(root=str(root), resolution=N, synthetic=False, h5_dataset="images", batch_size=8,
                             operator=bh_operator())
    batch = first_batch(dm.predict_dataloader())
    assert batch["id"] == ["a_single", "b_stack-00000", "b_stack-00001", "c_grmhd-00000", "c_grmhd-00001",
                           "c_grmhd-00002", "d_model"]
    x = batch["x_true"]
    assert x.shape == (7, 1, N, N)
    torch.testing.assert_close(x.flatten(1).max(1).values, torch.ones(7))
    ref = lambda a: torch.from_numpy(2 * a / a.max() - 1).float()  # noqa: E731
    torch.testing.assert_close(x[0, 0], ref(_ring(N)))
    torch.testing.assert_close(x[4, 0], ref(_ring(N, 3.0)))
    torch.testing.assert_close(x[6, 0], ref(fits_img), atol=1e-5, rtol=0)                 # FITS orientation kept
    # fit on the pool minus an evaluation set
    dm = BlackHoleDataModule(root=str(root), resolution=N, synthetic=False, h5_dataset="images", eval_first=2,
                             num_val=1, batch_size=2, augment=True)
    assert len(dm.train_dataset()) == 4 and len(dm.val_dataset()) == 1
    assert first_batch(dm.train_dataloader()).shape == (2, 1, N, N)


def test_blackhole_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no black-hole images.*empty"):
        BlackHoleDataModule(root=str(tmp_path / "empty"), synthetic=False).setup()
    with pytest.raises(ValueError, match="does not exist"):
        BlackHoleDataModule(root=str(tmp_path / "nowhere"), synthetic=False).setup()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match="broken.npy"):
        BlackHoleDataModule(root=str(bad), synthetic=False).setup()
    np.save(bad / "broken.npy", np.zeros((N, N)))
    with pytest.raises(ValueError, match="broken.npy.*empty"):
        BlackHoleDataModule(root=str(bad), resolution=N, synthetic=False, operator=bh_operator()).predict_dataloader()


def test_blackhole_lmdb(tmp_path):
    imgs = np.stack([_ring(N, s) for s in (0.0, 1.0, 2.0)])[:, None].astype(np.float32)
    write_lmdb(tmp_path / "bh.lmdb", imgs)
    dm = BlackHoleDataModule(lmdb_path=str(tmp_path / "bh.lmdb"), resolution=N, batch_size=3, operator=bh_operator())
    batch = first_batch(dm.predict_dataloader())
    assert batch["id"] == ["bh-test-00000", "bh-test-00001", "bh-test-00002"]
    torch.testing.assert_close(batch["x_true"][2, 0], torch.from_numpy(2 * imgs[2, 0] / imgs[2, 0].max() - 1))


# ---------------------------------------------------------------------------------------------- images
def _write_png(path, arr):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_image_folder(tmp_path):
    from diffinv.operators.resize import PoolingSuperResolution

    rng = np.random.default_rng(0)
    same = rng.integers(0, 256, (N, N, 3), dtype=np.uint8)
    for i in range(5):
        _write_png(tmp_path / "ffhq" / f"{i // 3:05d}" / f"{i:05d}.png",
                   same if i < 2 else rng.integers(0, 256, (2 * N, 3 * N, 3), dtype=np.uint8))
    op = PoolingSuperResolution(input_shape=(3, N, N), scale_factor=2, noise=GaussianNoise(0.05))
    make = lambda: ImageFolderDataModule(root=str(tmp_path / "ffhq"), resolution=N, eval_first=2,  # noqa: E731
                                         batch_size=2, operator=op)
    batch = check_seeded(make, (3, N, N), (3, N // 2, N // 2))
    assert batch["id"] == ["00000", "00001"]
    torch.testing.assert_close(batch["x_true"][0], batch["x_true"][1])   # same image, different ids ...
    assert not torch.allclose(batch["y_obs"][0], batch["y_obs"][1])      # ... different noise
    torch.testing.assert_close(batch["x_true"][0], torch.from_numpy(same).permute(2, 0, 1).float() / 127.5 - 1)
    dm = make()
    dm.num_val = 1
    dm.setup("fit")
    assert [p.stem for p in dm.train_dataset().keys] == ["00002", "00003"]       # eval ids excluded
    assert [p.stem for p in dm.val_dataset().keys] == ["00004"]
    x = first_batch(dm.train_dataloader())
    assert x.shape == (2, 3, N, N) and x.min() >= -1 and x.max() <= 1             # 32 x 48 cropped + resized
    dm = ImageFolderDataModule(root=str(tmp_path / "ffhq"), resolution=N, predict_ids=["00003"], operator=op)
    assert first_batch(dm.predict_dataloader())["id"] == ["00003"]


def test_image_manifest_grayscale_to_rgb(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("train/a.png", "train/b.png", "train/c.png", "test/t0.png", "test/t1.png"):
        _write_png(tmp_path / name, rng.integers(0, 256, (N, N), dtype=np.uint8))     # grayscale
    (tmp_path / "train_images.txt").write_text("# written by prepare_super_resolution_dataset.py\n"
                                               "train/a.png\ntrain/b.png\n\ntrain/c.png\n")
    (tmp_path / "test_images.txt").write_text("test/t0.png\ntest/t1.png\n")
    from diffinv.operators.resize import PoolingSuperResolution

    op = PoolingSuperResolution(input_shape=(3, N, N), scale_factor=4, noise=GaussianNoise(0.05))
    make = lambda: ImageManifestDataModule(root=str(tmp_path), resolution=N, batch_size=2, num_val=1,  # noqa: E731
                                           operator=op)
    batch = check_seeded(make, (3, N, N), (3, N // 4, N // 4))
    assert batch["id"] == ["t0", "t1"]
    x = batch["x_true"]
    torch.testing.assert_close(x[:, 0], x[:, 1]) and torch.testing.assert_close(x[:, 0], x[:, 2])
    dm = make()
    x = first_batch(dm.train_dataloader())
    assert x.shape == (2, 3, N, N) and len(dm.val_dataset()) == 1
    gray = ImageManifestDataModule(root=str(tmp_path), resolution=N, channels=1, batch_size=2)
    assert first_batch(gray.train_dataloader()).shape == (2, 1, N, N)
    (tmp_path / "test_images.txt").write_text("test/t0.png\ntest/missing.png\n")
    with pytest.raises(ValueError, match="missing.png"):
        ImageManifestDataModule(root=str(tmp_path)).setup()


def test_image_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images.*empty.*prepare_super_resolution_dataset"):
        ImageFolderDataModule(root=str(tmp_path / "empty")).setup()
    with pytest.raises(ValueError, match="does not exist.*data.init_args.root"):
        ImageFolderDataModule(root=str(tmp_path / "nowhere")).setup()
    with pytest.raises(ValueError, match="prepare_super_resolution_dataset"):
        ImageManifestDataModule(root=str(tmp_path / "empty")).setup()
    _write_png(tmp_path / "rgb" / "x.png", np.zeros((N, N, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="channels=1"):
        ImageFolderDataModule(root=str(tmp_path / "rgb"), channels=1).setup()
    (tmp_path / "rgb" / "y.png").write_bytes(b"garbage")
    from diffinv.operators.resize import PoolingSuperResolution

    op = PoolingSuperResolution(input_shape=(3, N, N), scale_factor=2)
    # one unreadable file among readable ones: that item carries the error (a recorded failure in predict)
    items = {it["id"]: it for it in ImageFolderDataModule(root=str(tmp_path / "rgb"), resolution=N,
                                                          operator=op).predict_dataset()}
    assert "y.png" in items["y"]["error"] and "x_true" in items["x"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "z.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="none of the 1 images.*z.png"):      # nothing readable: fail fast
        ImageFolderDataModule(root=str(tmp_path / "bad"), resolution=N, operator=op).predict_dataloader()
