"""Hair detail at the photo's own resolution: where a stroke grows hair over skin, strands.

The brush's edit is pasted back as a low-frequency change, so a dark stroke over a forehead
darkens the skin and keeps its pores: a smudge, not a fringe. The detail pass replaces the
fine detail there. It looks at the edited photo in CelebA's aligned frame (eyes where aligned
CelebA puts them, 39 px apart), blurred, and a small network (``DetailNet``) answers the fine
detail a real fringe of that colour and shape would have. The answer replaces the photo's own
fine detail where the stroke grew hair (``growth_map``), and nowhere else.

``DetailNet`` is trained adversarially on fringes of aligned CelebA photos of the training
identities labelled Bangs (``npe detail``, engine.tools.detail_training): its input is the photo
blurred, its output must make the blurred photo look like the photo to a patch discriminator.
The weights ship as ``detail.safetensors`` + ``detail.json``; without them the pass is skipped.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.core import align
from engine.core.checkpoint import ModelError, read_tensors
from engine.core.edit import blur

WEIGHTS = "detail.safetensors"
# The blur the network's input has (pixels of CelebA's aligned frame): about what the face
# model's change is made of, so the photo's pores and the stroke's low-frequency colour pass
# through it as the training photos' fringes did.
INPUT_SIGMA = 2.5


def lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (N, C, H, W) images, each channel alone."""
    n, c, h, w = x.shape
    return blur(x.reshape(n * c, 1, h, w), sigma).reshape(n, c, h, w)


class DetailNet(nn.Module):
    """(N, 3, H, W) blurred image in [-1, 1] -> (N, 3, H, W) fine detail to add to it (H, W
    multiples of 4). Noise drawn inside makes each strand pattern new; ``seed`` fixes it."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        w = width
        act = functools.partial(nn.LeakyReLU, 0.2, inplace=True)
        self.stem = nn.Sequential(nn.Conv2d(4, w, 3, padding=1), act())
        self.down1 = nn.Sequential(nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), act())
        self.down2 = nn.Sequential(nn.Conv2d(2 * w, 3 * w, 4, stride=2, padding=1), act())
        self.middle = nn.ModuleList(
            nn.Sequential(nn.Conv2d(3 * w + 1, 3 * w, 3, padding=1), act(), nn.Conv2d(3 * w, 3 * w, 3, padding=1))
            for _ in range(3))
        self.up2 = nn.Sequential(nn.Conv2d(3 * w, 2 * w, 3, padding=1), act())
        self.up1 = nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1), act())
        self.out = nn.Conv2d(w, 3, 3, padding=1)

    def forward(self, low: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        gen = None if seed is None else torch.Generator(device="cpu").manual_seed(seed)
        n, _, h, w = low.shape

        def noise(s: int) -> torch.Tensor:
            return torch.randn((n, 1, h // s, w // s), generator=gen).to(low)

        s0 = self.stem(torch.cat([low, noise(1)], 1))
        s1 = self.down1(s0)
        m = self.down2(s1)
        for block in self.middle:
            m = m + block(torch.cat([m, noise(4)], 1))
        u = self.up2(F.interpolate(m, scale_factor=2.0, mode="nearest")) + s1
        u = self.up1(F.interpolate(u, scale_factor=2.0, mode="nearest")) + s0
        return self.out(u)


def band(detail: torch.Tensor, sigma: float = INPUT_SIGMA) -> torch.Tensor:
    """The detail with what the input's blur keeps taken out: it adds strands, never colour."""
    return detail - lowpass(detail, sigma)


