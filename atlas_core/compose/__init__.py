"""Compose: the atlas canvas (one icon per kept cell, y up) and the static viewer page."""

from atlas_core.compose.canvas import compose_canvas
from atlas_core.compose.viewer import viewer_html

__all__ = ["compose_canvas", "viewer_html"]
