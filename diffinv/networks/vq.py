"""VQ-regularised first stage of latent diffusion (Rombach et al. 2022, Sec. 3.1; VQGAN of Esser et
al. 2021), state-dict compatible with ``first_stage_model.*`` of the CompVis LDM checkpoints
(``ldm.models.autoencoder.VQModelInterface``), e.g. the VQ-f4 model of ``ffhq-ldm-vq-4``.

The encoder, decoder and quantiser are the modules of the ``taming`` package (the code the LDM
checkpoints were trained with), so their numerics match by construction: GroupNorm(32, eps 1e-6)
without float cast, swish, down-sampling by right/bottom zero padding then a stride-2 conv3x3
with padding 0, nearest up-sampling then conv3x3, single-head attention with separate 1x1 q/k/v.

Conventions (as in LDM): latents are the *unquantised* ``h = quant_conv(encoder(x))``;
quantisation happens in :meth:`VQFirstStage.decode`. Images live in ``[-1, 1]``.
"""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn
try:
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import VectorQuantizer2
except ImportError as err:  # a plain `pip install diffinv` cannot bring it (see requirements-no-deps.txt)
    raise ImportError(f"diffinv's VQ first stage needs the taming package of taming-transformers-rom1504, installed "
                      f"without its dependencies: pip install --no-deps -r requirements-no-deps.txt (in a clone; "
                      f"the file holds the pin) ({type(err).__name__}: {err}).") from err


class VQFirstStage(nn.Module):
    """``encode(x) -> h`` and a differentiable ``decode(h) -> x`` of the LDM VQ autoencoder.

    Args:
        embed_dim: latent channels (3 for VQ-f4).
        n_embed: codebook size (8192 for the FFHQ VQ-f4 model).
        ddconfig: the encoder/decoder config of the LDM YAML (``double_z`` must be False).
        beta: commitment weight of the quantiser; only used by the training loss, kept for fidelity.

    State-dict keys: ``encoder.*``, ``decoder.*``, ``quantize.embedding.weight``, ``quant_conv.*``,
    ``post_quant_conv.*`` (the LDM checkpoint's ``first_stage_model.`` prefix removed).
    """

    def __init__(self, embed_dim: int, n_embed: int, ddconfig: dict, beta: float = 0.25):
        super().__init__()
        ddconfig = dict(ddconfig)
        if ddconfig.get("double_z", False):
            raise ValueError("ddconfig['double_z']=True is a KL-autoencoder setting; "
                             "a VQ first stage needs double_z=False")
        for flag in ("give_pre_end", "tanh_out"):
            if ddconfig.get(flag, False):
                raise ValueError(f"ddconfig[{flag!r}]=True is not supported by VQFirstStage; remove it from the config")
        if ddconfig.get("attn_type", "vanilla") != "vanilla":
            raise ValueError(f"ddconfig['attn_type']={ddconfig['attn_type']!r}: only 'vanilla' attention is supported")
        for key in ("give_pre_end", "tanh_out", "attn_type", "use_linear_attn"):
            ddconfig.pop(key, None)
        self.embed_dim, self.n_embed, self.ddconfig = embed_dim, n_embed, ddconfig
        with contextlib.redirect_stdout(io.StringIO()):    # taming's Decoder prints the latent shape
            self.encoder = Encoder(**ddconfig)
            self.decoder = Decoder(**ddconfig)
        # remap=None: indices address the full codebook, and there is no "used" buffer.
        self.quantize = VectorQuantizer2(n_embed, embed_dim, beta=beta, remap=None, sane_index_shape=False)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``[B, C, H, W]`` in [-1, 1] -> unquantised latent ``h = quant_conv(encoder(x))``."""
        return self.quant_conv(self.encoder(x))

    def quantize_latent(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest-codebook quantisation (van den Oord et al. 2017, Eq. 1 and 2).

        Returns ``z_q`` (straight-through: the codebook vectors in value, ``d z_q / d h = I``) and the
        code indices ``[B, H, W]`` (int64). Distances are ``|z|^2 + |e|^2 - 2 z.e`` as in taming.
        """
        z_q, _, (_, _, indices) = self.quantize(h)
        return z_q, indices.reshape(h.shape[0], h.shape[2], h.shape[3])

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """Latent -> image: quantise (unless ``force_not_quantize``), ``post_quant_conv``, decoder.

        Differentiable with respect to ``h`` through the straight-through estimator.
        """
        z = h if force_not_quantize else self.quantize_latent(h)[0]
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``decode(encode(x))``."""
        return self.decode(self.encode(x))
