"""Image and video work, all blocking (run it in a thread): dimensions, blurhash,
thumbnails with Pillow, and a video's poster frame with ffmpeg when it is installed.

Pillow's decompression-bomb guard is on: an image is never decoded when its
header announces more than `max_pixels` pixels (checked before decoding), and
Pillow's own limit is set to the same number.

Pillow is imported by the first image handled, not at start-up: the server answers
sooner after a restart (issue 16 asks for half a second), and most starts handle no image
for a while.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import IO, TYPE_CHECKING, Any

from plugins.media.config import ThumbnailSize

if TYPE_CHECKING:
    from PIL import Image

THUMBNAIL_SOURCES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
DECODED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP")
VIDEO_TYPES = frozenset({"video/mp4", "video/webm", "video/quicktime", "video/x-matroska", "video/ogg"})

FFMPEG_TIMEOUT_S = 30


class TooManyPixels(Exception):
    pass


class NotAnImage(Exception):
    pass


@dataclass(frozen=True)
class MediaInfo:
    width: int | None = None
    height: int | None = None
    duration_ms: int | None = None
    blurhash: str | None = None
    poster: bytes | None = None  # a JPEG frame of a video


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    content_type: str
    width: int
    height: int


_pixel_limit: int | None = None


def set_pixel_limit(max_pixels: int) -> None:
    """Pillow's own guard, applied when an image is opened (Pillow is not imported yet)."""
    global _pixel_limit
    _pixel_limit = max_pixels


def _open(src: IO[bytes], max_pixels: int) -> Image.Image:
    from PIL import Image

    if _pixel_limit is not None:
        Image.MAX_IMAGE_PIXELS = _pixel_limit
    src.seek(0)
    try:
        # Only the four formats thumbnails are made of, whatever the bytes look like: the
        # others' decoders (EPS through Ghostscript, TIFF, PSD...) are attack surface for
        # no gain (Synapse's CVE-2024-53863).
        im = Image.open(src, formats=DECODED_FORMATS)
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise NotAnImage(str(e)) from None
    if im.width * im.height > max_pixels:
        raise TooManyPixels(f"{im.width}x{im.height} is over the limit of {max_pixels} pixels")
    return im


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """Width and height as displayed (EXIF orientations 5-8 swap them)."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    return (im.height, im.width) if orientation in (5, 6, 7, 8) else (im.width, im.height)


def _decoded(im: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Decode (cheaply for JPEG: DCT scaling to about the target), upright, in RGB(A)."""
    if im.format == "JPEG":
        im.draft("RGB", target)
    from PIL import ImageOps

    out = ImageOps.exif_transpose(im)
    if out.mode not in ("RGB", "RGBA"):
        has_alpha = out.mode in ("LA", "PA") or (out.mode == "P" and "transparency" in out.info)
        out = out.convert("RGBA" if has_alpha else "RGB")
    return out


def image_info(src: IO[bytes], max_pixels: int) -> MediaInfo:
    """Dimensions and a blurhash of an image (decoded at a small size only)."""
    im = _open(src, max_pixels)
    width, height = _oriented_size(im)
    try:
        small = _decoded(im, (64, 64))
        small.thumbnail((32, 32))
        blur: str | None = blurhash(small.convert("RGB"))
    except Exception:
        blur = None
    return MediaInfo(width=width, height=height, blurhash=blur)


def thumbnail(src: IO[bytes], size: ThumbnailSize, max_pixels: int) -> Thumbnail:
    """A thumbnail at `size`: `crop` fills the box exactly (centre crop), `scale` fits
    inside it keeping the aspect ratio. Never upscales: a smaller source is only
    cropped to the box's aspect ratio (crop) or returned at its own size (scale)."""
    from PIL import Image, ImageOps

    im = _open(src, max_pixels)
    source_format = im.format
    w, h = size.width, size.height
    img = _decoded(im, (w, h))
    if size.method == "crop":
        scale = max(w / img.width, h / img.height)
        if scale < 1:
            img = ImageOps.fit(img, (w, h), Image.Resampling.LANCZOS)
        else:
            # Too small to fill the box: crop to its aspect ratio at the source's size.
            ratio = w / h
            cw, ch = (img.width, round(img.width / ratio))
            if ch > img.height:
                cw, ch = round(img.height * ratio), img.height
            img = ImageOps.fit(img, (max(1, cw), max(1, ch)), Image.Resampling.LANCZOS)
    else:
        img.thumbnail((w, h), Image.Resampling.LANCZOS)
    out = BytesIO()
    if img.mode == "RGBA" or source_format in ("PNG", "GIF"):
        img.save(out, "PNG", optimize=True)
        content_type = "image/png"
    else:
        img.convert("RGB").save(out, "JPEG", quality=80, optimize=True, progressive=True)
        content_type = "image/jpeg"
    return Thumbnail(out.getvalue(), content_type, img.width, img.height)


# Video ----------------------------------------------------------------------------


def have_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


