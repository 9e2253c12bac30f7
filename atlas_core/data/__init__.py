"""Data: image sources frozen into an input manifest, the decoding policy, and the sharding plan."""

from atlas_core.data.decode import Decoded, DecodePolicy, Status, decode
from atlas_core.data.labels import PHOTO_LABELS, file_labels, imagenet_class_names
from atlas_core.data.plan import ShardPlan, plan_shards
from atlas_core.data.sources import (
    InputManifest,
    builtin_photos,
    file_list_manifest,
    folder_labels,
    folder_manifest,
    photo_crops,
)
from atlas_core.data.uri import uri_path, uri_text

__all__ = [
    "PHOTO_LABELS",
    "DecodePolicy",
    "Decoded",
    "InputManifest",
    "ShardPlan",
    "Status",
    "builtin_photos",
    "decode",
    "file_labels",
    "file_list_manifest",
    "folder_labels",
    "folder_manifest",
    "imagenet_class_names",
    "photo_crops",
    "plan_shards",
    "uri_path",
    "uri_text",
]
