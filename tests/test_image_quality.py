"""LPIPS and FID: torchmetrics' implementations run on weights that are present, and a missing network or
weights file is reported with its reason, never dropped.

torchvision does not import with this project's CPU torch build and nothing can be downloaded, so the LPIPS
path is run with a stand-in ``torchvision`` module whose ``vgg16`` has torchvision's layout and loads its
weights from the torch hub cache as torchvision does (weights made here); FID runs torchmetrics' code with a
feature extractor made here. Both are checked against independent computations (LPIPS, Zhang et al. 2018,
eq. 1; the Frechet distance with scipy's matrix square root)."""
from __future__ import annotations

import contextlib
import sys
import types

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from diffinv import image_quality
from diffinv.image_quality import MetricUnavailable, fid, fid_unavailable, lpips, lpips_unavailable
from diffinv.metrics import check_metric_names, evaluate, unavailable
from diffinv.operators.image import Inpainting

VGG_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
TAPS = (3, 8, 15, 22, 29)     # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in vgg16().features


def vgg16_features() -> nn.Sequential:
    layers, c = [], 3
    for v in VGG_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)


@pytest.fixture
def fake_torchvision(tmp_path, monkeypatch):
    """A ``torchvision`` with ``models.vgg16`` / ``VGG16_Weights`` (weights from the hub cache, as torchvision
    loads them), the torch hub cache in ``tmp_path``; returns the path the weights go to."""
    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace()
    tv.models.VGG16_Weights = types.SimpleNamespace(DEFAULT=types.SimpleNamespace(url=VGG_URL))

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = vgg16_features()

    def vgg16(weights=None):
        model = VGG()
        if weights is not None:
            model.load_state_dict(torch.hub.load_state_dict_from_url(weights.url, map_location="cpu"))
        return model

    tv.models.vgg16 = vgg16
    import torchmetrics.functional.image.lpips as tm_functional   # imported before the stand-in exists
    import torchmetrics.image.lpip as tm_module

    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setattr(tm_functional, "_TORCHVISION_AVAILABLE", True)
    monkeypatch.setattr(tm_module, "_TORCHVISION_AVAILABLE", True)
    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    image_quality._lpips_metric.cache_clear()
    yield tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    torch.hub.set_dir(old_hub)
    image_quality._lpips_metric.cache_clear()


