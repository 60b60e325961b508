"""2-D incompressible Navier–Stokes on the torus: the forward model of the EnKG / InverseBench fluid problem.

Physics (vorticity form, periodic square [0, 2 pi]^2; the Navier–Stokes problem of Zheng et al. 2024,
"Ensemble Kalman Diffusion Guidance" (arXiv:2409.20175) and of InverseBench (Zheng et al., ICLR 2025);
reference solver: devzhk/enkg-pytorch, ``inverse_problems/navier_stokes.py``):

    w_t + u . grad(w) = nu Lap(w) + f,      nu = 1 / Re,   Re = 200                        (1)
    -Lap(psi) = w,   u = (psi_y, -psi_x)                                                     (2)
    f(x, y) = -A cos(k_f y),   A = 4, k_f = 4  (Kolmogorov forcing)                           (3)

Axis convention (the reference's ``meshgrid(t, t, indexing='ij')``): a field ``w[..., i, j]`` is
``w(x_i, y_j)`` with ``x_i = 2 pi i / N`` along the first spatial axis (dim -2) and ``y_j = 2 pi j / N``
along the second (dim -1); the forcing (3) varies along dim -1.

Discretisation (the reference's pseudo-spectral scheme, re-derived here):
* Fourier in space with ``rfft2``; ``d/dx -> i k_x``, ``d/dy -> i k_y`` with the Nyquist wavenumber of
  first derivatives set to 0; ``-Lap -> |k|^2``.
* The advection term is evaluated in conservative form, ``u . grad w = div(u w)`` (div u = 0), from the
  de-aliased vorticity: ``N(w) = -i k . FFT(u w) + f_hat`` with ``u`` and ``w`` built from ``mask * w_hat``.
  ``dealias="two_thirds"`` (default) is Orszag's 2/3 rule: the fields are truncated to
  ``|k_x|, |k_y| <= N / 3`` and so is the advection term (the modes of the product above N / 3 hold the
  aliasing errors); modes above N / 3 then only decay by viscosity, and the retained modes are an exact
  Galerkin truncation. ``dealias="inversebench"`` is the reference: its mask is the disc
  ``k_x^2 + k_y^2 <= 2 (N / 3)^2`` (reaching 0.47 N along the axes, so some aliasing remains), applied to
  the fields only, so aliased products accumulate in the highest modes as grid-scale noise. Both
  masks zero the mean mode, so the mean vorticity is never advected and is conserved exactly.
* Time stepping, Crank–Nicolson for the diffusion and Heun (explicit trapezoid) for N, with
  ``a = dt nu |k|^2 / 2``:
      w~      = ((1 - a) w^n + dt N(w^n)) / (1 + a)                                          (4a)
      w^{n+1} = ((1 - a) w^n + dt (N(w^n) + N(w~)) / 2) / (1 + a)                             (4b)
  second order in dt; a single Fourier mode (no advection) is damped by the (1,1) Padé factor
  (1 - a) / (1 + a) of exp(-2a).

Time step. The reference takes ``dt = min(0.5 h / max|u|, 0.5 h^2 / mu)`` with ``h = 1 / N`` (not the grid
spacing 2 pi / N) and ``mu = nu sqrt(max|f|)`` (``nu`` without forcing), recomputed every step, and with
the maximum over the *whole batch*, so one sample's result depends on the others; its last step is cut
to land on T. Here every sample has its own step, and each step is

    dt_i = r_i / ceil(r_i / dt_cfl,i)                                                        (5)

with ``r_i`` the time still to go and ``dt_cfl,i`` the reference's bound for that sample's current
velocity (taken from the de-aliased velocity that N(w^n) computes anyway). So ``dt_i <= dt_cfl,i``, the
last step lands exactly on T, and ``dt_i`` is *piecewise constant* in the initial field (it only
changes when a ceil jumps): detaching it from autograd is then the exact derivative almost everywhere,
and finite differences (gradcheck) agree with backprop. A sample that has arrived leaves the running set
and the next waiting one takes its place, so a batch costs its samples' total step count on full sets, not
its slowest sample's count on each chunk. A fixed step is available too (``dt=...``): ``n = ceil(T / dt)``
equal steps of ``T / n``.

Cost. Each step evaluates N twice, each an inverse transform of three fields and a forward one of two. With
the 2/3 rule the transforms run as 1-D passes that skip the k_y columns above N / 3, about a fifth of the
FFT work; the rest of a step is a few element-wise passes over the spectra
(``scripts/benchmark_operators.py`` prints the step against the FFTs alone).

Units: the operator's input is the prior's field, physical vorticity / ``scale`` (``scale = 10``,
the scale the priors are trained on); the output ``w(T)[..., ::ds, ::ds]`` and the noise sigma are physical vorticity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Operator
from .noise import GaussianNoise, NoiseModel

_DEALIAS = ("two_thirds", "inversebench")


@dataclass
class _Spectral:
    """Precomputed spectral multipliers for one (dtype, device); shapes broadcast against ``[B, N, N//2+1]``.
    The advection term lives on the first ``cols`` k_y columns: ``N // 3 + 1`` for the 2/3 rule (the
    transforms skip the columns it zeroes), all ``N // 2 + 1`` for "inversebench"."""

    ikx: Tensor          # i k_x, Nyquist zeroed  (complex)                  [N, 1]
    iky: Tensor          # i k_y, Nyquist zeroed  (complex)                  [1, M]
    nu_lap: Tensor       # nu |k|^2                 (real)                   [N, M]
    inv_lap: Tensor      # 1 / |k|^2, 0 at k = 0    (real)                   [N, M]
    cols: int            # k_y columns that carry the advection term
    to_fields: Tensor    # w_hat -> (w, u_x, u_y)_hat, de-aliased (complex) [3, N, cols]
    neg_div: Tensor      # (F_x, F_y)_hat -> -div F, times the 2/3 mask for "two_thirds" (complex) [2, N, cols]
    forcing: Tensor | None  # f_hat on the advected columns (complex, one nonzero mode (0, k_f)) [N, cols] or None


