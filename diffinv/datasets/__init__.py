"""Datasets without Lightning: reading image files and scientific arrays, and generating synthetic data.

* :mod:`.image_files`: image folders and path manifests (PIL) -> ``[C, H, W]`` in ``[-1, 1]``;
* :mod:`.array_files`: InverseBench LMDB stores, ``.npy`` / HDF5 / FITS black-hole images, peak
  normalisation, spectral resampling of periodic fields;
* :mod:`.blackhole_synthetic`: seeded synthetic black-hole images from ehtim's geometric models;
* :mod:`.navier_stokes`: the Navier–Stokes training-field generator (``generate_dataset``,
  ``read_manifest``, ``load_split``);
* :mod:`.common`: training-set wrappers and atomic writes.

Nothing heavy is imported here (ehtim loads only when a black-hole generator or FITS file is used).
"""
from .array_files import LMDBArrays, peak_normalize, spectral_resample, write_lmdb
from .blackhole_synthetic import SyntheticBlackHoleConfig, SyntheticBlackHoles
from .image_files import list_images, load_image, read_path_list

__all__ = ["LMDBArrays", "peak_normalize", "spectral_resample", "write_lmdb", "SyntheticBlackHoleConfig",
           "SyntheticBlackHoles", "list_images", "load_image", "read_path_list"]
