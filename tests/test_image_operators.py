"""Image-restoration operators: the shared contract, and agreement with references we did not write
(PIL's bicubic resize, scipy.ndimage's Gaussian filter and convolutions, dense SVDs)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F
from PIL import Image

from diffinv.operators import GaussianNoise, dense_matrix
from diffinv.operators.image import (BicubicSuperResolution, CircularConvolution, CircularGaussianBlur,
                                     CircularMotionBlur, Convolution, GaussianBlur, Inpainting, MotionBlur,
                                     NonlinearBlur, PhaseRetrieval, PoolingSuperResolution, gaussian_kernel,
                                     motion_blur_kernel)

from operator_checks import check_operator
from operators_image import SMALL_OPERATORS


def _smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.uniform(-1, 1, (h, w)), 2.0, mode="wrap")


@pytest.mark.parametrize("name,factory", SMALL_OPERATORS, ids=[n for n, _ in SMALL_OPERATORS])
def test_small_operators_pass_contract(name, factory):
    check_operator(factory())


# ------------------------------------------------------------------ super-resolution
@pytest.mark.parametrize("r", [2, 4, 8])
def test_bicubic_matches_pil_antialiased_bicubic(r):
    """PIL's BICUBIC is Keys' cubic with a = -0.5, widened by the scale factor when reducing, pixel centres
    mapped like MATLAB: identical in the interior. At the border PIL renormalises the clipped kernel where
    MATLAB mirrors, so we compare away from the border (2 output pixels) to float32 precision."""
    h = 64
    img = _smooth_image(h, h).astype(np.float32)
    ref = np.asarray(Image.fromarray(img).resize((h // r, h // r), Image.Resampling.BICUBIC), dtype=np.float64)
    op = BicubicSuperResolution((1, h, h), scale_factor=r)
    ours = op(torch.from_numpy(img).double()[None, None]).squeeze().numpy()
    b = 2 if h // r > 4 else 1
    np.testing.assert_allclose(ours[b:-b, b:-b], ref[b:-b, b:-b], atol=2e-6)
    # a constant image stays constant everywhere (rows of weights sum to 1)
    const = np.full((1, 1, h, h), 0.3)
    np.testing.assert_allclose(op(torch.from_numpy(const)).numpy(), 0.3, atol=1e-12)


def test_bicubic_reproduces_linear_ramp_at_block_centres():
    # cubic convolution reproduces linear functions (Keys 1981); output pixel i sits at input r i + (r - 1) / 2
    op = BicubicSuperResolution((1, 32, 32), scale_factor=4)
    ramp = torch.arange(32, dtype=torch.float64).expand(32, 32)[None, None]
    y = op(ramp).squeeze()
    expected = 4 * torch.arange(8, dtype=torch.float64) + 1.5
    assert torch.allclose(y[3:-3, 3:-3], expected[3:-3].expand(2, 2), atol=1e-10)


@pytest.mark.parametrize("cls", [BicubicSuperResolution, PoolingSuperResolution])
def test_separable_svd_matches_dense(cls):
    op = cls((2, 16, 8), scale_factor=4).double()
    s_dense = torch.linalg.svdvals(dense_matrix(op))
    s_ours = op.singulars().flatten().sort(descending=True).values[: s_dense.numel()]
    assert torch.allclose(s_ours, s_dense, atol=1e-12)
    assert op(torch.zeros(1, 2, 16, 8, dtype=torch.float64)).shape == (1, 2, 4, 2)


def test_pooling_is_block_mean_with_singular_value_one_over_r():
    op = PoolingSuperResolution((3, 16, 16), scale_factor=4)
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(op(x), F.avg_pool2d(x, 4), atol=1e-6)
    s = op.singulars()
    assert s.shape == (1, 3 * 16 * 16) and s.dtype == torch.float32
    assert torch.allclose(s[0, : 3 * 16], torch.full((48,), 0.25)) and (s[0, 48:] == 0).all()


def test_scale_factor_must_divide_image():
    with pytest.raises(ValueError, match="scale_factor 3"):
        BicubicSuperResolution((3, 16, 16), scale_factor=3)
    with pytest.raises(ValueError, match="scale_factor 4"):
        PoolingSuperResolution((3, 16, 18), scale_factor=4)
    with pytest.raises(ValueError, match="positive integer"):
        BicubicSuperResolution((3, 16, 16), scale_factor=2.5)


# ------------------------------------------------------------------ blur
def test_gaussian_kernel_matches_scipy_impulse_response():
    impulse = np.zeros((61, 61))
    impulse[30, 30] = 1.0
    np.testing.assert_allclose(gaussian_kernel(61, 3.0), ndi.gaussian_filter(impulse, 3.0), atol=1e-15)
    # the operator's response to an interior impulse is scipy's Gaussian filter of it
    img = np.zeros((80, 80))
    img[37, 41] = 1.0
    y = GaussianBlur((1, 80, 80))(torch.from_numpy(img)[None, None]).squeeze().numpy()
    np.testing.assert_allclose(y, ndi.gaussian_filter(img, 3.0), atol=1e-7)


def test_reflect_blurs_match_scipy_mirror_convolution():
    x = _smooth_image(24, 20) + np.random.default_rng(1).normal(0, 0.1, (24, 20))
    xt = torch.from_numpy(x)[None, None]
    g = GaussianBlur((1, 24, 20), kernel_size=9, std=1.5)
    ref = ndi.convolve(x, gaussian_kernel(9, 1.5), mode="mirror")  # scipy 'mirror' = torch 'reflect'
    np.testing.assert_allclose(g(xt).squeeze().numpy(), ref, atol=1e-7)
    np.testing.assert_allclose(Convolution(gaussian_kernel(9, 1.5), (1, 24, 20))(xt).squeeze().numpy(), ref, atol=1e-6)
    m = MotionBlur((1, 24, 20), kernel_size=11, seed=4).double()
    k = m.kernel.numpy()
    assert not np.allclose(k, k[::-1, ::-1])  # a non-symmetric kernel: convolution, not correlation
    np.testing.assert_allclose(m(xt).squeeze().numpy(), ndi.convolve(x, k, mode="mirror"), atol=1e-12)


@pytest.mark.parametrize("size,shape", [(7, (16, 16)), (61, (32, 32)), (5, (15, 17))])
def test_circular_blur_matches_scipy_wrap_convolution(size, shape):
    x = np.random.default_rng(2).uniform(-1, 1, shape)
    k = motion_blur_kernel(size, 0.5, seed=7)
    op = CircularConvolution(k, (1, *shape)).double()
    y = op(torch.from_numpy(x)[None, None]).squeeze().numpy()
    np.testing.assert_allclose(y, ndi.convolve(x, op.kernel.numpy(), mode="wrap"), atol=1e-12)


def test_circular_blur_singulars_are_dft_magnitudes_and_match_dense_svd():
    op = CircularGaussianBlur((1, 12, 10), kernel_size=5, std=1.0).double()
    s_dense = torch.linalg.svdvals(dense_matrix(op))
    assert torch.allclose(op.singulars().flatten().sort(descending=True).values, s_dense, atol=1e-12)
    assert torch.allclose(op.singulars().max(), torch.tensor(1.0, dtype=torch.float64))  # K(0) = sum(kernel)


def test_motion_kernels_normalised_reproducible_and_seeded():
    k = motion_blur_kernel(61, 0.5, seed=0, sample_id=0)
    assert k.shape == (61, 61) and (k >= 0).all() and abs(k.sum() - 1) < 1e-12
    assert np.array_equal(k, motion_blur_kernel(61, 0.5, seed=0, sample_id=0))
    others = [motion_blur_kernel(61, 0.5, seed=1), motion_blur_kernel(61, 0.5, seed=0, sample_id=1)]
    assert all(np.abs(k - o).max() > 1e-3 for o in others)
    # a blur, not a point: spread over many pixels, centred roughly (centre of mass near the middle)
    assert (k > 1e-4).sum() > 10
    rows, cols = np.indices(k.shape)
    assert abs((rows * k).sum() - 30) < 15 and abs((cols * k).sum() - 30) < 15


def test_motion_blur_for_sample():
    op = MotionBlur((3, 32, 32), kernel_size=9, seed=5)
    other = op.for_sample(3)
    assert isinstance(other, MotionBlur) and other.sample_id == 3
    assert np.allclose(other.kernel.numpy(), motion_blur_kernel(9, 0.5, seed=5, sample_id=3), atol=1e-7)
    assert not torch.allclose(other.kernel, op.kernel)
    assert torch.equal(op.for_sample(3).kernel, other.kernel)
    assert op.double().for_sample(1).kernel.dtype == torch.float64
    assert other.noise is op.noise
    circ = CircularMotionBlur((3, 32, 32), kernel_size=9, seed=5, sample_id=3)
    assert torch.equal(circ.kernel, other.kernel)


def test_nonlinear_blur_equation_and_range():
    op = NonlinearBlur((3, 16, 16), kernel_size=7, seed=1)
    assert not op.linear and op.differentiable
    c = torch.full((1, 3, 16, 16), 0.2)
    u = ((0.2 + 1) / 2) ** 2.2  # the kernel sums to 1 and reflect padding keeps a constant image constant
    expected = 2 * (1 - np.exp(-3.0 * u)) / (1 - np.exp(-3.0)) - 1
    assert torch.allclose(op(c), torch.full_like(c, expected), atol=1e-6)
    y = op(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6
    assert op.for_sample(2).sample_id == 2


# ------------------------------------------------------------------ inpainting
def test_random_inpainting_drops_seventy_percent_on_every_channel():
    op = Inpainting((3, 64, 64), mask_type="random", seed=0)
    m = op.mask.expand(1, 3, 64, 64)[0]
    assert abs((1 - m[0]).mean().item() - 0.7) < 1 / 64**2
    assert torch.equal(m[0], m[1]) and torch.equal(m[0], m[2])
    assert not torch.equal(op.for_sample(1).mask, op.mask)
    assert torch.equal(op.for_sample(1).mask, Inpainting((3, 64, 64), mask_type="random", seed=0, sample_id=1).mask)
    x = torch.rand(2, 3, 64, 64)
    y = op(x)
    assert y.shape == x.shape and (y[:, :, m[0] == 0] == 0).all()


def test_box_and_extreme_masks():
    box = Inpainting((3, 256, 256), mask_type="box", seed=2)
    extreme = Inpainting((3, 256, 256), mask_type="extreme", seed=2)
    hole = (box.mask[0, 0] == 0).nonzero()
    t, l = hole.min(0).values.tolist()
    b, r = hole.max(0).values.tolist()
    assert (b - t + 1, r - l + 1) == (128, 128) and hole.shape[0] == 128 * 128
    assert 16 <= t < 256 - 16 - 128 and 16 <= l < 256 - 16 - 128  # DPS margins
    assert torch.equal(extreme.mask, 1 - box.mask)
    centred = Inpainting((1, 32, 32), mask_type="box", box_position="center")
    assert (centred.mask[0, 0, 8:24, 8:24] == 0).all() and centred.mask.sum() == 32 * 32 - 16 * 16
    with pytest.raises(ValueError, match="mask_type"):
        Inpainting((3, 16, 16), mask_type="stripes")


# ------------------------------------------------------------------ phase retrieval
def test_phase_retrieval_shape_and_ambiguities():
    assert PhaseRetrieval().output_shape == (3, 384, 384)  # DPS: pad int(2 / 8 * 256) = 64 per side
    op = PhaseRetrieval((1, 32, 32)).double()
    x = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    x[..., 8:20, 10:22] = torch.rand(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = op(x)
    assert y.shape == (1, 1, 48, 48)
    assert torch.allclose(op(-x), y, atol=1e-12)                                   # global sign
    assert torch.allclose(op(torch.roll(x, (5, -7), (-2, -1))), y, atol=1e-12)     # translation in the field
    assert torch.allclose(op(torch.flip(x, (-2, -1))), y, atol=1e-12)              # point reflection
    assert not torch.allclose(op(x.transpose(-2, -1)), y, atol=1e-6)               # not everything is invisible
    # Parseval: the orthonormal DFT keeps the energy
    assert torch.allclose((y**2).sum(), (x**2).sum())


# ------------------------------------------------------------------ bad inputs and defaults
@pytest.mark.parametrize("name,factory", SMALL_OPERATORS[::3], ids=[n for n, _ in SMALL_OPERATORS[::3]])
def test_bad_inputs_raise(name, factory):
    op = factory()
    c, h, w = op.input_shape
    with pytest.raises(ValueError, match=rf"expected input of shape \[B, {c}, {h}, {w}\]"):
        op(torch.zeros(1, c + 1, h, w))
    with pytest.raises(ValueError, match="expected input of shape"):
        op(torch.zeros(1, c, h + 2, w))
    bad = torch.zeros(1, c, h, w)
    bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        op(bad)


def test_bad_construction_arguments():
    with pytest.raises(ValueError, match="odd"):
        GaussianBlur((3, 64, 64), kernel_size=60)
    with pytest.raises(ValueError, match="reflect padding"):
        MotionBlur((3, 16, 16), kernel_size=61)
    with pytest.raises(ValueError, match="intensity"):
        motion_blur_kernel(9, 1.5)
    with pytest.raises(ValueError, match="seed"):
        Inpainting((3, 16, 16), seed=-1)


def test_defaults_follow_dps():
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    cases = [(BicubicSuperResolution(), (1, 3, 64, 64)), (GaussianBlur(), (1, 3, 256, 256)),
             (MotionBlur(), (1, 3, 256, 256)), (Inpainting(), (1, 3, 256, 256)), (PhaseRetrieval(), (1, 3, 384, 384))]
    for op, shape in cases:
        assert op(x).shape == shape, type(op).__name__
        assert isinstance(op.noise, GaussianNoise) and op.sigma == 0.05
    assert GaussianBlur().kernel.shape == (61, 61) and MotionBlur().kernel.shape == (61, 61)
