"""Network architectures whose state dicts match the public diffusion checkpoints diffinv loads.

* :class:`UNetModel`, :func:`create_adm_model`: the ADM UNet of guided-diffusion / DPS and the
  unconditional UNet of latent-diffusion (epsilon prediction from raw DDPM timesteps).
* :class:`DhariwalUNet`, :class:`SongUNet`, :class:`EDMPrecond`, :class:`VPPrecond`: the EDM family
  used by InverseBench; the preconditioners are denoisers ``D(x, sigma)``.
* :class:`VQFirstStage`: the VQ-f4 autoencoder of latent diffusion.

Load weights with :func:`diffinv.checkpoints.load_state_dict_into`.
"""

from .adm_unet import UNetModel, create_adm_model, timestep_embedding
from .edm import DhariwalUNet, EDMPrecond, SongUNet, VPPrecond
from .vq import VQFirstStage

__all__ = ["UNetModel", "create_adm_model", "timestep_embedding", "DhariwalUNet", "SongUNet", "EDMPrecond",
           "VPPrecond", "VQFirstStage"]
