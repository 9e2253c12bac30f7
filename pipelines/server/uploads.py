"""Request bodies and uploaded images: bounded in bytes and time, decoded by the data reader's
own policy (``atlas_core.data.decode``), refused with a status that names the problem.

An image arrives as the raw body (any ``image/*`` or ``application/octet-stream`` type) or as
the one file of a ``multipart/form-data`` body. Statuses: 413 too many bytes (said from
Content-Length before reading, else once the count passes the limit) or too many pixels (a
decompression bomb: the decoder reads the header's size before any pixel); 415 not an image
the decoder knows; 422 truncated, empty or too small; 400 a malformed multipart body; 408 a
body that does not arrive within the time limit.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncGenerator

from fastapi import HTTPException, Request
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from atlas_core.data.decode import DecodePolicy, Status, decode_bytes

# decode_bytes sets PIL's process-wide pixel limit and a warnings filter while it runs: one
# decode at a time, so two threads never see each other's settings.
_DECODE_LOCK = threading.Lock()
_MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file
IMAGE_TYPES = ("image/", "application/octet-stream")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most ``limit`` bytes, arriving within ``timeout_s`` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(413, f"request body over the limit of {limit} bytes")

    async def collect() -> bytes:
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise HTTPException(413, f"request body over the limit of {limit} bytes")
        return bytes(buf)

    try:
        return await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError:
        raise HTTPException(
            408, f"the request body did not arrive within {timeout_s:g} s"
        ) from None


async def read_image_bytes(request: Request, limit: int, timeout_s: float) -> bytes:
    """The uploaded file's bytes: the raw body, or the one file of a multipart body."""
    kind = request.headers.get("content-type", "").lower()
    if kind.startswith("multipart/form-data"):
        body = await read_body(request, limit + _MULTIPART_SLACK, timeout_s)
        data = await _one_file(request, body)
    elif kind.startswith(IMAGE_TYPES) or not kind:
        data = await read_body(request, limit, timeout_s)
    else:
        raise HTTPException(
            415,
            f"upload an image as the body (image/* or application/octet-stream) or as "
            f"multipart/form-data, not {kind.split(';')[0]!r}",
        )
    if len(data) > limit:
        raise HTTPException(413, f"image file over the limit of {limit} bytes")
    return data


async def _one_file(request: Request, body: bytes) -> bytes:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(
        request.headers, stream(), max_files=1, max_fields=4, max_part_size=4096
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPException(400, f"malformed multipart body: {exc.message}") from None
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if len(files) != 1:
        raise HTTPException(400, "a multipart upload carries exactly one file (the image)")
    try:
        return await files[0].read()
    finally:
        await form.close()


_STATUS = {
    Status.DECOMPRESSION_BOMB: (413, "too many pixels (a decompression bomb?)"),
    Status.UNIDENTIFIED: (415, "not an image the server can read"),
    Status.TRUNCATED: (422, "truncated or empty image"),
    Status.TOO_SMALL: (422, "image too small"),
}


def decode_upload(data: bytes, max_pixels: int) -> Image.Image:
    """The upload as an RGB image, decoded by the data reader's policy; HTTPException with
    the status and the decoder's reason otherwise (runs on a worker thread)."""
    with _DECODE_LOCK:
        d = decode_bytes(data, DecodePolicy(max_pixels=max_pixels))
    if d.image is None:
        status, what = _STATUS.get(d.status, (422, "not a usable image"))
        detail = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the upload", d.detail)  # no addresses
        raise HTTPException(status, f"{what}: {detail}")
    return d.image
