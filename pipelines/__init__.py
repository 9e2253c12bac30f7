"""Pipelines: orchestration only. One thin module per stage, ``run`` to execute them in order,
``ray_ops`` holding every Ray call, ``settings`` to turn the config into frozen dataclasses, and
``main`` the single Hydra entry point (console script ``atlas``)."""
