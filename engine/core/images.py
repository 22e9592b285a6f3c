"""Image files in and out, and the one place where pixels change representation.

The GUI and the file system only ever see ``uint8`` arrays of shape (H, W, 3) in RGB
order. The networks only ever see ``float32`` tensors of shape (N, 3, H, W) with values
in [-1, 1]. ``to_tensor`` and ``to_uint8`` are the only crossings between the two.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# A 50-megapixel photo must open; a decompression bomb must not. Checked on the header,
# before any pixel is decoded.
MAX_PIXELS = 120_000_000
MIN_SIDE = 16
READABLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class ImageError(Exception):
    """An image could not be read or written; the message is meant for the user."""


@dataclass(frozen=True)
class Photo:
    """A decoded photo: upright RGB pixels plus what is needed to write it back."""

    pixels: np.ndarray  # uint8 (H, W, 3), EXIF orientation already applied
    name: str = "untitled"
    file_bytes: bytes = b""  # the original file, kept so a session can be reopened exactly
    icc_profile: bytes | None = None
    exif: bytes | None = None
    format: str = "PNG"
    info: dict[str, object] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) or (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]."""
    if pixels.dtype != np.uint8 or pixels.shape[-1] != 3 or pixels.ndim not in (3, 4):
        raise ValueError(f"expected uint8 (H, W, 3) pixels, got {pixels.dtype} {pixels.shape}")
    batch = pixels[None] if pixels.ndim == 3 else pixels
    t = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    return t / 127.5 - 1.0


def resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, R, R) images resized to ``size`` x ``size`` (bilinear, antialiased when
    shrinking); the same tensor when they already are that size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                                           align_corners=False)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (3, H, W) or (N, 3, H, W) in [-1, 1] -> uint8 (H, W, 3) or (N, H, W, 3)."""
    t = images.detach().float().cpu()
    if t.ndim not in (3, 4) or t.shape[-3] != 3:
        raise ValueError(f"expected (N, 3, H, W) or (3, H, W) images, got {tuple(t.shape)}")
    t = ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return t.movedim(-3, -1).numpy()


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> uint8 RGB; transparency is composited over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def decode_photo(data: bytes, name: str = "untitled") -> Photo:
    """Decode image bytes into an upright RGB ``Photo`` or raise ``ImageError``."""
    if not data:
        raise ImageError(f"{name}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd metadata is not the user's problem
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageError(
                    f"{name}: {w}x{h} is {w * h / 1e6:.0f} megapixels, more than the "
                    f"{MAX_PIXELS / 1e6:.0f} this program opens"
                )
            if min(w, h) < MIN_SIDE:
                raise ImageError(f"{name}: {w}x{h} pixels is too small to hold a face")
            fmt = img.format or "PNG"
            icc = img.info.get("icc_profile")
            exif = img.info.get("exif")
            img.seek(0)  # animated images: the first frame
            img.load()
            img = ImageOps.exif_transpose(img)
            pixels = _to_rgb(img)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image this program can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: the image is more than {MAX_PIXELS / 1e6:.0f} megapixels, "
                         "too large to open safely") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"{name}: the image data is damaged ({e})") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to open this image") from None
    return Photo(
        pixels=pixels,
        name=name,
        file_bytes=data,
        icc_profile=icc if isinstance(icc, bytes) else None,
        exif=exif if isinstance(exif, bytes) else None,
        format=fmt,
    )


def load_photo(path: str | os.PathLike[str]) -> Photo:
    """Read and decode a photo file, or raise ``ImageError`` with a message for the user."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{p.name}: the file does not exist (was it moved or deleted?)") from None
    except IsADirectoryError:
        raise ImageError(f"{p.name}: is a folder, not an image") from None
    except PermissionError:
        raise ImageError(f"{p.name}: permission to read the file was denied") from None
    except OSError as e:
        raise ImageError(f"{p.name}: could not be read ({e.strerror or e})") from None
    return decode_photo(data, p.name)


def _create_beside(p: Path) -> tuple[int, str]:
    """Create a new, empty temporary file next to ``p``; returns (fd, path).

    Opened with mode 0o666 so the kernel applies the umask, as for any ordinary file write
    (``tempfile.mkstemp`` would make it 0o600, unreadable to anyone else once renamed).
    """
    folder = p.parent
    for _ in range(100):
        tmp = folder / f".{p.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(folder))


def folder_problem(path: str | os.PathLike[str]) -> str | None:
    """Why no file can be written at ``path`` because of its folder (missing, or a file), or None."""
    folder = Path(path).parent.resolve()
    if not folder.exists():
        return f"the folder {folder} does not exist"
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    return None


def check_output_path(path: str | os.PathLike[str]) -> None:
    """Raise ``ImageError`` before any work when ``path``'s folder cannot hold a file."""
    why = folder_problem(path)
    if why is not None:
        raise ImageError(f"cannot write {Path(path).name}: {why}")


def _write_error(p: Path, e: OSError) -> ImageError:
    """The user's message for a failed write: which folder is missing, read-only or full."""
    why = folder_problem(p)
    if why is None and isinstance(e, PermissionError):
        why = f"no permission to write in the folder {p.parent.resolve()} ({e.strerror or e})"
    elif why is None:
        why = str(e.strerror or e)
    return ImageError(f"could not write {p.name}: {why}; nothing was changed")


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    The old file, if any, stays intact when anything fails (full disk, read-only folder).
    A new file gets the mode an ordinary write gives (0o666 less the umask); an overwritten
    file keeps its own mode.
    """
    p = Path(path)
    tmp = None
    try:
        try:
            keep_mode: int | None = stat.S_IMODE(os.stat(p).st_mode)
        except FileNotFoundError:
            keep_mode = None
        fd, tmp = _create_beside(p)
        with os.fdopen(fd, "wb") as f:
            if keep_mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), keep_mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        raise _write_error(p, e) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def encode_image(pixels: np.ndarray, fmt: str, quality: int = 95, photo: Photo | None = None) -> bytes:
    """Encode uint8 RGB pixels as PNG or JPEG bytes, keeping the photo's ICC profile.

    The pixels are upright already, so the EXIF orientation tag is reset to 1 when the
    photo's EXIF block is carried over.
    """
    img = Image.fromarray(pixels, "RGB")
    kwargs: dict[str, object] = {}
    if photo is not None and photo.icc_profile:
        kwargs["icc_profile"] = photo.icc_profile
    if photo is not None and photo.exif:
        exif = Image.Exif()
        exif.load(photo.exif)
        exif[0x0112] = 1  # orientation: the pixels are written upright
        kwargs["exif"] = exif.tobytes()
    fmt = fmt.upper()
    if fmt in ("JPG", "JPEG"):
        kwargs.update(quality=int(quality), subsampling=0 if quality >= 90 else 2)
        fmt = "JPEG"
    elif fmt != "PNG":
        raise ImageError(f"cannot export as {fmt}: choose PNG or JPEG")
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def format_for_path(path: str | os.PathLike[str]) -> str:
    """'PNG' or 'JPEG' from a file name, or raise ``ImageError``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return "PNG"
    if suffix in (".jpg", ".jpeg"):
        return "JPEG"
    raise ImageError(f"{Path(path).name}: export as .png, .jpg or .jpeg")


def save_image(path: str | os.PathLike[str], pixels: np.ndarray, quality: int = 95,
               photo: Photo | None = None) -> None:
    """Encode by file suffix and write atomically."""
    atomic_write(path, encode_image(pixels, format_for_path(path), quality, photo))
