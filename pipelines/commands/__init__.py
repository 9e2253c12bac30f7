"""What a user runs: ``atlas`` (``main``, the Hydra entry point, and ``cli``), the
runner (``run``), sweeps and schedules (``sweep``), ``atlas verify``, ``atlas serve`` and the
index of runs."""
