"""The config tree, shipped in the package as ``atlas_conf`` (Hydra: ``pkg://atlas_conf``)."""
