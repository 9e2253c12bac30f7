"""Store: a run's location, the run store's nodes, its one write path, and commit markers.

The only package of atlas_core that imports zarr. Format: docs/run-store.md.
"""

from atlas_core.store.icon_cache import CachedGroup, IconCache, group_key
from atlas_core.store.location import RunLocation
from atlas_core.store.markers import Markers, fingerprint
from atlas_core.store.nodes import GridArrays
from atlas_core.store.run_store import FORMAT, FORMAT_VERSION, RunStore

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CachedGroup",
    "GridArrays",
    "IconCache",
    "Markers",
    "RunLocation",
    "RunStore",
    "fingerprint",
    "group_key",
]
