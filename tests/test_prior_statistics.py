"""The model cards' statistics against closed forms: Parseval and single modes for E(k); analytic Gaussian rings
of known diameter, width and brightness modulation for the ring statistics; noise for the background."""
from __future__ import annotations

import math

import pytest
import torch

from diffinv.prior_statistics import (CARD_BEGIN, CARD_END, card_section, energy_spectrum, noisy_background_fraction,
                                      replace_card_section, ring_statistics)


def test_energy_spectrum_parseval_and_a_single_mode():
    w = torch.randn(3, 1, 32, 32, dtype=torch.float64)
    e = energy_spectrum(w)
    assert torch.allclose(e.sum(1), 0.5 * w.pow(2).sum((-3, -2, -1)))          # orthonormal DFT
    x = torch.arange(32.0, dtype=torch.float64)
    mode = torch.cos(2 * math.pi * 5 * x / 32)[None, :].expand(32, 32)           # k = (0, 5)
    e = energy_spectrum(mode[None])
    assert e[0].argmax() == 5 and e[0, 5] == pytest.approx(float(e[0].sum()))


def ring(n=64, fov=160.0, diameter=42.0, sigma_uas=4.0, modulation=0.0, noise=0.0, seed=0):
    """A Gaussian ring of the given diameter and radial sigma, brightness (1 + modulation cos theta), peak 1 -> [-1, 1]."""
    c = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * fov / n
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    r, th = torch.sqrt(xx**2 + yy**2), torch.atan2(yy, xx)
    img = torch.exp(-0.5 * ((r - diameter / 2) / sigma_uas) ** 2) * (1 + modulation * torch.cos(th))
    img = img / img.max()
    if noise:
        img = img + noise * torch.rand(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (2 * img - 1)[None, None]


def test_ring_statistics_recover_an_analytic_ring():
    s = ring_statistics(torch.cat([ring(), ring(modulation=0.5)]), 160.0)
    assert s["diameter"][0] == pytest.approx(42.0, abs=2.5)                      # half-pixel radii: 1.25 uas in d
    assert s["width"][0] == pytest.approx(2.3548 * 4.0, abs=2.6)                # FWHM, half-pixel resolution
    assert s["asymmetry"][0] < 0.03
    # brightness 1 + 0.5 cos(theta): |sum I e^(i theta)| / sum I = (0.5 / 2) / 1 = 0.25 about the ring's centre
    assert s["asymmetry"][1] == pytest.approx(0.25, abs=0.05)
    # the Gaussian tail beyond peak + FWHM is smooth: far below noise (noisy prior samples: ~0.1 of the peak)
    assert s["background"][0] < 1e-3 and s["roughness"][0] < 5e-3


def test_noisy_background_is_flagged_and_smooth_emission_is_not():
    clean = torch.cat([ring(diameter=d) for d in (36.0, 40.0, 44.0, 48.0)])
    noisy = torch.cat([ring(noise=0.2, seed=i) for i in range(4)])
    train = ring_statistics(clean, 160.0)
    frac, threshold = noisy_background_fraction(ring_statistics(noisy, 160.0), train)
    assert frac == 1.0 and threshold < 5e-3
    # the threshold is the training images' 99th percentile: at most the roughest of 4 lies above it
    assert noisy_background_fraction(train, train)[0] <= 0.25


def test_card_section_writes_a_figure_and_replaces_itself(tmp_path):
    w = torch.randn(8, 1, 32, 32)
    section, figures = card_section("navier_stokes", w, w, tmp_path, truth=w)
    assert (tmp_path / "prior_statistics.png").is_file()
    assert all(v == pytest.approx(1.0) for v in figures["spectrum_ratio"]["training fields"].values())
    card = "# card\n\n## Use\n\ntext\n"
    once = replace_card_section(card, section)
    twice = replace_card_section(once, section.replace("Samples against data", "Samples against data (new)"))
    assert once.count(CARD_BEGIN) == twice.count(CARD_END) == 1 and "(new)" in twice and twice.endswith("text\n")
    with pytest.raises(ValueError, match="no statistics"):
        card_section("image", w, w, tmp_path)
