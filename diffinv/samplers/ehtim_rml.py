"""The black-hole imaging baseline: regularised maximum likelihood with ``ehtim``'s own imager
(``ehtim.imager.Imager``; Chael et al. 2016, 2018), the "EHT-Imaging" row of InverseBench's black-hole table.

The item's measurement (noisy visibilities and total flux, ``BlackHoleImaging``'s layout) is put into an ehtim
observation of the same array, times and sigmas, and ehtim images it from closure quantities only, as the EHT's
imaging pipelines do on uncalibrated data (EHT 2019 Paper IV, Sec. 6): data terms closure phases and log closure
amplitudes (weights ``data_weights``), regularisers maximum entropy relative to a Gaussian prior image ("simple"),
total squared variation ("tv2"), l1 and the total-flux constraint (``reg_weights``); the prior / initial image is
a circular Gaussian of ``prior_fwhm_uas`` carrying the measured flux. ``rounds`` rounds of L-BFGS (ehtim's
``make_image_I``, ``maxit`` iterations each), each started from the previous image blurred to ``blur_uas`` (the
usual ehtim practice against local minima). The result is mapped back to the prior's units,
``x = 2 I / jy_per_unit - 1``; every "draw" is that image (a point estimate). Needs ehtim (the
``diffinv[blackhole]`` extra). The settings are tuned on validation images (docs/references.md#black-hole-imaging).
"""
from __future__ import annotations

import contextlib
import copy
import io
import warnings

import numpy as np
import torch
from torch import Tensor

from ..operators.blackhole import BlackHoleImaging
from ..operators.eht_array import RADPERUAS, import_ehtim, simulate_observation
from .base import Sampler, real_dtype, repeat_measurement


class EhtimRML(Sampler):
    """ehtim's regularised maximum-likelihood imager on the item's closure data (module docstring)."""

    requires = frozenset({"interferometry"})
    baseline = True

    def __init__(self, data_weights: dict[str, float] | None = None, reg_weights: dict[str, float] | None = None,
                 prior_fwhm_uas: float = 50.0, rounds: int = 3, maxit: int = 200, blur_uas: float = 10.0):
        super().__init__()
        self.data_weights = dict(data_weights or {"cphase": 1.0, "logcamp": 1.0})
        self.reg_weights = dict(reg_weights or {"simple": 1.0, "tv2": 1.0, "l1": 0.1, "flux": 100.0})
        if rounds < 1 or maxit < 1 or not prior_fwhm_uas > 0 or blur_uas < 0:
            raise ValueError(f"EhtimRML: need rounds >= 1, maxit >= 1, prior_fwhm_uas > 0, blur_uas >= 0; got "
                             f"{rounds}, {maxit}, {prior_fwhm_uas}, {blur_uas}")
        self.prior_fwhm_uas, self.rounds, self.maxit, self.blur_uas = prior_fwhm_uas, rounds, maxit, blur_uas

    def observation(self, operator: BlackHoleImaging, y: Tensor):
        """An ehtim observation of the operator's array carrying the measured visibilities and sigmas."""
        obs = copy.deepcopy(_template(operator))
        vis = operator.noise.visibilities(y[None]).detach().cpu().numpy()[0]
        obs.data["vis"] = vis.astype(np.complex128)
        obs.data["sigma"] = operator.noise.sigma_vis.detach().cpu().double().numpy()
        return obs

    def image(self, operator: BlackHoleImaging, y: Tensor) -> np.ndarray:
        """The RML image of one measurement, Jy per pixel, ``[npix, npix]`` (ehtim's imarr layout)."""
        eh = import_ehtim()
        setup = operator.setup
        obs = self.observation(operator, y)
        flux = float(operator.noise.split(y[None])[2][0])
        fov = setup.fov_uas * RADPERUAS
        gauss = eh.image.make_empty(setup.npix, fov, setup.ra_hr, setup.dec_deg, rf=setup.rf_hz, mjd=setup.mjd,
                                    source=setup.source)
        fwhm = self.prior_fwhm_uas * RADPERUAS
        gauss = gauss.add_gauss(flux, (fwhm, fwhm, 0.0, 0.0, 0.0))
        init = gauss
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            for r in range(self.rounds):
                imager = eh.imager.Imager(obs, init, prior_im=gauss, flux=flux, data_term=self.data_weights,
                                          reg_term=self.reg_weights, ttype="direct", maxit=self.maxit,
                                          norm_reg=True)
                out = imager.make_image_I(show_updates=False)
                self.cost.forward_calls += self.maxit
                init = out.blur_circ(self.blur_uas * RADPERUAS) if self.blur_uas > 0 and r + 1 < self.rounds else out
        return out.imarr()

    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        images = []
        for b in range(y.shape[0]):
            jy = torch.from_numpy(np.ascontiguousarray(self.image(operator, y[b]))).to(y.device, real_dtype(y))
            images.append((2 * jy / operator.jy_per_unit - 1)[None])
            if callback is not None:
                callback(b, y.shape[0], torch.stack(images))
        return repeat_measurement(torch.stack(images), num_samples)


_TEMPLATES: dict[int, object] = {}


def _template(operator: BlackHoleImaging):
    """The operator's ehtim observation (same array, times and baselines as its tables), built once."""
    key = id(operator.tables)
    if key not in _TEMPLATES:
        obs = simulate_observation(operator.setup)
        if len(obs.data) != operator.n_vis:
            raise ValueError(f"EhtimRML: the simulated observation has {len(obs.data)} visibilities, the operator "
                             f"{operator.n_vis} (an operator built from a UVFITS file is not supported)")
        _TEMPLATES[key] = obs
    return _TEMPLATES[key]
