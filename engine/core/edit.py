"""Pure editing functions: paint -> latent update, and the interpolation-mask render.

Everything here works on one aligned crop at the model's resolution R:
    x       (1, 3, R, R)  the photo crop, in [-1, 1]
    recon0  (1, 3, R, R)  G(z0), the reconstruction of the encoded photo
    z       (1, D)        the current latent
The decoder is frozen; only ``z`` ever gets a gradient.

A brush stroke is a paint layer over the crop: ``paint`` (1, 3, R, R) target colours and
``alpha`` (1, 1, R, R) coverage in [0, 1]. One brush update lowers

    mean_alpha (G(z) - paint)^2  +  keep * mean_{1 - halo} (G(z) - G(z_start))^2

    +  hue * hue_drift(G(z); G(z_start), paint, halo)

where the second term holds the image outside the stroke (its dilated halo) where it was
when the stroke began, so painting a fringe of hair does not also change the chin, and the
third keeps the colours inside the halo between the start's and the paint's (no colour cast).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engine.core.align import edge_feather


@dataclass(frozen=True)
class BrushRule:
    """How a brush event moves the latent.

    ``kind="adam"``: Adam steps on z with the keep term (this project's default).
    ``kind="sgd2016"``: Brock et al.'s rule, one plain step z -= 0.05 (1 + width) dL/dz,
    paint term only (``lr`` and ``keep`` unused).
    """

    kind: str = "adam"
    lr: float = 0.03  # chosen by `npe eval` and by eye: 0.08 paints the colour literally
    keep: float = 5.0  # with chroma 3: change outside the stroke 0.0103 -> 0.0097 (npe eval, 24 held-out faces)
    prior: float = 0.0  # pulls |z| toward sqrt(D), the typical norm under the prior
    # The kept region starts this many brush radii from the stroke; the stroke's change shows only
    # up to there (and fades over one more radius, ``stroke_reach``). 1 measured against 2 (`npe eval
    # --n 50`, 24 held-out faces; `--photo-edits`, 22 photos): colour-error reduction 0.872 -> 0.870,
    # hue drift 2.73 -> 2.61, fringe texture ratio 1.072 -> 1.138 (less smudge around the grown hair).
    # 0.5 gave 1.212 but drew a fringe stroke as a dark bar with a hard top edge.
    halo: float = 1.0
    # Weight of the paint error's colour (opponent) part against its lightness. Where the decoder
    # cannot reach the painted colour, the plain RGB error (1) lets the hue drift: 3 measured,
    # against 1, on 24 held-out faces: exported colour error (CIELAB dE) of dark hair on a
    # forehead 26.9 -> 24.7 with its a*/b* residual 5.4/8.8 -> 2.3/3.8; blond hair 24.0 -> 18.8;
    # the crop's colour-error reduction 0.886 -> 0.894.
    chroma: float = 3.0
    # Weight of ``hue_drift``: the colours of the stroke and its halo are held on the line from the
    # photo's colour to the paint's. Where the decoder mixes dark paint into fair hair it drew a
    # green band (the astronaut's fringe); 30 measured against 0 (`npe eval`, 24 held-out faces):
    # hue drift 3.93 -> 2.80 CIELAB units (p90 8.55 -> 6.04), colour-error reduction 0.884 -> 0.884,
    # change outside 0.0100 -> 0.0097. 100 drifts less (2.42) but paints less (0.879).
    hue: float = 30.0
    # Adam's step on a conditioned decoder's attribute input (per brush event; 0: the brush moves
    # z alone). Paint then also reaches what the decoder draws from its attributes: dark paint on a
    # forehead raises bangs and black hair, where z alone laid a grey translucent band. Measured on
    # the s41n model (c64-4918, 12 LFW photos, not the eval split; hue 180): colour-error reduction
    # 0 / 0.05 / 0.1: 0.829 / 0.904 / 0.921, forehead 0.74 / 0.89 / 0.93, hue drift 1.43 / 1.40 /
    # 1.40, change outside 0.0 (0.02, as an experiment outside the engine: 0.877). By eye on a 512-px portrait, a
    # dark forehead stroke: z alone a grey translucent band, 0.1 a dark brown fringe that meets the
    # hair above it. No effect on a plain decoder.
    attributes: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("adam", "sgd2016"):
            raise ValueError(f"unknown brush rule {self.kind!r}: use 'adam' or 'sgd2016'")
        if self.attributes < 0:
            raise ValueError(f"the brush's attribute step must be >= 0, got {self.attributes}")


def check_latent(z: torch.Tensor, latent_dim: int) -> None:
    if z.ndim != 2 or z.shape[0] != 1 or z.shape[1] != latent_dim:
        raise ValueError(f"latent must have shape (1, {latent_dim}), got {tuple(z.shape)}")


def check_image(name: str, t: torch.Tensor, resolution: int, channels: int = 3) -> None:
    want = (1, channels, resolution, resolution)
    if tuple(t.shape) != want:
        dims = ("batch", "channel", "height", "width")
        wrong = [f"{d} {a} (expected {b})" for d, a, b in zip(dims, t.shape, want, strict=False) if a != b]
        detail = ", ".join(wrong) if len(t.shape) == 4 else f"{t.ndim} dimensions (expected 4)"
        raise ValueError(f"{name} has shape {tuple(t.shape)}: {detail}")


# ---- paint layer -------------------------------------------------------------------

def stamp_segment(alpha: np.ndarray, paint: np.ndarray | None, p0: tuple[float, float], p1: tuple[float, float],
                  radius: float, color: np.ndarray) -> None:
    """Paint a round-tipped segment into ``alpha`` (R, R) and ``paint`` (R, R, 3), in place.

    Coordinates are crop pixels; the tip has a soft one-pixel edge. Only the segment's
    bounding box is touched. ``paint`` may be None (coverage only).
    """
    r_img = alpha.shape[0]
    pad = radius + 1.5
    x0 = max(0, int(np.floor(min(p0[0], p1[0]) - pad)))
    y0 = max(0, int(np.floor(min(p0[1], p1[1]) - pad)))
    x1 = min(r_img, int(np.ceil(max(p0[0], p1[0]) + pad)) + 1)
    y1 = min(r_img, int(np.ceil(max(p0[1], p1[1]) + pad)) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    ax, ay = p0
    bx, by = p1
    dx, dy = bx - ax, by - ay
    seg2 = dx * dx + dy * dy
    if seg2 > 1e-12:
        t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / seg2, 0.0, 1.0)
    else:
        t = np.zeros_like(xs)
    dist = np.hypot(xs - (ax + t * dx), ys - (ay + t * dy))
    cover = np.clip(radius + 0.5 - dist, 0.0, 1.0)
    region = alpha[y0:y1, x0:x1]
    new = cover > region
    region[new] = cover[new]
    if paint is not None:
        paint[y0:y1, x0:x1][cover > 0] = color


# How far past its halo a stroke's change fades out, in brush radii (the fade's Gaussian sigma).
REACH_FADE = 0.5


def stroke_reach(halo: np.ndarray, radius: float) -> np.ndarray:
    """(R, R) float32 in [0, 1]: where a stroke's change may reach the photo. In full over its
    halo (the stroke widened by ``BrushRule.halo`` radii: the part of the image the brush lets
    move), fading out over about one brush radius beyond it (at least 2 pixels); nothing further.
    The latent move changes the whole decoder output a little (a fringe stroke lightened the eyes
    and darkened a fur hat); the photo takes none of that."""
    faded = np.clip(2 * cv2.GaussianBlur(halo.astype(np.float32), (0, 0), max(1.0, REACH_FADE * radius)), 0, 1)
    return np.where(faded < 0.02, 0, faded).astype(np.float32)  # the Gaussian's tail, 2.3 sigma out


def halo_of(alpha: torch.Tensor, radius_px: float) -> torch.Tensor:
    """Dilate a coverage map by ``radius_px`` (max pooling), values in [0, 1]."""
    k = max(1, int(math.ceil(radius_px)))
    return F.max_pool2d(alpha, 2 * k + 1, stride=1, padding=k)


# ---- latent updates ----------------------------------------------------------------

# An orthonormal basis of RGB: lightness, red-green, yellow-blue. Squared errors in it sum to
# the RGB squared error, so weighting its colour rows by 1 is the plain RGB error.
OPPONENT = torch.tensor([[1 / math.sqrt(3)] * 3,
                         [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0],
                         [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)]])


def colour_pair(x: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W): an image's (or a change's) red-green and yellow-blue parts, r - g and
    (r + g) / 2 - b: OPPONENT's colour rows unnormalised (times sqrt 2 and sqrt 6 / 2), for
    comparing colours where the scale of RGB differences is the one wanted."""
    return torch.stack([x[:, 0] - x[:, 1], (x[:, 0] + x[:, 1]) / 2 - x[:, 2]], 1)


def paint_loss(image: torch.Tensor, paint: torch.Tensor, alpha: torch.Tensor, chroma: float = 1.0) -> torch.Tensor:
    """Coverage-weighted mean squared colour error over the painted region; ``chroma`` weights
    its hue and saturation part against its lightness part (1: the plain RGB error)."""
    w = alpha.sum().clamp_min(1e-6) * 3
    diff = image - paint
    if chroma != 1.0:
        opp = torch.einsum("kc,nchw->nkhw", OPPONENT.to(diff), diff)
        weights = torch.tensor([1.0, chroma, chroma], dtype=diff.dtype, device=diff.device).view(1, 3, 1, 1)
        return (alpha * weights * opp**2).sum() / w
    return (alpha * diff**2).sum() / w


def hue_drift(image: torch.Tensor, start: torch.Tensor, paint: torch.Tensor, alpha: torch.Tensor,
              halo: torch.Tensor) -> torch.Tensor:
    """Mean squared colour (opponent chroma) distance, over the stroke's halo, of ``image`` from
    the line between each pixel's colour at the stroke's start and the paint's colour: a change
    that only mixes the two has none, a cast towards a third hue (dark paint turning green) has."""
    opp = OPPONENT[1:].to(image)
    colour = (paint * alpha).sum(dim=(2, 3), keepdim=True) / alpha.sum().clamp_min(1e-6)
    c, c0 = torch.einsum("kc,nchw->nkhw", opp, image), torch.einsum("kc,nchw->nkhw", opp, start)
    d = torch.einsum("kc,nchw->nkhw", opp, colour) - c0
    t = ((c - c0) * d).sum(1, keepdim=True) / (d * d).sum(1, keepdim=True).clamp_min(1e-6)
    off = c - c0 - t.clamp(0, 1) * d
    return (halo * off**2).sum() / (halo.sum().clamp_min(1.0) * 2)


class BrushOptimizer:
    """The latent optimiser for one stroke: holds Adam's moments between events.

    Adam is written out for these vectors (the update of ``torch.optim.Adam``, betas
    0.9 / 0.99, eps 1e-8): creating the first ``torch.optim`` optimiser in a process costs
    about 2 s of imports, which would land on the user's first stroke.

    ``attributes`` (a conditioned decoder; None for a plain one): the brush's move of the
    decoder's attribute input so far, (1, A). The decoder is then called as ``decoder(z,
    attributes)``, and with ``rule.attributes`` > 0 (the Adam rule) the stroke moves it too.
    """

    BETAS = (0.9, 0.99)
    EPS = 1e-8

    def __init__(self, z: torch.Tensor, rule: BrushRule, radius_px: float, keep_image: torch.Tensor,
                 attributes: torch.Tensor | None = None) -> None:
        self.rule = rule
        self.radius_px = radius_px
        self.z = z.detach().clone().requires_grad_(True)
        self.keep_image = keep_image.detach()
        self._m = torch.zeros_like(self.z)
        self._v = torch.zeros_like(self.z)
        self._t = 0
        self.attributes = None if attributes is None else attributes.detach().clone()
        self._moves_attributes = self.attributes is not None and rule.kind == "adam" and rule.attributes > 0
        if self.attributes is not None and self._moves_attributes:
            self.attributes.requires_grad_(True)
            self._ma = torch.zeros_like(self.attributes)
            self._va = torch.zeros_like(self.attributes)

    def _adam(self, param: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, lr: float) -> None:
        b1, b2 = self.BETAS
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (v / (1 - b2**self._t)).sqrt_().add_(self.EPS)
        param.addcdiv_(m, denom, value=-lr / (1 - b1**self._t))

    def step(self, decoder: Callable[..., torch.Tensor], paint: torch.Tensor, alpha: torch.Tensor,
             halo: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        """One update. Returns (the decoder output at z before the update, the paint loss).

        ``halo`` (1, 1, R, R): the stroke widened by ``rule.halo`` radii, if the caller keeps
        one; otherwise it is computed from ``alpha`` (a max-pool, slower).
        """
        with torch.enable_grad():
            out = decoder(self.z) if self.attributes is None else decoder(self.z, self.attributes)
            loss = paint_loss(out, paint, alpha, self.rule.chroma)
            total = loss
            if self.rule.kind == "adam":
                if self.rule.keep > 0 or self.rule.hue > 0:
                    if halo is None:
                        halo = halo_of(alpha, self.rule.halo * self.radius_px)
                    if self.rule.keep > 0:
                        outside = 1.0 - halo
                        n_out = outside.sum().clamp_min(1.0) * 3
                        total = total + self.rule.keep * (outside * (out - self.keep_image) ** 2).sum() / n_out
                    if self.rule.hue > 0:
                        total = total + self.rule.hue * hue_drift(out, self.keep_image, paint, alpha, halo)
                if self.rule.prior > 0:
                    d = self.z.shape[1]
                    total = total + self.rule.prior * (self.z.norm() - math.sqrt(d)) ** 2 / d
            moved = [self.z]
            if self._moves_attributes and self.attributes is not None:
                moved.append(self.attributes)
            grads = torch.autograd.grad(total, moved)
        grad = grads[0]
        with torch.no_grad():
            if self.rule.kind == "adam":
                self._t += 1
                self._adam(self.z, grad, self._m, self._v, self.rule.lr)
                if len(grads) > 1 and self.attributes is not None:
                    self._adam(self.attributes, grads[1], self._ma, self._va, self.rule.attributes)
            else:
                # Brock et al. 2016: one plain step, size 0.05 * (1 + brush width)
                self.z -= 0.05 * (1 + self.radius_px) * grad
        return out.detach(), float(loss.detach())


# ---- rendering ---------------------------------------------------------------------

@dataclass(frozen=True)
class MaskSettings:
    """How a new decoder output reaches the photo.

    The brush and the latent canvas *replace* content: the photo is blended towards G(z)
    by M = clip(gain * blur(mean_c |G(z) - G(z0)|) - floor, 0, 1) / (1 - floor), so only
    what clearly changed is taken from the (smoother) decoder output; and only near the strokes
    (``render``'s reach, ``stroke_reach``).

    Attribute sliders *shift* content: their change S = G(z) - G(z without the sliders) is
    added onto the photo, weighted by W = clip((blur(mean_c |S|) - shift_floor) /
    (shift_full - shift_floor), 0, 1), so the photo keeps its own detail and a subtle,
    spread-out change (the corners of a mouth lifting) shows in full instead of being
    cut to the part above M's threshold. A slider also moves broad areas (a hair colour
    lightens the background a little): W fades out towards the crop's border, so the edit
    has no visible edge where the crop ends in the photo.
    """

    sigma: float = 0.7  # in pixels of a 64-pixel crop; scaled with the resolution
    gain: float = 4.0
    floor: float = 0.08
    shift_sigma: float = 1.5
    shift_floor: float = 0.01  # mean |S| per pixel (images in [-1, 1]) below which nothing is added
    shift_full: float = 0.04  # ... and from which S is added in full
    shift_fade: float = 0.15  # W fades to 0 over this share of the crop at its border
    # The colour of both changes (the brush's G(z) - x and the sliders' S: their two opponent
    # chroma channels, not their lightness) is blurred this much, in pixels of a 64-pixel crop.
    # The decoder's output carries pixel-sized green and purple speckle that the photo's
    # paste-back enlarges into blotches; paint, a hair colour or a skin tone changes smoothly.
    # Lightness keeps its detail (strands, the frames of glasses, teeth), and under the brush the
    # photo keeps its own fine colour.
    chroma_sigma: float = 1.0


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    xs = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (xs / sigma) ** 2)
    return k / k.sum()


def blur(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, H, W) maps with reflected borders."""
    if sigma <= 0:
        return m
    k = _gaussian_kernel(sigma).to(m)
    r = (len(k) - 1) // 2
    m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(m, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


def smooth_chroma(change: torch.Tensor, sigma_at_64: float) -> torch.Tensor:
    """``change`` (N, 3, R, R) with its colour blurred by ``sigma_at_64`` (pixels of a 64-pixel
    crop, scaled with R) and its lightness kept as it is."""
    if sigma_at_64 <= 0:
        return change
    n, _, h, w = change.shape
    m = OPPONENT.to(change)  # orthonormal: its transpose turns it back
    opp = torch.einsum("kc,nchw->nkhw", m, change)
    chroma = blur(opp[:, 1:].reshape(n * 2, 1, h, w), sigma_at_64 * w / 64).reshape(n, 2, h, w)
    return torch.einsum("kc,nkhw->nchw", m, torch.cat([opp[:, :1], chroma], 1))


def _blurred_change(change: torch.Tensor, sigma_at_64: float) -> torch.Tensor:
    return blur(change.abs().mean(1, keepdim=True), sigma_at_64 * change.shape[-1] / 64)


def change_mask(generated: torch.Tensor, recon0: torch.Tensor, settings: MaskSettings = MaskSettings()) -> torch.Tensor:
    """(N, 1, R, R) blend weights in [0, 1]: where the decoder output moved away from G(z0)."""
    m = _blurred_change(generated - recon0, settings.sigma) * settings.gain
    return ((m - settings.floor) / (1 - settings.floor)).clamp(0, 1)


def brush_mask(generated: torch.Tensor, recon0: torch.Tensor, settings: MaskSettings = MaskSettings(),
               reach: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 1, R, R) the brush's blend weights: ``change_mask``, kept to the strokes' ``reach``
    (1, 1, R, R in [0, 1], ``stroke_reach``; None: everywhere)."""
    mask = change_mask(generated, recon0, settings)
    return mask if reach is None else mask * reach


def shift_weight(shift: torch.Tensor, settings: MaskSettings = MaskSettings()) -> torch.Tensor:
    """(N, 1, R, R) weights in [0, 1] with which a slider change is added to the photo."""
    m = _blurred_change(shift, settings.shift_sigma)
    w = ((m - settings.shift_floor) / (settings.shift_full - settings.shift_floor)).clamp(0, 1)
    if settings.shift_fade > 0:
        w = w * torch.from_numpy(edge_feather(shift.shape[-1], settings.shift_fade)).to(w)
    return w


def render(x: torch.Tensor, recon0: torch.Tensor, generated: torch.Tensor,
           settings: MaskSettings = MaskSettings(),
           without_sliders: torch.Tensor | None = None,
           region: torch.Tensor | None = None,
           reach: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The shown crop and where it differs from the photo x.

    ``generated`` is G(z); ``without_sliders`` is G(z minus the slider offsets) when any
    slider is set (None otherwise: then it is ``generated``). The brush's change is blended
    in, y = x + M c(G(z_brush) - x), where ``reach`` (1, 1, R, R in [0, 1], ``stroke_reach``;
    None: everywhere) lets it show; the sliders' change is added, y += W c(S), where ``region``
    (N or 1, 1, R, R in [0, 1]; None: everywhere) lets it show; c blurs a change's colour
    (``smooth_chroma``, ``settings.chroma_sigma``). Returns y (clipped to [-1, 1]) and
    max(M, W); where that is 0, y equals x exactly.
    """
    plain = generated if without_sliders is None else without_sliders
    mask = brush_mask(plain, recon0, settings, reach)
    y = torch.where(mask > 0, x + mask * smooth_chroma(plain - x, settings.chroma_sigma), x)
    if without_sliders is not None:
        shift = smooth_chroma(generated - without_sliders, settings.chroma_sigma)
        weight = shift_weight(shift, settings)
        if region is not None:
            weight = weight * region
        y = torch.where(weight > 0, (y + weight * shift).clamp(-1, 1), y)
        mask = torch.maximum(mask, weight)
    return y, mask


# a decoder as an edit calls it: (z, a) -> images (FaceModel.decode, EditSession.decoder)
DecoderFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def render_shift(decoder: DecoderFn, x: torch.Tensor, z: torch.Tensor, offset: torch.Tensor,
                 settings: MaskSettings = MaskSettings(), a: torch.Tensor | None = None,
                 a_moved: torch.Tensor | None = None) -> torch.Tensor:
    """What the editor shows of crops ``x`` (N, 3, R, R) encoded as ``z`` (N, D) after a slider
    adds ``offset`` (N, D or 1, D) to the latent, or, for a conditioned decoder, moves its
    attribute input from ``a`` (N, K) to ``a_moved``: the slider's change added onto the photo."""
    with torch.inference_mode():
        recon = decoder(z, a)
        moved = decoder(z + offset, a if a_moved is None else a_moved)
        shown, _ = render(x, recon, moved, settings, without_sliders=recon)
    return shown