@contextmanager
def _as_path(src: IO[bytes]) -> Iterator[tuple[str, tuple[int, ...]]]:
    """A path a child process can open for `src`, and the descriptors it must inherit.

    A real file (Twisted's spool file, an anonymous temporary file) is passed as
    /proc/self/fd/N without copying; anything else is copied to a temporary file.
    """
    try:
        fd = src.fileno()
        os.fstat(fd)
        if os.path.exists(f"/proc/self/fd/{fd}"):
            yield f"/proc/self/fd/{fd}", (fd,)
            return
    except (OSError, AttributeError, ValueError):
        pass
    with tempfile.NamedTemporaryFile(prefix="media-", suffix=".bin") as tmp:
        src.seek(0)
        shutil.copyfileobj(src, tmp, 1024 * 1024)
        tmp.flush()
        yield tmp.name, ()


def _run(args: list[str], pass_fds: tuple[int, ...]) -> bytes | None:
    try:
        done = subprocess.run(  # noqa: S603 - fixed argument list, no shell
            args,
            capture_output=True,
            timeout=FFMPEG_TIMEOUT_S,
            pass_fds=pass_fds,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def video_info(src: IO[bytes], max_pixels: int) -> MediaInfo:
    """Dimensions and duration (ffprobe) and a JPEG poster frame (ffmpeg) of a video.

    Without ffmpeg installed this returns an empty MediaInfo: the video is stored
    and served all the same, only without a poster or dimensions.
    """
    if not have_ffmpeg():
        return MediaInfo()
    with _as_path(src) as (path, fds):
        probe = _run(
            [
                "ffprobe",
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=width,height:format=duration",
                "-of",
                "json",
                path,
            ],
            fds,
        )
        width = height = duration_ms = None
        if probe:
            try:
                data: dict[str, Any] = json.loads(probe)
                streams = data.get("streams") or [{}]
                width, height = int(streams[0]["width"]), int(streams[0]["height"])
                duration_ms = round(float(data.get("format", {}).get("duration", 0)) * 1000) or None
            except (ValueError, KeyError, TypeError, IndexError):
                pass
        poster = None
        if width is None or height is None or width * height <= max_pixels:
            for offset in ("1", "0"):
                poster = _run(
                    [
                        "ffmpeg",
                        "-v",
                        "error",
                        "-nostdin",
                        "-ss",
                        offset,
                        "-i",
                        path,
                        "-frames:v",
                        "1",
                        "-f",
                        "image2",
                        "-c:v",
                        "mjpeg",
                        "-q:v",
                        "3",
                        "pipe:1",
                    ],
                    fds,
                )
                if poster:
                    break
    blur = None
    if poster:
        try:
            blur = image_info(BytesIO(poster), max_pixels).blurhash
        except Exception:
            blur = None
    return MediaInfo(
        width=width, height=height, duration_ms=duration_ms, blurhash=blur, poster=poster or None
    )


# Blurhash (https://blurha.sh): a ~30-character placeholder, computed on a 32 px image.

_B83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"


def _b83(value: int, length: int) -> str:
    return "".join(_B83[(value // 83 ** (length - i - 1)) % 83] for i in range(length))


def _to_linear(v: int) -> float:
    c = v / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def _to_srgb(v: float) -> int:
    c = max(0.0, min(1.0, v))
    return round((c * 12.92 if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055) * 255)


def _sign_pow(v: float, exp: float) -> float:
    return math.copysign(abs(v) ** exp, v)


def blurhash(img: Image.Image, x_components: int = 4, y_components: int = 3) -> str:
    width, height = img.size
    data = img.convert("RGB").tobytes()
    linear = [_to_linear(v) for v in range(256)]
    pixels = [(linear[data[k]], linear[data[k + 1]], linear[data[k + 2]]) for k in range(0, len(data), 3)]
    factors: list[tuple[float, float, float]] = []
    for j in range(y_components):
        for i in range(x_components):
            norm = 1 if i == 0 and j == 0 else 2
            r = g = b = 0.0
            for y in range(height):
                cy = math.cos(math.pi * j * y / height)
                row = y * width
                for x in range(width):
                    basis = norm * math.cos(math.pi * i * x / width) * cy
                    pr, pg, pb = pixels[row + x]
                    r += basis * pr
                    g += basis * pg
                    b += basis * pb
            scale = 1 / (width * height)
            factors.append((r * scale, g * scale, b * scale))
    dc, ac = factors[0], factors[1:]
    out = _b83((x_components - 1) + (y_components - 1) * 9, 1)
    if ac:
        actual_max = max(abs(v) for f in ac for v in f)
        quant_max = max(0, min(82, math.floor(actual_max * 166 - 0.5)))
        max_value = (quant_max + 1) / 166
        out += _b83(quant_max, 1)
    else:
        max_value = 1.0
        out += _b83(0, 1)
    out += _b83((_to_srgb(dc[0]) << 16) + (_to_srgb(dc[1]) << 8) + _to_srgb(dc[2]), 4)
    for f in ac:
        q = [max(0, min(18, math.floor(_sign_pow(v / max_value, 0.5) * 9 + 9.5))) for v in f]
        out += _b83(q[0] * 19 * 19 + q[1] * 19 + q[2], 2)
    return out
