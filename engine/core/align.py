"""The canonical face template, and the maps between a photo and its aligned crop.

Every face the model sees, in training and in the editor, is cut out of its photo by a
similarity transform (rotation, uniform scale, translation) that puts the eye centres at
``TEMPLATE_EYES``. The framing leaves room above the eyes for hair, the main thing users
edit. It coincides with the aligned CelebA images (eyes at (68.5, 111.8) and
(107.7, 111.8) in 178x218) so that set needs no detection.

Coordinates are in pixels with the OpenCV convention: the centre of pixel (i, j) is at
x = j, y = i. A transform is a float64 (2, 3) matrix ``A`` mapping photo coordinates to
crop coordinates: ``crop_xy = A[:, :2] @ photo_xy + A[:, 2]``.
"""

from __future__ import annotations

import cv2
import numpy as np

# Eye centres (viewer's left eye first) as fractions of the crop side.
TEMPLATE_EYES = np.array([[0.37, 0.48], [0.63, 0.48]])
# Mouth centre in the same frame (used only to check landmark sanity and to draw).
TEMPLATE_MOUTH = np.array([0.5, 0.765])
# Eye centres of an aligned CelebA image, in its 178-pixel-wide frame.
CELEBA_ALIGNED_EYES = np.array([[68.5, 111.8], [107.7, 111.8]])


def template_points(size: int, points: np.ndarray = TEMPLATE_EYES) -> np.ndarray:
    """Template fractions -> pixel coordinates in a ``size`` x ``size`` crop."""
    return np.asarray(points, dtype=np.float64) * size - 0.5


def similarity_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` points onto ``dst`` points.

    With two points the fit is exact. Returns a (2, 3) float64 matrix.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if len(src) != len(dst) or len(src) < 2:
        raise ValueError("need two or more matching points")
    sc, dc = src.mean(0), dst.mean(0)
    s, d = src - sc, dst - dc
    denom = (s**2).sum()
    if denom < 1e-12:
        raise ValueError("landmarks coincide; cannot align")
    a = (s * d).sum() / denom  # scale * cos
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / denom  # scale * sin
    rot = np.array([[a, -b], [b, a]])
    return np.hstack([rot, (dc - rot @ sc)[:, None]])


def eyes_to_crop(eyes: np.ndarray, size: int) -> np.ndarray:
    """The transform that puts these photo eye centres onto the template in a size-px crop."""
    return similarity_from_points(eyes, template_points(size))


def invert(transform: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine transform."""
    full = np.vstack([transform, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points through a (2, 3) transform."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ transform[:, :2].T + transform[:, 2]


def scale_of(transform: np.ndarray) -> float:
    """Crop pixels per photo pixel."""
    return float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))


def crop_to_photo_box(transform: np.ndarray, size: int, shape: tuple[int, ...],
                      margin: int = 2) -> tuple[int, int, int, int]:
    """The photo-pixel box (x0, y0, x1, y1), clipped to the photo, that the crop covers."""
    corners = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    pts = apply(invert(transform), corners)
    h, w = shape[:2]
    x0 = int(np.clip(np.floor(pts[:, 0].min()) - margin, 0, w))
    y0 = int(np.clip(np.floor(pts[:, 1].min()) - margin, 0, h))
    x1 = int(np.clip(np.ceil(pts[:, 0].max()) + margin + 1, 0, w))
    y1 = int(np.clip(np.ceil(pts[:, 1].max()) + margin + 1, 0, h))
    return x0, y0, x1, y1


def warp_to_crop(photo: np.ndarray, transform: np.ndarray, size: int) -> np.ndarray:
    """Cut the aligned ``size`` x ``size`` crop out of ``photo`` (any number of channels).

    When the crop is much smaller than the face in the photo, the covered region is first
    shrunk with area averaging so the result does not alias. Outside the photo, edge
    pixels are repeated.
    """
    scale = scale_of(transform)
    t = transform.copy()
    src = photo
    if scale < 0.75:
        # cut the covered box (plus margin) and shrink it to about crop resolution
        x0, y0, x1, y1 = crop_to_photo_box(transform, size, photo.shape, margin=4)
        if x1 > x0 and y1 > y0:
            region = photo[y0:y1, x0:x1]
            f = min(1.0, scale * 1.25)
            new_w = max(1, round((x1 - x0) * f))
            new_h = max(1, round((y1 - y0) * f))
            fx, fy = new_w / (x1 - x0), new_h / (y1 - y0)
            src = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA)
            if src.ndim < photo.ndim:
                src = src[..., None]
            # photo (x, y) -> small ((x - x0 + .5) * fx - .5, (y - y0 + .5) * fy - .5)
            shrink = np.array([[fx, 0, (0.5 - x0) * fx - 0.5], [0, fy, (0.5 - y0) * fy - 0.5]])
            t = transform @ np.vstack([invert(shrink), [0, 0, 1]])
    out = cv2.warpAffine(src, t, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if out.ndim < photo.ndim:
        out = out[..., None]
    return out


def edge_feather(size: int, width: float = 0.06) -> np.ndarray:
    """(size, size) float32 weights: 1 inside, falling smoothly to 0 at the crop border."""
    r = (np.arange(size, dtype=np.float32) + 0.5) / size
    d = np.minimum(r, 1 - r) / width
    ramp = np.clip(d, 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    return np.outer(ramp, ramp)


def paste_back(photo: np.ndarray, transform: np.ndarray, layer: np.ndarray, weight: np.ndarray,
               add: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """Put an edited crop back into the photo through the inverse transform.

    ``layer`` is float32 (R, R, 3) in photo units and ``weight`` (R, R) in [0, 1] says
    where the crop was edited. With ``add=False`` the layer is an image (0..255) blended
    in by ``weight``. With ``add=True`` it is a change, already weighted (the edited crop
    minus the photo's crop), added to the photo: the photo keeps its own fine detail and
    moves by the low-frequency change. Photo pixels where the mapped weight is exactly
    zero are returned unchanged, bit for bit.
    """
    size = weight.shape[0]
    if out is None:
        out = photo.copy()
    x0, y0, x1, y1 = crop_to_photo_box(transform, size, photo.shape)
    if x1 <= x0 or y1 <= y0:
        return out
    # crop -> photo box coordinates
    shift = np.array([[1.0, 0, -x0], [0, 1.0, -y0]])
    to_box = shift @ np.vstack([invert(transform), [0, 0, 1]])
    box_size = (x1 - x0, y1 - y0)
    feather = edge_feather(size)
    w = (weight * feather).astype(np.float32)
    values = layer.astype(np.float32) * (feather[..., None] if add else 1.0)
    layers = np.concatenate([values, w[..., None]], axis=2)
    # at the crop border the weight is 0: map outside-crop pixels to 0 weight
    back = cv2.warpAffine(layers, to_box, box_size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    bw = back[..., 3:4]
    region = photo[y0:y1, x0:x1].astype(np.float32)
    blended = region + back[..., :3] if add else region + bw * (back[..., :3] - region)
    touched = bw[..., 0] > 0
    res = out[y0:y1, x0:x1]
    res[touched] = np.clip(np.rint(blended[touched]), 0, 255).astype(np.uint8)
    return out
