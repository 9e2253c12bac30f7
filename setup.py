"""The package's layout where pyproject.toml cannot say it: the config tree ``conf/`` ships as
the package ``atlas_conf`` (Hydra reads it as ``pkg://atlas_conf``), and building fetches the
viewer's pinned Leaflet (checked against its sha512) into the package when it is not there."""

import runpy
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithLeaflet(build_py):
    def run(self) -> None:
        runpy.run_path(str(HERE / "atlas_core" / "compose" / "vendor.py"))["install"]()
        super().run()


setup(
    packages=[*find_packages(include=["atlas_core*", "pipelines*"]), "atlas_conf"],
    package_dir={"atlas_conf": "conf"},
    cmdclass={"build_py": BuildWithLeaflet},
)
