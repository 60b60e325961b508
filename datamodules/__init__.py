"""LightningDataModules: FFHQ / image folders and manifests, GRMHD black holes, Navier-Stokes."""
