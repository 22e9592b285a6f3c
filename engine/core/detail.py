"""Hair detail at the photo's own resolution: where a stroke grows hair over skin, strands.

The brush's edit is pasted back as a low-frequency change, so a dark stroke over a forehead
darkens the skin and keeps its pores: a smudge, not a fringe. The detail pass replaces the
fine detail there. A small network (``DetailNet``) reads the face model's own view of the
edited crop (its 64-px rendition) in CelebA's aligned frame (eyes where aligned CelebA puts
them, 39 px apart) and answers what a photo has on top of such a rendition: for a dark smudge
over a forehead, a fringe's strands. The fine part of that answer (``band``) replaces the
photo's own fine detail where the stroke grew hair (``growth_map``), and nowhere else.

``DetailNet`` learns from pairs (engine.tools.detail_training, ``npe detail``): the aligned
full-size CelebA photos of the training identities, half of them labelled Bangs, beside the
face model's rendition of each; it must answer the photo's detail over the rendition, near
it (L1) and taken for a photo's by a patch critic. The weights ship as ``detail.safetensors``
+ ``detail.json``; without them the pass is skipped.
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
# The strands are lightness only: the network's colour in its fine detail is speckle.
GREY_DETAIL = True
# The blur that parts fine detail from the rest (pixels of CelebA's aligned frame; detail.json's
# "input_sigma"): about what the 64-px face model cannot draw (one of its pixels covers 2.8),
# so the network's answer brings the strands and the skin between them, and the colour stays
# the edit's.
INPUT_SIGMA = 4.0


def lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (N, C, H, W) images, each channel alone."""
    n, c, h, w = x.shape
    return blur(x.reshape(n * c, 1, h, w), sigma).reshape(n, c, h, w)


