"""WebDataset-style tar shards: listed once into the manifest, then streamed member by member.

A manifest entry of a tar member is the URI ``tar://<member>::<tar path or URL>`` (fsspec's
chained-URL form), each part a URI text (:mod:`atlas_core.data.uri`: a member name that is not
UTF-8 or holds a ``:`` is escaped, so the ``::`` that ends it is never part of it). Nothing is
ever extracted to disk: a worker opens each tar of its rows in stream mode (``r|*``) and decodes
the wanted members as they pass. Members whose names would escape the archive (absolute, or
with ``..``) are classified, never read; links and directories are not listed; a member over
the policy's byte limit is classified from its header's size, never read.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import PurePosixPath

import fsspec
import numpy as np

from atlas_core.data.decode import Decoded, DecodePolicy, Status, decode_bytes
from atlas_core.data.sources import IMAGE_EXTENSIONS, InputManifest
from atlas_core.data.uri import uri_path, uri_text
from atlas_core.errors import ConfigError

PREFIX = "tar://"


def member_uri(member: str, tar: str) -> str:
    """The URI text of a member (its name as tarfile gives it) of the archive ``tar``."""
    return f"{PREFIX}{uri_text(member, reserved=':')}::{uri_text(tar)}"


def split_uri(uri: str) -> tuple[str, str]:
    """``tar://member::path`` -> (member, path), each as tarfile and fsspec take it."""
    member, _, tar = uri.removeprefix(PREFIX).partition("::")
    return uri_path(member), uri_path(tar)


def _escapes(name: str) -> bool:
    p = PurePosixPath(name)
    return p.is_absolute() or ".." in p.parts


def tar_manifest(
    tars: list[str], *, extensions: tuple[str, ...] = IMAGE_EXTENSIONS
) -> InputManifest:
    """Every image-like regular member of every tar, in archive order (tars sorted).

    A tar truncated mid-way contributes the members whose headers could be read.
    """
    if not tars:
        raise ConfigError("tars", tars, fix="give a folder or glob with .tar shards.")
    exts = tuple(e.lower() for e in extensions)
    uris: list[str] = []
    for tar in sorted(tars):
        with fsspec.open(tar, "rb") as f:
            try:
                with tarfile.open(fileobj=f, mode="r|*") as tf:
                    for m in tf:
                        if m.isfile() and m.name.lower().endswith(exts):
                            uris.append(member_uri(m.name, tar))
            except (tarfile.TarError, EOFError, OSError):
                pass  # truncated: keep what was listed; decoding classifies the rest
    if not uris:
        raise ConfigError("tars", tars, fix="the tar shards hold no image members.")
    return InputManifest(
        uris=np.array(uris, dtype=object), crops=np.full((len(uris), 4), -1, np.int32), root=None
    )


def stream_members(uris: list[str], policy: DecodePolicy) -> Iterator[tuple[int, Decoded]]:
    """Decode the members named by ``uris`` (tar:// URIs), reading each tar once, in order.

    Yields (index into ``uris``, Decoded) for every entry, including those that could not be
    read (escaping names, members lost to a truncated archive).
    """
    by_tar: dict[str, dict[str, list[int]]] = {}
    for i, uri in enumerate(uris):
        member, tar = split_uri(uri)
        by_tar.setdefault(tar, {}).setdefault(member, []).append(i)
    for tar, wanted in by_tar.items():
        seen: set[str] = set()
        for member in [m for m in wanted if _escapes(m)]:
            seen.add(member)
            for i in wanted[member]:
                yield i, Decoded(Status.OUTSIDE_ROOT, detail=f"member {member!r} escapes the tar")
        detail, broken = "member not found in the archive", False
        try:
            with fsspec.open(tar, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tf:
                for m in tf:
                    if m.name in wanted and m.name not in seen and m.isfile():
                        d = _member(tf, m, policy)  # before seen: a read that fails is
                        seen.add(m.name)  # classified below with the rest of the archive
                        for i in wanted[m.name]:
                            yield i, d
        except Exception as exc:  # whatever the archive's reader raises: these rows' status
            detail, broken = f"archive truncated or unreadable: {type(exc).__name__}: {exc}", True
        for member, rows in wanted.items():
            if member not in seen:
                status = Status.TRUNCATED if broken else Status.MISSING
                for i in rows:
                    yield i, Decoded(status, detail=detail)


def _member(tf: tarfile.TarFile, m: tarfile.TarInfo, policy: DecodePolicy) -> Decoded:
    """One member decoded; one over ``policy.max_bytes`` (its header's size) is never read."""
    if m.size > policy.max_bytes:
        return Decoded(
            Status.TOO_LARGE, detail=f"{m.size} bytes, over the limit of {policy.max_bytes} bytes"
        )
    fobj = tf.extractfile(m)
    return decode_bytes(fobj.read() if fobj is not None else b"", policy)
