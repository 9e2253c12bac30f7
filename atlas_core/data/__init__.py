"""Data: image sources frozen into an input manifest, the decoding policy, and the sharding plan."""

from atlas_core.data.decode import Decoded, DecodePolicy, Status, decode
from atlas_core.data.plan import ShardPlan, plan_shards
from atlas_core.data.sources import (
    InputManifest,
    builtin_photos,
    file_list_manifest,
    folder_labels,
    folder_manifest,
    photo_crops,
)

__all__ = [
    "DecodePolicy",
    "Decoded",
    "InputManifest",
    "ShardPlan",
    "Status",
    "builtin_photos",
    "decode",
    "file_list_manifest",
    "folder_labels",
    "folder_manifest",
    "photo_crops",
    "plan_shards",
]