class DetailNet(nn.Module):
    """(N, 3, H, W) the face model's rendition in [-1, 1] -> (N, 3, H, W) the detail a photo
    has over it (H, W multiples of 4). Noise drawn inside makes each strand pattern new;
    ``seed`` fixes it."""

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

    def forward(self, rendition: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        gen = None if seed is None else torch.Generator(device="cpu").manual_seed(seed)
        n, _, h, w = rendition.shape

        def noise(s: int) -> torch.Tensor:
            return torch.randn((n, 1, h // s, w // s), generator=gen).to(rendition)

        s0 = self.stem(torch.cat([rendition, noise(1)], 1))
        s1 = self.down1(s0)
        m = self.down2(s1)
        for block in self.middle:
            m = m + block(torch.cat([m, noise(4)], 1))
        u = self.up2(F.interpolate(m, scale_factor=2.0, mode="nearest")) + s1
        u = self.up1(F.interpolate(u, scale_factor=2.0, mode="nearest")) + s0
        return self.out(u)


def band(detail: torch.Tensor, sigma: float = INPUT_SIGMA) -> torch.Tensor:
    """The fine part of an image: what a blur of ``sigma`` takes out (strands, never colour)."""
    return detail - lowpass(detail, sigma)


@dataclass(frozen=True)
class StrandLayer:
    """The network's strands over a photo box and where they replace the photo's fine detail."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in photo pixels
    weight: np.ndarray  # (h, w) float32 in [0, 1]: the growth there
    strands: np.ndarray  # (h, w, 3) float32: fine detail, 0..255 units
    sigma: float  # photo pixels: the blur that parts the photo's own fine detail from the rest

    def put(self, picture: np.ndarray, bare: np.ndarray | None = None) -> np.ndarray:
        """``picture`` with its fine detail replaced by the strands where the weight says. Where
        the weight is partial the two are mixed keeping their strength (weights whose squares sum
        to 1): a plain mix of two unrelated textures is smoother than either, a ring of smudge
        around the hair. The fine detail replaced is ``bare``'s, the picture before the edit
        (its pores), when given: the edit's own edges stay. (The edited picture's fine detail also
        holds the sharp lower edge of a dark stroke; taking that away drew a pale line along it.)"""
        x0, y0, x1, y1 = self.box
        box = picture[y0:y1, x0:x1].astype(np.float32)
        source = box if bare is None else bare[y0:y1, x0:x1].astype(np.float32)
        own = source - cv2.GaussianBlur(source, (0, 0), self.sigma)  # the photo's own fine detail (pores)
        w = self.weight[..., None]
        moved = box + np.sqrt(w) * self.strands + (np.sqrt(1 - w) - 1) * own
        out = picture.copy()
        touched = self.weight > 0
        out[y0:y1, x0:x1][touched] = np.clip(np.rint(moved[touched]), 0, 255).astype(np.uint8)
        return out


@dataclass
class HairDetail:
    net: DetailNet
    sigma: float = INPUT_SIGMA  # the blur that parts fine detail from the rest, CelebA frame pixels
    # the largest scale of CelebA's frame the network runs at; a larger face has its detail
    # answered at this scale and enlarged
    max_scale: float = 1.0

    def __post_init__(self) -> None:
        self.net.eval().requires_grad_(False)

    def frame(self, transform: np.ndarray, resolution: int) -> tuple[np.ndarray, float]:
        """The transform from photo pixels to CelebA's aligned frame at the photo's own scale
        (never below CelebA's), and that scale."""
        photo_eyes = align.apply(align.invert(transform), align.template_points(resolution))
        scale = max(1.0, float(np.hypot(*(photo_eyes[1] - photo_eyes[0]))) / CELEBA_IOD)
        return align.similarity_from_points(photo_eyes, align.CELEBA_ALIGNED_EYES * scale), scale

    def apply(self, export: np.ndarray, growth: np.ndarray, transform: np.ndarray, rendition: np.ndarray,
              seed: int = 0, bare: np.ndarray | None = None) -> np.ndarray:
        """``export`` (H, W, 3 uint8) with its fine detail replaced by strands where ``growth``
        (R, R float32 in [0, 1] over the face's crop, ``growth_map``) says hair grew.
        ``rendition`` (R, R, 3 uint8): the face model's view of the edited crop, which the
        network adds the detail to; ``bare``: the photo before the edit, whose fine detail is the
        one replaced (``StrandLayer.put``). The photo pixels the growth does not reach come back
        unchanged, bit for bit."""
        layer = self.layer(export, growth, transform, rendition, seed)
        return export if layer is None else layer.put(export, bare)

    @torch.inference_mode()
    def layer(self, export: np.ndarray, growth: np.ndarray, transform: np.ndarray, rendition: np.ndarray,
              seed: int = 0) -> StrandLayer | None:
        """The strands ``apply`` puts into ``export`` (only its size is read: the strands come from
        the rendition), to be put again into any picture of that size and framing (a slider moved
        after the stroke: the strands stay). None: no growth."""
        size = growth.shape[0]
        ys, xs = np.nonzero(growth > 0)
        if len(ys) == 0:
            return None
        # the photo box the growth reaches
        corners = np.array([[xs.min() - 1, ys.min() - 1], [xs.max() + 1, ys.max() + 1],
                            [xs.min() - 1, ys.max() + 1], [xs.max() + 1, ys.min() - 1]], dtype=np.float64)
        pts = align.apply(align.invert(transform), corners)
        h, w = export.shape[:2]
        x0, y0 = np.clip(np.floor(pts.min(0)).astype(int), 0, [w, h])
        x1, y1 = np.clip(np.ceil(pts.max(0)).astype(int) + 1, 0, [w, h])
        if x1 <= x0 or y1 <= y0:
            return None
        box_to_crop = np.vstack([transform, [0, 0, 1]]) @ np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1]])
        weight = cv2.warpAffine(growth.astype(np.float32), box_to_crop[:2], (x1 - x0, y1 - y0),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=0)
        to_frame, scale = self.frame(transform, size)
        # the blur, in photo pixels, that parts the photo's own fine detail from the rest
        sigma = self.sigma * scale / min(scale, self.max_scale) / align.scale_of(to_frame)
        box = (int(x0), int(y0), int(x1), int(y1))
        return StrandLayer(box, weight, self._strands(rendition, transform, to_frame, scale, box, seed), sigma)

    def _strands(self, rendition: np.ndarray, transform: np.ndarray, to_frame: np.ndarray, scale: float,
                 box: tuple[int, int, int, int], seed: int) -> np.ndarray:
        """(h, w, 3) float32: the fine detail of the network's answer over the photo ``box``
        (x0, y0, x1, y1), in 0..255 units. It reads the rendition in CelebA's frame (``to_frame``
        at ``scale``, from ``frame``) at the scale it learned at (capped at ``max_scale``) and adds
        the detail a photo would have."""
        x0, y0, x1, y1 = box
        run = min(scale, self.max_scale)
        corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64)
        fc = align.apply(to_frame, corners)
        pad = 16 * scale  # the network's view beyond the box
        fx0, fy0 = np.floor(fc.min(0) - pad)
        fx1, fy1 = np.ceil(fc.max(0) + pad)
        rw = int(np.ceil((fx1 - fx0) * run / scale / 4) * 4)
        rh = int(np.ceil((fy1 - fy0) * run / scale / 4) * 4)
        # photo -> the network's grid (the frame at the run scale, origin at the region's corner)
        k = run / scale
        to_grid = np.array([[k, 0, -fx0 * k], [0, k, -fy0 * k], [0, 0, 1]]) @ np.vstack([to_frame, [0, 0, 1]])
        crop_to_grid = to_grid @ np.vstack([align.invert(transform), [0, 0, 1]])
        grid = cv2.warpAffine(rendition, crop_to_grid[:2], (rw, rh), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        r = torch.from_numpy(grid).permute(2, 0, 1)[None].float() / 127.5 - 1
        d = band(r + self.net(r, seed), self.sigma)
        if GREY_DETAIL:
            d = d.mean(1, keepdim=True).expand(-1, 3, -1, -1)
        detail = (d[0] * 127.5).permute(1, 2, 0).contiguous().numpy()
        box_to_grid = to_grid @ np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1]])
        return cv2.warpAffine(detail, box_to_grid[:2], (x1 - x0, y1 - y0), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REFLECT)


# Where no hair grows (centre, radii as crop fractions): the eyes, the nose and the cheeks beside
# it, and the lips; dark paint there is make-up or shadow. (A wide stroke across the face put
# stubble on the astronaut's nose.) Hair grows above the brows, at the sides and from the upper
# lip down.
FEATURES = (((0.5, 0.54), (0.26, 0.12)), ((0.5, 0.775), (0.09, 0.04)))
# A stroke grows hair where it makes the skin this much darker (CIELAB L*), in full from the second.
DARKER = (6.0, 20.0)


def growth_map(before: np.ndarray, after: np.ndarray, brushed: np.ndarray, hair: np.ndarray) -> np.ndarray:
    """(R, R) float32 in [0, 1]: where a stroke grew hair over skin, in a face's crop.
    ``before``/``after``: the crop (R, R, 3 uint8) before and after the edit; ``brushed``: the
    brush's blend weight there; ``hair``: the hair already there with strands of its own
    (``Regions.strands``), which keeps them. Dark paint on the eyes, nose, upper cheeks and lips
    is left as paint."""
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
    return HairDetail(net, float(meta.get("input_sigma", HairDetail.sigma)),
                      float(meta.get("max_scale", HairDetail.max_scale)))