def images(n: int, size: int, seed: int, smooth: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if not smooth:
        return torch.randn((n, 3, size, size), generator=g).clamp(-1, 1)
    x = torch.randn((n, 3, size // 4, size // 4), generator=g)
    return nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)


def lpips_reference(x: torch.Tensor, y: torch.Tensor, features: nn.Sequential) -> torch.Tensor:
    """LPIPS eq. 1 computed here: unit-normalised VGG activations, squared differences weighted by the
    shipped linear heads, spatial mean, summed over the five layers."""
    import torchmetrics.functional.image.lpips as tm

    heads = torch.load(tm.__file__.replace("lpips.py", "lpips_models/vgg.pth"), map_location="cpu", weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
    scale = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]
    total = torch.zeros(x.shape[0])
    acts = []
    for inp in ((x - shift) / scale, (y - shift) / scale):
        out, h = [], inp
        for i, layer in enumerate(features):
            h = layer(h)
            if i in TAPS:
                out.append(h)
        acts.append(out)
    for k in range(len(TAPS)):
        a, b = (t / (t.pow(2).sum(1, keepdim=True) + 1e-8).sqrt() for t in (acts[0][k], acts[1][k]))
        w = heads[f"lin{k}.model.1.weight"]
        total += nn.functional.conv2d((a - b) ** 2, w).mean((1, 2, 3))
    return total


# ---------------------------------------------------------------------------------------------- LPIPS
def test_lpips_reports_its_reason_here_and_evaluate_records_null():
    reason = lpips_unavailable()
    op = Inpainting((3, 16, 16), mask_type="random", drop_prob=0.3)
    x = images(1, 16, 0)
    with pytest.warns(UserWarning, match="lpips") if reason else contextlib.nullcontext():
        check_metric_names(["psnr", "lpips"], op)
    out = evaluate(["psnr", "lpips"], x.expand(2, -1, -1, -1), x, op(x), op)
    assert out["psnr"] > 90
    if reason is None:
        assert out["lpips"] == pytest.approx(0.0, abs=1e-6)
    else:
        assert out["lpips"] is None and unavailable(["psnr", "lpips"]) == {"lpips": reason}
        assert "torchvision" in reason or "weights" in reason
        with pytest.raises(MetricUnavailable, match="LPIPS needs"):
            lpips(x, x)


def test_lpips_names_the_missing_weights_file(fake_torchvision):
    reason = lpips_unavailable()
    assert reason is not None and "vgg16-397923af.pth" in reason and str(fake_torchvision.parent) in reason
    with pytest.raises(MetricUnavailable, match="vgg16-397923af.pth"):
        lpips(images(1, 32, 0), images(1, 32, 1))


def test_lpips_with_weights_matches_eq_1(fake_torchvision):
    torch.manual_seed(0)
    features = vgg16_features()
    for m in features:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            nn.init.normal_(m.bias, std=0.01)
    fake_torchvision.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, fake_torchvision)
    assert lpips_unavailable() is None
    x = images(2, 64, 0)
    near = (x + 0.05 * images(2, 64, 1, smooth=False)).clamp(-1, 1)
    far = (x + 0.5 * images(2, 64, 2, smooth=False)).clamp(-1, 1)
    d_near, d_far = lpips(near, x), lpips(far, x)
    assert d_near.shape == (2,) and lpips(x, x).abs().max() < 1e-6
    assert (d_far > d_near).all() and (d_near > 0).all()
    with torch.no_grad():
        torch.testing.assert_close(d_far, lpips_reference(far, x, features.eval()), rtol=1e-4, atol=1e-6)
    op = Inpainting((3, 64, 64), mask_type="random", drop_prob=0.3)
    out = evaluate(["lpips"], far[:1].expand(3, -1, -1, -1), x[:1], op(x[:1]), op)
    assert out["lpips"] == pytest.approx(float(d_far[0]), rel=1e-5)


def test_lpips_needs_rgb():
    with pytest.raises(ValueError, match="RGB"):
        check_metric_names(["lpips"], Inpainting((1, 16, 16), mask_type="random", drop_prob=0.3))


# ---------------------------------------------------------------------------------------------- FID
class PooledFeatures(nn.Module):
    """A fixed random feature extractor of uint8 images (conv, tanh, global mean): 12 features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 12, 5, stride=2)

    def forward(self, x):
        return torch.tanh(self.conv(x.float() / 255.0)).mean((2, 3))


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * root))


def test_fid_with_a_feature_extractor_matches_the_frechet_distance():
    feat = PooledFeatures().eval()
    recon = images(40, 32, 0)
    truth = (images(40, 32, 1) * 0.6).clamp(-1, 1)
    value = fid(list(recon), truth.split(7), feature=feat, batch_size=16)       # items and uneven batches
    with torch.no_grad():
        fa = feat(image_quality.to_uint8(recon)).double().numpy()
        fb = feat(image_quality.to_uint8(truth)).double().numpy()
    assert value == pytest.approx(frechet(fa, fb), rel=1e-4)
    assert value > 1e-3 and abs(fid(recon, recon, feature=feat)) < 1e-6
    with pytest.raises(MetricUnavailable, match="at least 2"):
        fid(recon[:1], truth, feature=feat)


def test_fid_with_inception_or_its_reason():
    reason = fid_unavailable()
    if reason is None:              # torch-fidelity and its weights are on this machine
        assert fid(images(4, 32, 0), images(4, 32, 1)) > 0
        return
    assert "torch-fidelity" in reason or "weights" in reason
    with pytest.raises(MetricUnavailable, match="FID needs"):
        fid(images(4, 32, 0), images(4, 32, 1))


def test_uint8_quantisation_is_that_of_a_png():
    x = torch.tensor([-1.0, -0.5, 0.997, 1.0, 1.7])
    assert image_quality.to_uint8(x).tolist() == [0, 64, 255, 255, 255]


def test_rgb_problems_report_lpips_by_default():
    from diffinv.metrics import default_metrics

    assert default_metrics(Inpainting((3, 16, 16))) == ["psnr", "ssim", "lpips", "misfit", "coverage_2std"]
    assert default_metrics(Inpainting((1, 16, 16))) == ["psnr", "ssim", "misfit", "coverage_2std"]


def test_torchvision_is_checked_from_its_metadata_without_importing_it(monkeypatch):
    """torchvision 0.(m + 15) is the build of torch 2.m; another one is reported, and nothing imports it."""
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    real_find = image_quality.importlib.util.find_spec
    monkeypatch.setattr(image_quality.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "torchvision" else real_find(name, *a))
    minor = int(torch.__version__.split(".")[1])
    for version, ok in ((f"0.{minor + 15}.1", True), (f"0.{minor + 14}.0", False)):
        monkeypatch.setattr(image_quality.importlib.metadata, "version", lambda name, v=version: v)
        problem = image_quality._torchvision_problem()
        assert (problem is None) == ok, (version, problem)
    assert "not the build of torch" in problem and "torchvision" not in sys.modules
