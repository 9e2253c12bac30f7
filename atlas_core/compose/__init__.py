"""Compose: tiles of every grid level drawn from the icons, the reference canvas, the viewer."""

from atlas_core.compose.canvas import compose_canvas
from atlas_core.compose.viewer import data_script, page_html, safe_json, static_files

__all__ = ["compose_canvas", "data_script", "page_html", "safe_json", "static_files"]
