"""The faster defaults measured for the CPU (issue 15): channels-last networks in eval mode, and EnKG's network
chunk chosen per device. Both must leave the results as they were (to the tolerance of the checkpoint fixtures)."""
from __future__ import annotations

import torch

from diffinv.priors import PixelPrior, load_prior
from diffinv.priors.loading import build
from diffinv.samplers.enkg import NETWORK_CHUNK, EnKG
from predict_data import ROOT, tiny_network


def _conv_weights(prior):
    """The convolution kernels (every 4-D parameter: the networks use their own Conv2d modules)."""
    weights = [p for p in prior.denoiser.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
    assert weights, "no convolution kernels found: the layout checks below would be vacuous"
    return weights


def test_channels_last_on_cpu_keeps_the_outputs_and_only_in_eval_mode():
    prior = load_prior(ROOT / "configs/prior/ns64.yaml")
    x = torch.randn((4, *prior.event_shape), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.1, 1.0, 5.0, 40.0])
    prior.channels_last_on_cpu = False
    with torch.no_grad():
        reference = prior.denoise(x, sigma)
    assert all(w.is_contiguous() for w in _conv_weights(prior))
    prior.channels_last_on_cpu = True
    with torch.no_grad():
        out = prior.denoise(x, sigma)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(prior))
    rgb = PixelPrior(build(tiny_network(3, 16))).eval()         # channels > 1: the layouts differ in memory
    assert rgb.denoise(torch.randn(2, 3, 16, 16), torch.ones(2)).is_contiguous()   # callers may .view() it
    # the checkpoint fixtures' tolerance; measured 4e-6 (a different summation order in the convolutions)
    assert float((out - reference).abs().max()) < 1e-4

    trained = load_prior(ROOT / "configs/prior/ns64.yaml").train()
    trained.denoise(x, sigma)
    assert all(w.is_contiguous() for w in _conv_weights(trained))


def test_enkg_network_chunk_is_the_devices_measured_one():
    x = torch.zeros(40, 3)
    assert [len(c) for c in EnKG()._chunks(x)] == [16, 16, 8] == [min(NETWORK_CHUNK["cpu"], 40 - i)
                                                                    for i in range(0, 40, 16)]
    assert [len(c) for c in EnKG(batch_size=None)._chunks(x)] == [40]
    assert [len(c) for c in EnKG(batch_size=32)._chunks(x)] == [32, 8]
    assert NETWORK_CHUNK["cuda"] == 64                          # the reference's value on its GPUs


def test_gpu_check_timing_code_runs_on_the_cpu():
    """The GPU check cannot run here; its EnKG timing code is run on the CPU with the small shipped network, so a
    change of EnKG's internals that breaks it fails here rather than on the first GPU machine."""
    import sys
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_check

    gpu_check.DEVICE = "cpu"
    row = gpu_check.enkg_step(2, config="configs/prior/ns64.yaml")
    assert len(row) == 2 and all(v > 0 for v in row.values())
