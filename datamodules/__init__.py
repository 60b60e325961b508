"""LightningDataModules: FFHQ / image folders and manifests, GRMHD black holes, Navier-Stokes."""
from .base import InverseProblemDataModule
from .blackhole import BlackHoleDataModule
from .images import ImageFolderDataModule, ImageManifestDataModule
from .navier_stokes import NavierStokesDataModule

__all__ = ["InverseProblemDataModule", "NavierStokesDataModule", "BlackHoleDataModule", "ImageFolderDataModule",
           "ImageManifestDataModule"]