class NavierStokes2DSolver:
    """Batched pseudo-spectral solver of (1)-(3) on an ``N x N`` grid of [0, 2 pi]^2.

    ``solve(w0, T)`` takes ``w0`` of shape ``[B, N, N]`` (physical vorticity), returns ``w(T)`` of the same
    shape, dtype and device, differentiable through torch autograd and usable under ``torch.no_grad()``.
    Spectral multipliers are built lazily for each dtype / device the solver meets.

    Args:
        resolution: N (even, >= 4).
        reynolds: Re; nu = 1 / Re.
        forcing_amplitude, forcing_wavenumber: A and k_f of (3) (amplitude 0: unforced).
        dt: None for the adaptive step (5), or a fixed step (rounded down so that it divides T).
        cfl: the 0.5 of the reference's bound, applied to both terms of it.
        dealias: "two_thirds" or "inversebench" (see the module docstring).
        max_steps: per-sample step limit; exceeding it raises a RuntimeError that names the field's amplitude.
            None: :meth:`step_cap`, derived from the problem (about 10 x the steps the data need), so that a
            diverging iterate (a sampler's too-large step) fails in seconds instead of running for minutes.
        chunk_size: samples advanced together (a waiting sample joins as soon as a running one arrives).
            None: the whole batch on GPU; on CPU, about 2^16 grid points (16 fields at 64 x 64, 4 at
            128 x 128), the fastest per sample here: per-sample cost on CPU is FFT-bound, so larger CPU sets
            only lose to memory traffic. Results do not depend on it (samples are independent).
    """

    def __init__(self, resolution: int, reynolds: float = 200.0, forcing_amplitude: float = 4.0,
                 forcing_wavenumber: int = 4, dt: float | None = None, cfl: float = 0.5,
                 dealias: str = "two_thirds", max_steps: int | None = None, chunk_size: int | None = None):
        if not (isinstance(resolution, int) and resolution >= 4 and resolution % 2 == 0):
            raise ValueError(f"NavierStokes2DSolver: resolution must be an even int >= 4, got {resolution!r}.")
        if not (math.isfinite(reynolds) and reynolds > 0):
            raise ValueError(f"NavierStokes2DSolver: reynolds must be > 0, got {reynolds!r}.")
        if not math.isfinite(forcing_amplitude):
            raise ValueError(f"NavierStokes2DSolver: forcing_amplitude must be finite, got {forcing_amplitude!r}.")
        if not isinstance(forcing_wavenumber, int) or not 1 <= forcing_wavenumber < resolution // 2:
            raise ValueError(f"NavierStokes2DSolver: forcing_wavenumber must be an int in [1, N/2), got "
                             f"{forcing_wavenumber!r} for N = {resolution}.")
        if dt is not None and not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"NavierStokes2DSolver: dt must be > 0 or None (adaptive), got {dt!r}.")
        if not (math.isfinite(cfl) and cfl > 0):
            raise ValueError(f"NavierStokes2DSolver: cfl must be > 0, got {cfl!r}.")
        if dealias not in _DEALIAS:
            raise ValueError(f"NavierStokes2DSolver: dealias must be one of {_DEALIAS}, got {dealias!r}.")
        if max_steps is not None and not (isinstance(max_steps, int) and max_steps > 0):
            raise ValueError(f"NavierStokes2DSolver: max_steps must be a positive int or None, got {max_steps!r}.")
        if chunk_size is not None and not (isinstance(chunk_size, int) and chunk_size > 0):
            raise ValueError(f"NavierStokes2DSolver: chunk_size must be a positive int or None, got {chunk_size!r}.")
        self.chunk_size = chunk_size
        self.resolution = resolution
        self.reynolds = float(reynolds)
        self.nu = 1.0 / self.reynolds
        self.forcing_amplitude = float(forcing_amplitude)
        self.forcing_wavenumber = forcing_wavenumber
        self.dt = None if dt is None else float(dt)
        self.cfl = float(cfl)
        self.dealias = dealias
        self.max_steps = max_steps
        # the reference's step bound: h = 1 / N and mu = nu sqrt(max|f|) (nu when unforced)
        self._h = 1.0 / resolution
        forced = self.forcing_amplitude != 0
        self._mu = self.nu * (math.sqrt(abs(self.forcing_amplitude)) if forced else 1.0)
        self._forced = forced
        self._cache: dict[tuple, _Spectral] = {}

    # ------------------------------------------------------------------ spectral set-up
    def grid(self, dtype: torch.dtype = torch.float64, device=None) -> tuple[Tensor, Tensor]:
        """Coordinates ``(X, Y)`` of shape ``[N, N]``, ``X`` varying along dim -2 and ``Y`` along dim -1."""
        t = torch.arange(self.resolution, dtype=torch.float64, device=device) * (2 * math.pi / self.resolution)
        x, y = torch.meshgrid(t, t, indexing="ij")
        return x.to(dtype), y.to(dtype)

    def forcing(self, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """The forcing field (3), ``[N, N]``."""
        _, y = self.grid(torch.float64, device)
        return (-self.forcing_amplitude * torch.cos(self.forcing_wavenumber * y)).to(dtype)

    def _spectral(self, dtype: torch.dtype, device) -> _Spectral:
        key = (dtype, str(device))
        if key in self._cache:
            return self._cache[key]
        n = self.resolution
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        kx = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64, device=device)[:, None]   # [N, 1]
        ky = torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64, device=device)[None, :]  # [1, M]
        lap = kx**2 + ky**2                                          # -Lap -> |k|^2 (Nyquist kept, as the reference)
        inv_lap = torch.where(lap > 0, 1.0 / lap.clamp_min(1.0), torch.zeros_like(lap))
        kx_d = torch.where(kx.abs() == n // 2, torch.zeros_like(kx), kx)  # first derivatives: Nyquist -> 0
        ky_d = torch.where(ky.abs() == n // 2, torch.zeros_like(ky), ky)
        if self.dealias == "two_thirds":
            mask = (kx.abs() <= n / 3) & (ky.abs() <= n / 3)
        else:
            mask = lap <= 2 * (n / 3) ** 2
        mask = mask.to(torch.float64)
        mask[0, 0] = 0.0                                             # the mean is never advected
        ikx, iky = 1j * kx_d, 1j * ky_d
        # w_hat -> de-aliased (w, u_x = psi_y, u_y = -psi_x) with psi_hat = w_hat / |k|^2, eq. (2)
        to_fields = torch.stack([mask * torch.ones_like(lap), mask * iky * inv_lap, -mask * ikx * inv_lap])
        # flux (u_x w, u_y w)_hat -> -div(u w)_hat; the 2/3 rule also truncates the product (its modes
        # above N / 3 hold the aliasing errors); the reference keeps them
        out_mask = mask if self.dealias == "two_thirds" else torch.ones_like(lap)
        neg_div = torch.stack([-ikx * out_mask, -iky * out_mask])
        cols = n // 3 + 1 if self.dealias == "two_thirds" else n // 2 + 1
        f_hat = torch.fft.rfft2(self.forcing(torch.float64, device))[:, :cols] if self._forced else None
        spec = _Spectral(
            ikx=ikx.to(cdtype), iky=iky.to(cdtype), nu_lap=(self.nu * lap).to(dtype), inv_lap=inv_lap.to(dtype),
            cols=cols, to_fields=to_fields[..., :cols].to(cdtype).contiguous(),
            neg_div=neg_div[..., :cols].to(cdtype).contiguous(),
            forcing=None if f_hat is None else f_hat.to(cdtype),
        )
        self._cache[key] = spec
        return spec

    # ------------------------------------------------------------------ physics
    def velocity(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Velocity ``(u_x, u_y) = (psi_y, -psi_x)`` of a vorticity field ``[B, N, N]`` (no de-aliasing)."""
        spec = self._spectral(w.dtype, w.device)
        n = self.resolution
        w_hat = torch.fft.rfft2(w)
        psi_hat = spec.inv_lap * w_hat
        ux = torch.fft.irfft2(spec.iky * psi_hat, s=(n, n))
        uy = torch.fft.irfft2(-spec.ikx * psi_hat, s=(n, n))
        return ux, uy

    def _rhs(self, w_low: Tensor, spec: _Spectral, speed: bool = False):
        """``N(w) = -div(u w) + f`` in Fourier space on the advected columns ``[B, N, cols]`` of ``w_hat``; with
        ``speed=True`` also max|u| per sample (``[B]``, on the device, detached). The 2-D transforms are taken
        as two 1-D passes so that the k_x pass skips the columns the 2/3 rule zeroes (the inverse k_y pass
        zero-pads them; the forward one drops them)."""
        n = self.resolution
        fields_hat = w_low.unsqueeze(1) * spec.to_fields                               # [B, 3, N, cols]
        fields = torch.fft.irfft(torch.fft.ifft(fields_hat, dim=-2), n=n, dim=-1)      # [B, 3, N, N]: w, u_x, u_y
        vel = fields[:, 1:]
        flux = vel * fields[:, :1]                                                     # (u_x w, u_y w)
        flux_hat = torch.fft.fft(torch.fft.rfft(flux, dim=-1)[..., :spec.cols], dim=-2)
        # -div(u w)_hat + f_hat = (-i k_x) F_x + (-i k_y) F_y + f_hat: two passes
        if spec.forcing is None:
            out = torch.mul(flux_hat[:, 0], spec.neg_div[0])
        else:
            out = torch.addcmul(spec.forcing, flux_hat[:, 0], spec.neg_div[0])
        out.addcmul_(flux_hat[:, 1], spec.neg_div[1])
        if not speed:
            return out
        return out, _max_speed(*vel.detach().unbind(1))

    def _inv_cfl_step(self, speed: Tensor) -> Tensor:
        """1 / (the reference's bound min(cfl h / max|u|, cfl h^2 / mu)), per sample (float64, on the device);
        finite for a flow at rest."""
        return (speed.to(torch.float64) * (1.0 / (self.cfl * self._h))).clamp_min_(self._mu / (self.cfl * self._h**2))

    def step_cap(self, t: float, speed0: float | None = None) -> int:
        """The default step limit for time ``t`` (``max_steps=None``): the steps of the CFL bound at a
        reference speed plus those of the diffusive bound. Forced flows: the laminar Kolmogorov-flow speed
        ``A / (nu k_f^2)``, the largest steady speed the forcing sustains (50 at Re 200, A = 4, k_f = 4). The
        turbulent data fields move about 10 x slower (at 64 x 64 they take 335-585 steps to t = 1, against a
        cap of 6,483; 13,129 at 128 x 128), and unevolved random initial fields about 2-3 x slower, so only a
        field far above the data's scale, such as a diverging sampler's iterate, reaches it. Unforced flows
        only slow down: 10 x the initial speed."""
        if self._forced:
            ref = abs(self.forcing_amplitude) / (self.nu * self.forcing_wavenumber**2)
        else:
            ref = 10.0 * (speed0 or 0.0)
        diffusive = self.cfl * self._h**2 / self._mu
        return int(math.ceil(t * ref / (self.cfl * self._h)) + math.ceil(t / diffusive)) + 1

    def _step(self, w_hat: Tensor, dt, rhs1: Tensor, spec: _Spectral) -> Tensor:
        """Eq. (4): one Crank–Nicolson / Heun step; ``dt`` a float or a per-sample ``[B, 1, 1]`` tensor, ``rhs1``
        N(w^n) on the advected columns. Written with the real factors E = (1 - a) / (1 + a) = 2 / (1 + a) - 1
        and dt / (1 + a): the columns without advection only decay, w^{n+1} = E w^n, and the others are
        updated in place; the factors carry no gradient (dt is detached, eq. 5)."""
        c = spec.cols
        d = (spec.nu_lap * (0.5 * dt)).add_(1.0).reciprocal_()                         # 1 / (1 + a)
        w_next = (d * 2.0).sub_(1.0) * w_hat                                           # E w^n
        d_dt = d[..., :c] * dt                                                         # dt / (1 + a)
        explicit = w_next[..., :c]                                                     # E w^n, advected columns
        rhs2 = self._rhs(torch.addcmul(explicit, d_dt, rhs1), spec)                   # N(w~), (4a)
        explicit.addcmul_(d_dt, rhs1 + rhs2, value=0.5)                                # (4b)
        return w_next

    def chunk(self, batch: int, device) -> int:
        """Samples advanced together for a batch on ``device`` (``chunk_size``, or its default)."""
        if self.chunk_size is not None:
            return self.chunk_size
        return batch if torch.device(device).type != "cpu" else max(1, 2**16 // self.resolution**2)

    def solve(self, w0: Tensor, t: float, return_steps: bool = False):
        """Evolve ``w0`` ``[B, N, N]`` for time ``t``; returns ``w(t)`` (and the per-sample step counts, a CPU long tensor ``[B]``)."""
        n = self.resolution
        if w0.dim() != 3 or tuple(w0.shape[1:]) != (n, n):
            raise ValueError(f"NavierStokes2DSolver: expected w0 of shape [B, {n}, {n}], got {list(w0.shape)}.")
        if not w0.is_floating_point() or w0.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"NavierStokes2DSolver: w0 must be float32 or float64, got {w0.dtype}.")
        if not (math.isfinite(t) and t >= 0):
            raise ValueError(f"NavierStokes2DSolver: time must be a finite number >= 0, got {t!r}.")
        if not bool(torch.isfinite(w0).all()):
            raise ValueError(f"NavierStokes2DSolver: w0 is not finite ({_amplitude(w0)}); the initial vorticity "
                             f"must be finite everywhere.")
        batch = w0.shape[0]
        if t == 0 or batch == 0:
            steps = torch.zeros(batch, dtype=torch.long)
            return (w0.clone(), steps) if return_steps else w0.clone()
        spec = self._spectral(w0.dtype, w0.device)
        chunk = self.chunk(batch, w0.device)
        if self.dt is None:
            w_hat, steps = self._solve_adaptive(w0, float(t), spec, chunk)
            out = torch.fft.irfft2(w_hat, s=(n, n))
        else:
            num = self._fixed_steps(float(t))
            outs = [torch.fft.irfft2(self._solve_fixed(torch.fft.rfft2(w0[i:i + chunk]), float(t) / num, num, spec),
                                     s=(n, n)) for i in range(0, batch, chunk)]
            out = torch.cat(outs) if len(outs) > 1 else outs[0]
            steps = torch.full((batch,), num, dtype=torch.long)
        if not torch.isfinite(out).all():
            raise RuntimeError(
                f"NavierStokes2DSolver: the solution is not finite (the flow blew up) from an initial field with "
                f"{_amplitude(w0)}. A field far above the scale of the Navier–Stokes data (|w| up to about 20) comes from its "
                f"caller, e.g. a sampler step that diverged; for a field of the data's scale use the adaptive step "
                f"(dt=None) or a smaller fixed dt.")
        return (out, steps) if return_steps else out

    def _fixed_steps(self, t: float) -> int:
        num = max(1, math.ceil(t / self.dt - 1e-9))
        if self.max_steps is not None and num > self.max_steps:
            raise RuntimeError(f"NavierStokes2DSolver: {num} steps of dt = {self.dt} exceed max_steps = {self.max_steps}.")
        return num

    def _solve_fixed(self, w_hat: Tensor, dt: float, num: int, spec: _Spectral) -> Tensor:
        for _ in range(num):
            w_hat = self._step(w_hat, dt, self._rhs(w_hat[..., :spec.cols], spec), spec)
        return w_hat

    def _solve_adaptive(self, w0: Tensor, t: float, spec: _Spectral, chunk: int):
        """Eq. (5) for a batch ``w0`` ``[B, N, N]``, ``chunk`` samples at a time; returns ``w_hat(t)`` and the
        per-sample step counts (CPU). A sample leaves the running set as soon as it arrives and the next waiting
        one takes its place, so every step advances a full set until the last samples (the step counts of a
        batch differ by tens of percent). The per-sample bookkeeping stays on the device (float64): the host
        reads it only every ``check_every`` steps, to swap arrived samples out and to enforce the step cap; in
        between, an arrived sample takes steps of dt = 0, which leave it exactly as it is."""
        batch, device = w0.shape[0], w0.device
        check_every = 1 if device.type == "cpu" else 16
        cap = self.max_steps
        if cap is None:                                         # one host read
            speed0 = None if self._forced else float(_max_speed(*self.velocity(w0.detach())).max())
            cap = self.step_cap(t, speed0)
        entering = min(chunk, batch)
        active = torch.arange(entering, device=device)         # original indices of the running samples
        w_hat = torch.fft.rfft2(w0[:entering])
        remaining = torch.full((entering,), t, dtype=torch.float64, device=device)
        steps = torch.zeros(entering, dtype=torch.long, device=device)
        done_idx: list[Tensor] = []
        done_w: list[Tensor] = []
        done_steps: list[Tensor] = []
        count = 0
        while active.numel() > 0:
            rhs1, speed = self._rhs(w_hat[..., :spec.cols], spec, speed=True)
            # eq. (5): k_i = ceil(r_i / dt_cfl,i) steps to go at the current bound, dt_i = r_i / k_i; piecewise
            # constant in w0, no gradient; k_i = 0 and dt_i = 0 for an arrived sample
            k = (self._inv_cfl_step(speed) * remaining).ceil_()
            steps += k != 0                                     # NaN counts: a NaN flow meets the cap
            dt = remaining / k.clamp_min_(1.0)
            w_hat = self._step(w_hat, dt.to(spec.nu_lap.dtype).view(-1, 1, 1), rhs1, spec)
            remaining = remaining - dt                          # exactly 0 after the last step (dt = r)
            count += 1
            if count % check_every:
                continue
            if count > cap and int(steps.max()) > cap:
                raise RuntimeError(
                    f"NavierStokes2DSolver: more than max_steps = {cap} steps to t = {t:g} (max speed "
                    f"{float(speed.max()):.3g}, initial field with {_amplitude(w0)}). Such a fast flow comes from an "
                    f"initial field far above the scale of the Navier–Stokes data (|w| up to about 20), e.g. a "
                    f"sampler step that diverged; raise max_steps only for a field that really is this fast.")
            finished = remaining <= 0
            if not bool(finished.any()):
                continue
            done_idx.append(active[finished])
            done_w.append(w_hat[finished])
            done_steps.append(steps[finished])
            keep = ~finished
            active, w_hat, remaining, steps = active[keep], w_hat[keep], remaining[keep], steps[keep]
            start = entering
            entering = min(batch, entering + chunk - active.numel())
            if entering > start:                                # the waiting samples take the free places
                fresh = entering - start
                active = torch.cat([active, torch.arange(start, entering, device=device)])
                w_hat = torch.cat([w_hat, torch.fft.rfft2(w0[start:entering])])
                remaining = torch.cat([remaining, remaining.new_full((fresh,), t)])
                steps = torch.cat([steps, steps.new_zeros(fresh)])
        order = torch.argsort(torch.cat(done_idx))
        w_all = torch.cat(done_w) if len(done_w) > 1 else done_w[0]
        return w_all[order], torch.cat(done_steps)[order].cpu()


def _max_speed(ux: Tensor, uy: Tensor) -> Tensor:
    """max |u| over the grid, per sample ``[B]``."""
    return (ux * ux).addcmul_(uy, uy).amax(dim=(-2, -1)).sqrt()


def _amplitude(w: Tensor) -> str:
    finite = torch.isfinite(w)
    amp = float(w.detach()[finite].abs().max()) if bool(finite.any()) else float("nan")
    extra = "" if bool(finite.all()) else f", {int((~finite).sum())} non-finite values"
    return f"max |w0| = {amp:.3g} (physical vorticity){extra}"


class NavierStokes(Operator):
    """Forward model of the EnKG / InverseBench Navier–Stokes problem: initial vorticity -> subsampled
    vorticity at time ``time``.

    Input ``[B, 1, N, N]``: initial vorticity in the prior's units (physical / ``scale``). Output
    ``[B, 1, N / ds, N / ds]``: ``w(time)[..., ::ds, ::ds]`` in physical units; ``noise`` (default
    ``GaussianNoise(0)``) has its sigma in physical units (the reference uses 0, 1, 2).
    Nonlinear and differentiable (autograd through the solver); derivative-free samplers call it
    under ``torch.no_grad()``. Solver options are those of :class:`NavierStokes2DSolver`.
    """

    linear = False
    differentiable = True

    def __init__(self, resolution: int = 128, time: float = 1.0, downsample: int = 2, scale: float = 10.0,
                 reynolds: float = 200.0, noise: NoiseModel | None = None, dt: float | None = None,
                 cfl: float = 0.5, dealias: str = "two_thirds", forcing_amplitude: float = 4.0,
                 forcing_wavenumber: int = 4, max_steps: int | None = None, chunk_size: int | None = None):
        if not (isinstance(resolution, int) and resolution >= 4 and resolution % 2 == 0):
            raise ValueError(f"NavierStokes: resolution must be an even int >= 4, got {resolution!r}.")
        if not (isinstance(downsample, int) and downsample >= 1 and resolution % downsample == 0):
            raise ValueError(f"NavierStokes: downsample must be a positive int dividing resolution = {resolution}, "
                             f"got {downsample!r} (e.g. 2, 4 or 8).")
        if not (math.isfinite(time) and time > 0):
            raise ValueError(f"NavierStokes: time must be a finite number > 0, got {time!r}.")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"NavierStokes: scale must be > 0 (physical = scale * prior units), got {scale!r}.")
        super().__init__((1, resolution, resolution), noise if noise is not None else GaussianNoise(0.0))
        self.resolution = resolution
        self.time = float(time)
        self.downsample = downsample
        self.scale = float(scale)
        self.solver = NavierStokes2DSolver(resolution, reynolds=reynolds, forcing_amplitude=forcing_amplitude,
                                           forcing_wavenumber=forcing_wavenumber, dt=dt, cfl=cfl,
                                           dealias=dealias, max_steps=max_steps, chunk_size=chunk_size)
        self.last_steps: Tensor | None = None   # per-sample solver steps of the last call (cost accounting)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        m = self.resolution // self.downsample
        return (1, m, m)

    def forward(self, x: Tensor) -> Tensor:
        x = self.check_input(x)
        w_t, steps = self.solver.solve(self.scale * x[:, 0], self.time, return_steps=True)
        self.last_steps = steps
        ds = self.downsample
        return w_t[:, None, ::ds, ::ds].contiguous()

    def extra_repr(self) -> str:
        s = self.solver
        return (f"resolution={self.resolution}, time={self.time}, downsample={self.downsample}, scale={self.scale}, "
                f"reynolds={s.reynolds}, dt={'adaptive' if s.dt is None else s.dt}, dealias={s.dealias}")


def relative_l2(x_hat: Tensor, x_true: Tensor) -> Tensor:
    """Per-sample relative L2 error ``||x_hat - x_true|| / ||x_true||`` (``[B]``), the Navier–Stokes metric of
    EnKG / InverseBench. ``x_true`` may have batch 1 and broadcast against ``x_hat`` (particles vs truth)."""
    if x_hat.dim() < 1 or x_true.dim() != x_hat.dim():
        raise ValueError(f"relative_l2: x_hat {list(x_hat.shape)} and x_true {list(x_true.shape)} must have the same rank.")
    x_true = x_true.expand_as(x_hat)
    diff = (x_hat - x_true).reshape(x_hat.shape[0], -1).norm(dim=1)
    ref = x_true.reshape(x_true.shape[0], -1).norm(dim=1)
    return diff / ref.clamp_min(torch.finfo(ref.dtype).tiny)
