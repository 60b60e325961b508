"""The faster defaults measured for the CPU (issue 15): channels-last networks in eval mode, and EnKG's network
chunk chosen per device. Both must leave the results as they were (to the tolerance of the checkpoint fixtures)."""
from __future__ import annotations

import torch

from diffinv.priors import load_prior
from diffinv.samplers.enkg import NETWORK_CHUNK, EnKG
from predict_data import ROOT


def _conv_weights(prior):
    return [m.weight for m in prior.denoiser.modules() if isinstance(m, torch.nn.Conv2d)]


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
    assert out.is_contiguous()                                  # callers may .view() it
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
