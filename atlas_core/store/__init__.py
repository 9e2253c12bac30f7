"""Store: the run store's schema, its reader and writer, and commit markers.

The only package of atlas_core that imports zarr. Format: docs/run-store.md.
"""

from atlas_core.store.icon_cache import IconCache, icon_keys
from atlas_core.store.markers import Markers, fingerprint
from atlas_core.store.run_store import FORMAT, FORMAT_VERSION, RunStore

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "IconCache",
    "Markers",
    "RunStore",
    "fingerprint",
    "icon_keys",
]
