"""No host-device synchronisation inside a sampler's steps.

On a GPU every ``bool(t)``, ``t.item()``, ``float(t)`` or data-dependent shape (boolean-mask indexing, ``nonzero``)
of a device tensor makes the host wait for all queued kernels: one stall per network call in a sampling loop.

The CPU test runs each sampler with its data on PyTorch's ``meta`` device: tensors there have shapes but no values,
so every read of a device value on the host (the Python conversions below, and the data-dependent shapes PyTorch
computes in C++) fails, while the host-side schedule tensors (sigma grids, step sizes) convert freely, exactly as
on a GPU. The conversions are counted with the call site named; the count must be zero for every pixel sampler.
The CUDA test runs the same samplers under ``torch.cuda.set_sync_debug_mode("error")`` (skipped without a GPU).
"""
from __future__ import annotations

import traceback

import pytest
import torch

from test_sampler_contract import FAST_KWARGS, NAMES, SAMPLERS, _runnable

# Samplers that decide on the host by design, once per iteration (the reason is their algorithm's stopping rule or
# optimiser, not an oversight); each of them is still run by the other tests.
HOST_DECISIONS = {
    "ReSample": "stops its hard data-consistency optimisation when every sample has converged (the reference's rule)",
    "EKI": "stops on the discrepancy principle (Iglesias 2016), a host decision per iteration",
    "Tikhonov": "L-BFGS decides its line search on the host",
    "PriorSamples": "draws the mixture component of each prior sample with a host multinomial (no steps to sync in)",
}
# once-per-call estimates that read device values before the first step: given explicitly here
SETUP_VALUES = {"ULA": {"lipschitz": 100.0}, "SKRock": {"lipschitz": 100.0}}
CONVERSIONS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist")
PIXEL = [n for n in NAMES if n not in HOST_DECISIONS]


class HostReads:
    """Counts host reads of non-CPU tensors (a device sync on an accelerator), naming the first call site."""

    def __init__(self):
        self.count, self.sites, self._saved = 0, [], {}

    def __enter__(self):
        for name in CONVERSIONS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def counted(t, *args, _original=original, _name=name, **kwargs):
                if t.device.type != "cpu":
                    self.count += 1
                    frame = traceback.extract_stack()[-2]
                    self.sites.append(f"Tensor.{_name} at {frame.filename.rsplit('/', 2)[-2:]}:{frame.lineno}")
                    raise RuntimeError(f"host read of a {t.device.type} tensor: {self.sites[-1]}")
                return _original(t, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        return False


def _on(device, name):
    prior, op, y, _ = _runnable(name)
    return prior.to(device), op.to(device), y.to(device)


def _make(name):
    return SAMPLERS[name](**{**FAST_KWARGS.get(name, {}), **SETUP_VALUES.get(name, {})})


def _run_steps(sampler, y, op, prior, generator):
    """The sampler's own work without the contract's one final finiteness check (once per call, after the steps)."""
    sampler.check(op, prior)
    return sampler._sample(y, op, prior, 3, generator, None)


@pytest.mark.parametrize("name", PIXEL)
def test_no_host_reads_of_device_values_in_sampling(name):
    prior, op, y = _on("meta", name)
    sampler = _make(name)
    with HostReads() as reads:
        try:
            out = _run_steps(sampler, y, op, prior, torch.Generator().manual_seed(0))
        except (RuntimeError, NotImplementedError) as err:   # NotImplementedError: a data-dependent shape (nonzero)
            where = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in traceback.extract_tb(err.__traceback__)
                     if "diffinv" in f.filename][-1:]
            pytest.fail(f"{name} reads device values on the host ({reads.count} conversions; {err}; last diffinv "
                        f"frame {where}): a synchronisation per call on a GPU. Keep schedules on the host and use "
                        f"torch.where / diffinv.checks.require instead of branching on device values.")
    assert reads.count == 0
    assert out.device.type == "meta" and out.shape[0] == 3 * y.shape[0]


def test_the_detector_catches_a_sync():
    """A sampler that branches on a device value once per step is caught (the check has power)."""
    from diffinv.samplers import DPS

    class _Branching(DPS):
        def _sample(self, y, operator, prior, num_samples, generator, callback):
            def every_step(i, n, x):
                if x.abs().max() > 1e6:       # a NaN/overflow guard written the syncing way
                    raise FloatingPointError
            return super()._sample(y, operator, prior, num_samples, generator, every_step)

    prior, op, y = _on("meta", "DPS")
    with HostReads() as reads, pytest.raises(RuntimeError, match="host read of a meta tensor"):
        _run_steps(_Branching(**FAST_KWARGS["DPS"]), y, op, prior, torch.Generator().manual_seed(0))
    assert reads.count == 1 and "test_host_syncs.py" in reads.sites[0]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (sync debug mode is CUDA-only); the "
                    "meta-device test above covers the same reads on the CPU")
@pytest.mark.parametrize("name", PIXEL)
def test_no_cuda_synchronisation_in_sampling(name):
    prior, op, y = _on("cuda", name)
    sampler = _make(name)
    generator = torch.Generator("cuda").manual_seed(0)
    _run_steps(_make(name), y, op, prior, generator)       # warm-up: lazy set-up (SVDs, caches) may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _run_steps(sampler, y, op, prior, generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