@dataclass
class HairDetail:
    net: DetailNet
    # the largest scale of CelebA's frame the network runs at; a larger face has its detail
    # answered at this scale and enlarged (strands as fine as CelebA's at twice its size)
    max_scale: float = 2.0

    def __post_init__(self) -> None:
        self.net.eval().requires_grad_(False)

    def frame(self, transform: np.ndarray, resolution: int) -> tuple[np.ndarray, float]:
        """The transform from photo pixels to CelebA's aligned frame at the photo's own scale
        (never below CelebA's), and that scale."""
        photo_eyes = align.apply(align.invert(transform), align.template_points(resolution))
        scale = max(1.0, float(np.hypot(*(photo_eyes[1] - photo_eyes[0]))) / CELEBA_IOD)
        return align.similarity_from_points(photo_eyes, align.CELEBA_ALIGNED_EYES * scale), scale

    @torch.inference_mode()
    def apply(self, export: np.ndarray, growth: np.ndarray, transform: np.ndarray, seed: int = 0) -> np.ndarray:
        """``export`` (H, W, 3 uint8) with its fine detail replaced by strands where ``growth``
        (R, R float32 in [0, 1] over the face's crop, ``growth_map``) says hair grew. The
        photo pixels the growth does not reach come back unchanged, bit for bit."""
        size = growth.shape[0]
        if not (growth > 0).any():
            return export
        # the photo box the growth reaches
        ys, xs = np.nonzero(growth > 0)
        corners = np.array([[xs.min() - 1, ys.min() - 1], [xs.max() + 1, ys.max() + 1],
                            [xs.min() - 1, ys.max() + 1], [xs.max() + 1, ys.min() - 1]], dtype=np.float64)
        pts = align.apply(align.invert(transform), corners)
        h, w = export.shape[:2]
        x0, y0 = np.clip(np.floor(pts.min(0)).astype(int), 0, [w, h])
        x1, y1 = np.clip(np.ceil(pts.max(0)).astype(int) + 1, 0, [w, h])
        if x1 <= x0 or y1 <= y0:
            return export
        box_to_crop = np.vstack([transform, [0, 0, 1]]) @ np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1]])
        weight = cv2.warpAffine(growth.astype(np.float32), box_to_crop[:2], (x1 - x0, y1 - y0),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=0)
        strands = self._strands(export, transform, size, (x0, y0, x1, y1), seed)
        box = export[y0:y1, x0:x1].astype(np.float32)
        to_frame, scale = self.frame(transform, size)
        # the input's blur, in photo pixels
        sigma = INPUT_SIGMA * scale / min(scale, self.max_scale) / align.scale_of(to_frame)
        own = box - cv2.GaussianBlur(box, (0, 0), sigma)  # the photo's own fine detail (pores)
        moved = box + weight[..., None] * (strands - own)
        out = export.copy()
        touched = weight > 0
        out[y0:y1, x0:x1][touched] = np.clip(np.rint(moved[touched]), 0, 255).astype(np.uint8)
        return out

    def _strands(self, export: np.ndarray, transform: np.ndarray, size: int, box: tuple[int, int, int, int],
                 seed: int) -> np.ndarray:
        """(h, w, 3) float32: the network's fine detail over the photo ``box`` (x0, y0, x1, y1),
        in 0..255 units, answered in CelebA's frame at the capped scale."""
        x0, y0, x1, y1 = box
        to_frame, scale = self.frame(transform, size)
        run = min(scale, self.max_scale)
        corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64)
        fc = align.apply(to_frame, corners)
        pad = 16 * scale  # the network's view beyond the box
        fx0, fy0 = np.floor(fc.min(0) - pad)
        fx1, fy1 = np.ceil(fc.max(0) + pad)
        rw = int(np.ceil((fx1 - fx0) * run / scale / 4) * 4)
        rh = int(np.ceil((fy1 - fy0) * run / scale / 4) * 4)
        # photo -> the network's grid (frame at the run scale, origin at the region's corner)
        k = run / scale
        to_grid = np.array([[k, 0, -fx0 * k], [0, k, -fy0 * k], [0, 0, 1]]) @ np.vstack([to_frame, [0, 0, 1]])
        if k < 1:  # shrink first so the network's input does not alias
            big = cv2.warpAffine(export, (np.diag([1 / k, 1 / k, 1]) @ to_grid)[:2],
                                 (int(np.ceil(rw / k)), int(np.ceil(rh / k))), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT)
            grid = cv2.resize(big, (rw, rh), interpolation=cv2.INTER_AREA)
        else:
            grid = cv2.warpAffine(export, to_grid[:2], (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        x = torch.from_numpy(grid).permute(2, 0, 1)[None].float() / 127.5 - 1
        d = band(self.net(lowpass(x, INPUT_SIGMA), seed))
        detail = (d[0] * 127.5).permute(1, 2, 0).numpy()
        box_to_grid = to_grid @ np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1]])
        return cv2.warpAffine(detail, box_to_grid[:2], (x1 - x0, y1 - y0), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REFLECT)


# Eyes and lips (centre, radii as crop fractions): dark paint there is make-up or shadow, not hair.
FEATURES = (((0.37, 0.48), (0.08, 0.05)), ((0.63, 0.48), (0.08, 0.05)), ((0.5, 0.775), (0.09, 0.04)))
# A stroke grows hair where it makes the skin this much darker (CIELAB L*), in full from the second.
DARKER = (6.0, 20.0)


def growth_map(before: np.ndarray, after: np.ndarray, brushed: np.ndarray, hair: np.ndarray) -> np.ndarray:
    """(R, R) float32 in [0, 1]: where a stroke grew hair over skin, in a face's crop.
    ``before``/``after``: the crop (R, R, 3 uint8) before and after the edit; ``brushed``: the
    brush's blend weight there; ``hair``: the hair already there (``Regions.hair``), which keeps
    its own strands. Dark paint on eyes and lips is left as paint."""
    size = before.shape[0]
    lightness = [cv2.cvtColor(im, cv2.COLOR_RGB2LAB)[..., 0].astype(np.float32) * (100 / 255) for im in (before, after)]
    t = np.clip((lightness[0] - lightness[1] - DARKER[0]) / (DARKER[1] - DARKER[0]), 0, 1)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    u, v = (xs + 0.5) / size, (ys + 0.5) / size
    inside = np.any([((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 < 1 for (cx, cy), (rx, ry) in FEATURES], axis=0)
    features = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 0.02 * size)
    grow = t * t * (3 - 2 * t) * np.clip(brushed, 0, 1) * (1 - hair) * (1 - features)
    return np.where(grow > 0.01, grow, 0).astype(np.float32)


CELEBA_IOD = float(np.hypot(*(align.CELEBA_ALIGNED_EYES[1] - align.CELEBA_ALIGNED_EYES[0])))


@functools.lru_cache(maxsize=4)
def load_detail(path: Path) -> HairDetail | None:
    """The detail network stored at ``path`` (with its .json beside it), or None when absent.
    A damaged file raises ``ModelError``."""
    if not path.exists():
        return None
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        net = DetailNet(int(meta.get("width", 24)))
        net.load_state_dict(read_tensors(path))
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelError(f"hair detail weights {path} are damaged ({e})") from None
    return HairDetail(net, float(meta.get("max_scale", 2.0)))
