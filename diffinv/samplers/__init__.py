"""Posterior samplers (``docs/conventions.md#sampler-contract``), one module per algorithm. Importing this
package registers every algorithm in ``SAMPLERS`` (name -> class)."""
from .base import SAMPLERS, Sampler, posterior_stats, repeat_measurement
from .baselines import PriorSamples, Tikhonov
from .daps import DAPS
from .ddnm import DDNM
from .ddrm import DDRM
from .diffpir import DiffPIR
from .dpg import DPG
from .dps import DPS
from .dps_gsg import DPSGSG
from .eki import EKI
from .ehtim_rml import EhtimRML
from .enkg import EnKG
from .fps_smc import FPSSMC
from .latent_dps import LatentDPS
from .lgd import LGD
from .mcgdiff import MCGdiff
from .mcmc import SKRock, ULA
from .pigdm import PiGDM
from .pnp_dm import PnPDM
from .posterior_sde import PosteriorSDE
from .psld import PSLD
from .red_diff import REDDiff
from .resample import ReSample
from .scg import SCG
from .tds import TDS

__all__ = ["SAMPLERS", "Sampler", "posterior_stats", "repeat_measurement", "DAPS", "DDNM", "DDRM", "EKI", "EhtimRML",
           "PriorSamples", "Tikhonov", "DiffPIR", "DPG", "DPS", "DPSGSG", "EnKG", "FPSSMC", "MCGdiff", "TDS", "LatentDPS",
           "LGD", "SKRock", "ULA", "PiGDM", "PnPDM", "PosteriorSDE", "PSLD", "REDDiff", "ReSample", "SCG"]
