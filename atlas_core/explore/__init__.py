"""Explore: a finished run as a value you open and question (DESIGN.md section 10).

``Atlas.open(run_dir)`` gives the samples as a table, each level's cells, icons and exemplars,
and the questions: ``select`` (a polygon and filters), ``export``, ``neighbours`` (cosine on
the stored activations), ``locate`` (a new image in the layout, by the reduce stage's own
placement), ``render`` (an icon for any direction, with the run's recipe). The command line,
the server and the notebook are thin over it.
"""

from atlas_core.explore.atlas import FORMATS, Atlas
from atlas_core.explore.geometry import Where, parse_polygon, points_in_polygon
from atlas_core.explore.locate import Located, Position

__all__ = [
    "FORMATS",
    "Atlas",
    "Located",
    "Position",
    "Where",
    "parse_polygon",
    "points_in_polygon",
]
