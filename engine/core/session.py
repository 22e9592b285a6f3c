"""The edit session: one photo, one chosen face, and everything done to it.

State (all on the engine side, never touched by Qt):
    photo      the decoded photo (full resolution, upright)
    face       the chosen face and its alignment transform
    x, z0      the aligned crop and its encoding; recon0 = G(z0)
    photo_map  for a model with a shortcut, the encoder's feature map of the crop: the decoder
               gets it everywhere but where the brush reaches (there z alone draws the face),
               and none while a slider is set (``kept_map``)
    z_base     the latent the brush and the latent canvas edit
    sliders    attribute offsets; the decoder sees z = z_base + sum_a v_a * dir_a
    hold       whether sliders hold their correlated attributes fixed (part of the edit)
    reach      where the brush's change may show: the strokes' halos (engine.core.edit.stroke_reach),
               None after the latent canvas or a sample, which change the whole face
    history    undo/redo snapshots of (z_base, sliders, hold, reach), one per finished action

A brush stroke goes ``brush_begin`` -> ``brush_to`` (per mouse sample, one latent update
each, returns a preview) -> ``brush_end`` (refines, records one undo step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from engine.core import align
from engine.core.attributes import AttributeSet, SliderValues, condition_input
from engine.core.checkpoint import LoadedModel
from engine.core.detail import HairDetail, StrandLayer, growth_map
from engine.core.edit import (
    BrushOptimizer,
    BrushRule,
    DecoderFn,
    MaskSettings,
    brush_mask,
    check_latent,
    render,
    stamp_segment,
    stroke_reach,
)
from engine.core.faces import Face
from engine.core.images import Photo, to_tensor, to_uint8
from engine.core.model import intensities
from engine.core.regions import Regions, find_regions

REFINE_STEPS_ON_RELEASE = 4  # the steps a stroke's release takes with no new paint (less those its hold took)
# While a stroke is drawn, the photo's map (``kept_map``) is faded again only once the growing
# reach has moved some cell's fade by more than this: each new map costs a decode of G(z0) as
# well as the brush's step. Its end takes the exact map.
MAP_REFRESH_DURING_STROKE = 0.3
# what the brush has moved: the latent and (a conditioned decoder) the attribute input's move
BrushState = tuple[torch.Tensor, torch.Tensor | None]


class StrokeMissedError(ValueError):
    """A stroke painted nothing: it lies outside the photo or the edited face's crop."""


@dataclass(frozen=True)
class Snapshot:
    z_base: np.ndarray  # float32 (D,)
    sliders: SliderValues = SliderValues()
    hold: bool = True
    reach: np.ndarray | None = None  # float32 (R, R) in [0, 1], never changed in place; None: everywhere
    # float32 (A,): the brush's move of a conditioned decoder's attribute input (None: a plain decoder)
    brush_attributes: np.ndarray | None = None

    def same_as(self, other: Snapshot) -> bool:
        return (self.sliders == other.sliders and self.hold == other.hold
                and _same_or_both_none(self.reach, other.reach)
                and _same_or_both_none(self.brush_attributes, other.brush_attributes)
                and np.array_equal(self.z_base, other.z_base))


def _same_or_both_none(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is b if a is None or b is None else np.array_equal(a, b)


@dataclass
class Stroke:
    color: np.ndarray  # (3,) in [-1, 1]
    radius: float  # crop pixels
    alpha: np.ndarray  # (R, R) coverage
    paint: np.ndarray  # (R, R, 3) target colours in [-1, 1]
    halo: np.ndarray  # (R, R) coverage of the stroke widened by rule.halo radii (not kept outside it)
    optimizer: BrushOptimizer
    reach_before: np.ndarray | None  # the session's reach when the stroke began
    last: tuple[float, float] | None = None
    losses: list[float] = field(default_factory=list)
    touches_photo: bool = False  # some sample's brush disc overlaps the photo
    settled: int = 0  # steps taken while held still since the last new paint (``brush_settle``)


@dataclass(frozen=True)
class KeptMap:
    """``EditSession.kept_map``'s cache: the map as faded by ``fade`` (None: no map at all), for
    this reach and sliders; ``exact`` when ``fade`` is this reach's own, not a stroke's earlier one."""

    reach: np.ndarray | None
    sliders_set: bool
    fade: torch.Tensor | None
    kept: torch.Tensor
    exact: bool


@dataclass(frozen=True)
class CropRender:
    """The model-resolution result of the current state."""

    shown: torch.Tensor  # (1, 3, R, R) what the editor shows (engine.core.edit.render)
    generated: torch.Tensor  # (1, 3, R, R) G(z)
    mask: torch.Tensor  # (1, 1, R, R) where shown differs from the photo's crop


class EditSession:
    def __init__(self, model: LoadedModel, photo: Photo, face: Face, device: str | torch.device = "cpu",
                 attributes: AttributeSet | None = None, mask: MaskSettings = MaskSettings(),
                 rule: BrushRule | None = None, z0: np.ndarray | None = None,
                 hair_detail: HairDetail | None = None) -> None:
        self.model = model
        self.hair_detail = hair_detail  # strands where a stroke grows hair (None: the pass is skipped)
        self.device = torch.device(device)
        self.resolution = model.config.resolution
        self.latent_dim = model.config.latent_dim
        self.attributes = attributes if attributes is not None else AttributeSet.empty(self.latent_dim)
        self.mask_settings = mask
        self.rule = rule or model.brush_rule  # the model's own brush settings unless told otherwise
        self.photo = photo
        self.set_face(face, z0)

    # ---- document ----------------------------------------------------------------
    def set_face(self, face: Face, z0: np.ndarray | None = None) -> None:
        """Align and encode a face; clears history (a new document generation)."""
        self.face = face
        self.transform = face.transform(self.resolution)
        crop = align.warp_to_crop(self.photo.pixels, self.transform, self.resolution)
        self.x = to_tensor(crop).to(self.device)
        self._regions: Regions | None = None
        self._region: tuple[frozenset[str], torch.Tensor] | None = None
        with torch.inference_mode():
            encoded = self.model.model.encoder(self.x)
            if z0 is None:
                z = encoded.mu
            else:
                z = torch.as_tensor(z0, dtype=torch.float32, device=self.device).view(1, -1)
            # a conditioned decoder's attribute input, as the encoder reads this photo (None: plain)
            self.a0 = None if encoded.attributes is None else intensities(encoded.attributes).clone()
            self.photo_map = None if encoded.shortcut is None else encoded.shortcut.clone()
        self._kept_map: KeptMap | None = None
        self._recon0: tuple[torch.Tensor | None, torch.Tensor] | None = None
        self.z0 = z.clone()
        self.z_base = z.clone()
        # the brush's move of the attribute input (``BrushRule.attributes``); zero until a stroke moves it
        self.brush_attributes = None if self.a0 is None else torch.zeros_like(self.a0)
        self.sliders = SliderValues()
        self.hold = True
        self.reach: np.ndarray | None = np.zeros((self.resolution, self.resolution), np.float32)
        self._reach: tuple[np.ndarray, torch.Tensor] | None = None
        self._offset: tuple[SliderValues, bool, torch.Tensor] | None = None
        self.history: list[Snapshot] = [self.snapshot()]
        self.position = 0
        self.stroke: Stroke | None = None
        self._render: CropRender | None = None
        self._plain: tuple[BrushState, torch.Tensor] | None = None
        self._growth: tuple[BrushState, np.ndarray | None, np.ndarray | None, np.ndarray] | None = None
        self._strands: tuple[tuple[float, tuple[int, ...]], np.ndarray, StrandLayer | None] | None = None

    def to(self, device: str | torch.device) -> None:
        """Move the session (not the model) to another device; a stroke in progress continues."""
        self.device = torch.device(device)
        if self.a0 is not None:
            self.a0 = self.a0.to(self.device)
        if self.brush_attributes is not None:
            self.brush_attributes = self.brush_attributes.to(self.device)
        for name in ("x", "z0", "z_base"):
            setattr(self, name, getattr(self, name).to(self.device))
        if self.photo_map is not None:
            self.photo_map = self.photo_map.to(self.device)
        self._kept_map = None
        self._recon0 = None
        self._plain = None
        self._growth = None
        self._strands = None
        self._offset = None
        self._region = None
        self._reach = None
        if self.stroke is not None:  # the optimiser restarts from the current latent
            old = self.stroke.optimizer
            self.stroke.optimizer = BrushOptimizer(self.z, old.rule, old.radius_px, old.keep_image.to(self.device),
                                                   self.brush_attributes)
        self._render = None

    @property
    def crop_pixels(self) -> np.ndarray:
        return to_uint8(self.x[0])

    # ---- latent --------------------------------------------------------------------
    def slider_offset(self) -> torch.Tensor:
        """The sliders' move of the latent, (1, D); computed again only when they or the mode change."""
        if self._offset is None or self._offset[:2] != (self.sliders, self.hold):
            offset = self.attributes.offset(self.sliders, self.hold).to(self.device).view(1, -1)
            self._offset = (self.sliders, self.hold, offset)
        return self._offset[2]

    @property
    def sliders_set(self) -> bool:
        return bool(self.sliders)

    @property
    def a(self) -> torch.Tensor | None:
        """The conditioned decoder's attribute input: the photo's reading moved by the brush and
        the CONDITION sliders, bent back towards the trained range past it (``condition_input``;
        None for a plain decoder)."""
        return self.attribute_input(self.brush_attributes)

    def attribute_input(self, brushed: torch.Tensor | None, sliders: bool = True) -> torch.Tensor | None:
        """The attribute input with the brush's move ``brushed`` (1, A), and the sliders' if ``sliders``."""
        if self.a0 is None or brushed is None:
            return None
        if not sliders:
            return condition_input(self.a0, brushed)
        offset = self.attributes.condition_offset(self.sliders, self.a0.shape[1]).to(self.device)
        return condition_input(self.a0, offset + brushed)

    def kept_map(self) -> torch.Tensor | None:
        """The photo's feature map as the decoder gets it (a model with a shortcut; else None):
        faded out where the brush reaches, so that there the latent alone draws the face and a
        stroke can change it; none at all when the change may show everywhere (after the latent
        canvas or a sample) or while a slider is set (the map holds the photo's attributes: with
        it, the 64-px model trained with --shortcut-drop turned 0 sliders good and 1 weak, without
        it 1 and 4, as npe attributes judged them). Kept while the reach and that stay the same,
        and during a stroke until its reach moves some cell's fade by ``MAP_REFRESH_DURING_STROKE``."""
        if self.photo_map is None:
            return None
        live = self.stroke is not None  # during a stroke a map a little behind the reach will do
        cached = self._kept_map
        if (cached is not None and cached.reach is self.reach and cached.sliders_set == self.sliders_set
                and (cached.exact or live)):
            return cached.kept
        reach = self.reach_tensor()
        fade = None if reach is None or self.sliders_set else F.adaptive_max_pool2d(reach, self.photo_map.shape[-2:])
        if (live and cached is not None and cached.sliders_set == self.sliders_set and fade is not None
                and cached.fade is not None and float((fade - cached.fade).abs().max()) <= MAP_REFRESH_DURING_STROKE):
            self._kept_map = replace(cached, reach=self.reach, exact=torch.equal(fade, cached.fade))
        else:  # a cell of the map is faded by the most the reach covers of it
            kept = torch.zeros_like(self.photo_map) if fade is None else self.photo_map * (1 - fade)
            self._kept_map = KeptMap(self.reach, self.sliders_set, fade, kept, True)
        return self._kept_map.kept

    @property
    def decoder(self) -> DecoderFn:
        """The decoder as this photo's edits use it now: (z, a) -> images, given ``kept_map``."""
        photo_map = self.kept_map()

        def decode(z: torch.Tensor, a: torch.Tensor | None = None) -> torch.Tensor:
            return self.model.model.decoder(z, a, photo_map)
        return decode

    @property
    def recon0(self) -> torch.Tensor:
        """G(z0) with the photo's own attributes: what the edits are measured from. With a
        shortcut it takes the map as ``kept_map`` gives it, so that leaving the map out is no change."""
        photo_map = self.kept_map()  # the same tensor while it stays the same (None without a shortcut)
        if self._recon0 is None or self._recon0[0] is not photo_map:
            with torch.inference_mode():
                self._recon0 = (photo_map, self.decoder(self.z0, self.a0).clone())
        return self._recon0[1]

    def generate(self, z: torch.Tensor, brushed: torch.Tensor | None = None, sliders: bool = True) -> torch.Tensor:
        """The decoder at ``z``, with the attribute input the brush (``brushed``, else the session's
        own move) and the sliders set (or the brush alone's)."""
        return self.decoder(z, self.attribute_input(self.brush_attributes if brushed is None else brushed, sliders))

    @property
    def z(self) -> torch.Tensor:
        """The latent the decoder sees."""
        return self.z_base + self.slider_offset()

    def snapshot(self) -> Snapshot:
        moved = self.brush_attributes
        return Snapshot(self.z_base[0].detach().cpu().numpy().astype(np.float32).copy(), self.sliders, self.hold,
                        self.reach, None if moved is None else moved[0].detach().cpu().numpy().astype(np.float32))

    def restore(self, snap: Snapshot) -> None:
        self.z_base = torch.from_numpy(snap.z_base.copy()).to(self.device).view(1, -1)
        self.sliders = snap.sliders
        self.hold = snap.hold
        self.reach = snap.reach
        if self.brush_attributes is not None:
            moved = snap.brush_attributes  # (a step saved before the brush moved attributes: none)
            self.brush_attributes = (torch.zeros_like(self.brush_attributes) if moved is None
                                     else torch.from_numpy(moved.copy()).to(self.device).view(1, -1))
        self._render = None

    def reach_tensor(self) -> torch.Tensor | None:
        """(1, 1, R, R): ``reach`` for the renderer, or None where the brush's change may show everywhere."""
        if self.reach is None:
            return None
        if self._reach is None or self._reach[0] is not self.reach:
            self._reach = (self.reach, torch.from_numpy(self.reach).to(self.device).view(1, 1, *self.reach.shape))
        return self._reach[1]

    @property
    def version(self) -> tuple[int, ...]:
        """Changes whenever the undo history or the position in it does (for caches and autosave)."""
        return (id(self), self.position, len(self.history), id(self.history[self.position]))

    def commit(self) -> bool:
        """Record the current state as one undo step (if it changed). Returns whether it did."""
        snap = self.snapshot()
        if snap.same_as(self.history[self.position]):
            return False
        del self.history[self.position + 1:]
        self.history.append(snap)
        self.position += 1
        return True

    def undo(self) -> bool:
        self.cancel_stroke()
        if self.position == 0:
            return False
        self.position -= 1
        self.restore(self.history[self.position])
        return True

    def redo(self) -> bool:
        self.cancel_stroke()
        if self.position + 1 >= len(self.history):
            return False
        self.position += 1
        self.restore(self.history[self.position])
        return True

    @property
    def can_undo(self) -> bool:
        return self.position > 0

    @property
    def can_redo(self) -> bool:
        return self.position + 1 < len(self.history)

    def reset(self) -> None:
        """Back to the encoded photo (one undo step)."""
        self.cancel_stroke()
        self.z_base = self.z0.clone()
        self.forget_brushed_attributes()
        self.sliders = SliderValues()
        self.reach = np.zeros((self.resolution, self.resolution), np.float32)
        self._render = None
        self.commit()

    def sample(self, seed: int | None = None) -> None:
        """A new random face from the prior (one undo step)."""
        self.cancel_stroke()
        g = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**31, ()).item()))
        self.z_base = torch.randn(1, self.latent_dim, generator=g).to(self.device)
        self.forget_brushed_attributes()
        self.sliders = SliderValues()
        self.reach = None  # a new face: shown everywhere
        self._render = None
        self.commit()

    def forget_brushed_attributes(self) -> None:
        if self.brush_attributes is not None:
            self.brush_attributes = torch.zeros_like(self.brush_attributes)

    def set_latent(self, z: np.ndarray | torch.Tensor) -> None:
        """Set the latent the decoder sees (latent canvas); sliders stay as they are. The change
        may then show anywhere on the face (a latent moves all of it)."""
        zt = torch.as_tensor(np.asarray(z, dtype=np.float32)).to(self.device).view(1, -1)
        check_latent(zt, self.latent_dim)
        self.z_base = zt - self.slider_offset()
        self.reach = None
        self._render = None

    def set_sliders(self, values: SliderValues | Mapping[str, float]) -> None:
        new = SliderValues.of(values)
        unknown = new.names() - set(self.attributes.names)
        if unknown:
            raise ValueError(f"unknown attributes: {', '.join(sorted(unknown))}")
        for name, v in new.items:
            self.attributes.check_value(name, v)
        self.sliders = new
        self._render = None

    def set_hold(self, on: bool) -> None:
        """Sliders hold their correlated attributes fixed (on) or move along their plain directions.
        The brush's latent stays; what the sliders add follows the new mode."""
        self.hold = bool(on)
        self._render = None

    # ---- brush -------------------------------------------------------------------
    def photo_to_crop(self, x: float, y: float) -> tuple[float, float]:
        p = align.apply(self.transform, np.array([[x, y]]))[0]
        return float(p[0]), float(p[1])

    def brush_begin(self, color_rgb: tuple[int, int, int], radius_photo: float, strength: float = 1.0) -> None:
        """Start a stroke with a colour (0-255 RGB), a radius in photo pixels and a strength
        (a factor on the latent step size)."""
        self.cancel_stroke()
        if not 0 < strength <= 10:
            raise ValueError(f"brush strength must be in (0, 10], got {strength}")
        rule = replace(self.rule, lr=self.rule.lr * strength, attributes=self.rule.attributes * strength)
        r = self.resolution
        radius = max(0.5, radius_photo * align.scale_of(self.transform))
        with torch.inference_mode():
            keep = self.generate(self.z).clone()
        self.stroke = Stroke(
            color=np.asarray(color_rgb, dtype=np.float32) / 127.5 - 1.0,
            radius=radius,
            alpha=np.zeros((r, r), dtype=np.float32),
            paint=np.zeros((r, r, 3), dtype=np.float32),
            halo=np.zeros((r, r), dtype=np.float32),
            optimizer=BrushOptimizer(self.z, rule, radius, keep, self.brush_attributes),
            reach_before=self.reach,
        )

    def _paint_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self.stroke is not None
        paint = torch.from_numpy(self.stroke.paint).permute(2, 0, 1)[None].to(self.device)
        alpha = torch.from_numpy(self.stroke.alpha)[None, None].to(self.device)
        halo = torch.from_numpy(self.stroke.halo)[None, None].to(self.device)
        return paint, alpha, halo

    def brush_to(self, points: list[tuple[float, float]]) -> CropRender:
        """Extend the stroke through ``points`` (photo pixels) and take one latent step."""
        if self.stroke is None:
            raise RuntimeError("brush_to before brush_begin")
        s = self.stroke
        w, h = self.photo.size
        r_photo = s.radius / align.scale_of(self.transform)
        for px, py in points:
            s.touches_photo = s.touches_photo or (-r_photo < px < w + r_photo and -r_photo < py < h + r_photo)
            p = self.photo_to_crop(px, py)
            stamp_segment(s.alpha, s.paint, s.last or p, p, s.radius, s.color)
            stamp_segment(s.halo, None, s.last or p, p, s.radius * (1 + self.rule.halo), s.color)
            s.last = p
        if not s.alpha.any():  # the stroke is entirely outside the face crop
            return self.render()
        if s.reach_before is not None:  # the stroke's change shows near it (and earlier strokes' near them)
            self.reach = np.maximum(s.reach_before, stroke_reach(s.halo, s.radius))
        if points:
            s.settled = 0  # new paint: the release's steps are all to take again
        return self._brush_step()

    def can_settle(self) -> bool:
        """Whether a stroke held still has release steps left to take now (``brush_settle``)."""
        s = self.stroke
        return s is not None and s.settled < REFINE_STEPS_ON_RELEASE and bool(s.alpha.any())

    def brush_settle(self) -> CropRender | None:
        """While a stroke is held still, take one of the steps its release would take, so the
        preview shows what letting go will give; the release then takes only the steps left. The
        first one fades the photo's map exactly, as the release does, so a stroke held until
        settled ends exactly where one released at once would. None: nothing left to take."""
        if not self.can_settle():
            return None
        assert self.stroke is not None
        if self.stroke.settled == 0:
            self._kept_map = None
        self.stroke.settled += 1
        return self._brush_step()

    def _brush_step(self) -> CropRender:
        """One latent step of the live stroke towards its paint; the preview it gives."""
        s = self.stroke
        assert s is not None
        paint, alpha, halo = self._paint_tensors()
        offset = self.slider_offset()
        plain = None
        if self.sliders_set:  # the brush's own change, for the preview's blend mask
            with torch.inference_mode():
                plain = self.generate(s.optimizer.z.detach() - offset, s.optimizer.attributes, sliders=False)
        generated, loss = s.optimizer.step(self.generate, paint, alpha, halo)
        s.losses.append(loss)
        self.take_stroke_state()
        # the preview shows the decoder output computed for this step (one step behind)
        shown, mask = render(self.x, self.recon0, generated, self.mask_settings, plain, self.slider_region(),
                             self.reach_tensor())
        self._render = None
        return CropRender(shown, generated, mask)

    def brush_end(self, refine_steps: int = REFINE_STEPS_ON_RELEASE) -> bool:
        """Finish the stroke: a few more steps (less those a hold has taken since the last paint,
        ``brush_settle``), then one undo step. Returns whether anything changed.

        Raises ``StrokeMissedError`` when the stroke touched none of the face's crop (nothing
        changes then), so the user is told instead of left wondering.
        """
        s = self.stroke
        if s is None:
            return False
        if s.last is not None and not s.alpha.any():
            self.cancel_stroke()
            if not s.touches_photo:
                raise StrokeMissedError("the stroke lies entirely outside the photo "
                                        f"({self.photo.size[0]}x{self.photo.size[1]} pixels): nothing was changed")
            raise StrokeMissedError("the stroke missed the face being edited (paint on or around it): "
                                    "nothing was changed")
        if s.alpha.any():
            self._kept_map = None  # the steps on release, and all after, decode with the reach's exact map
            paint, alpha, halo = self._paint_tensors()
            for _ in range(refine_steps - s.settled):
                _, loss = s.optimizer.step(self.generate, paint, alpha, halo)
                s.losses.append(loss)
            self.take_stroke_state()
        self.stroke = None
        self._render = None
        return self.commit()

    def take_stroke_state(self) -> None:
        """The stroke's optimiser state becomes the session's (its latent less the sliders' move)."""
        assert self.stroke is not None
        opt = self.stroke.optimizer
        self.z_base = opt.z.detach() - self.slider_offset()
        if opt.attributes is not None:
            self.brush_attributes = opt.attributes.detach().clone()

    def paint(self, color_rgb: tuple[int, int, int], radius_photo: float, points: list[tuple[float, float]],
              strength: float = 1.0) -> bool:
        """A whole stroke, one latent step per point as the mouse gives them (the command line and
        the evaluations replay strokes this way). Returns whether anything changed."""
        self.brush_begin(color_rgb, radius_photo, strength)
        for p in points:
            self.brush_to([p])
        return self.brush_end()

    def cancel_stroke(self) -> None:
        if self.stroke is not None:
            self.stroke = None
            self.restore(self.history[self.position])

    # ---- output ------------------------------------------------------------------
    def render(self) -> CropRender:
        if self._render is None:
            with torch.inference_mode():
                generated = self.generate(self.z)
                plain = self._without_sliders() if self.sliders_set else None
                shown, mask = render(self.x, self.recon0, generated, self.mask_settings, plain,
                                     self.slider_region(), self.reach_tensor())
            self._render = CropRender(shown, generated, mask)
        return self._render

    @property
    def regions(self) -> Regions:
        """The face's region map, found when a slider first needs it (a brush-only edit never does)."""
        if self._regions is None:
            self._regions = find_regions(self.photo.pixels, self.transform, self.resolution)
        return self._regions

    def slider_region(self) -> torch.Tensor | None:
        """(1, 1, R, R): where the set sliders' change may show (the person, or for hair
        sliders only the hair); None when no slider is set."""
        if not self.sliders_set:
            return None
        names = frozenset(self.sliders.names())
        if self._region is None or self._region[0] != names:
            region = torch.from_numpy(self.regions.for_sliders(names)).to(self.device)
            self._region = (names, region.view(1, 1, *region.shape))
        return self._region[1]

    def _without_sliders(self) -> torch.Tensor:
        """G(z_base), kept while z_base stays the same (as it does while a slider is dragged)."""
        if self._plain is None or not self.brush_state_is(self._plain[0]):
            self._plain = (self.brush_state(), self.generate(self.z_base, sliders=False))
        return self._plain[1]

    def brush_state(self) -> BrushState:
        """What the brush has moved (a copy): the latent and the attribute input's move."""
        moved = self.brush_attributes
        return self.z_base.clone(), None if moved is None else moved.clone()

    def brush_state_is(self, state: BrushState) -> bool:
        z, moved = state
        now = self.brush_attributes
        return torch.equal(z, self.z_base) and (moved is None or now is None or torch.equal(moved, now))

    def composite(self, pixels: np.ndarray | None = None, scale: float = 1.0,
                  result: CropRender | None = None, detail: bool = False) -> np.ndarray:
        """The photo (or a copy of it resized by ``scale``) with the edit pasted back: the photo
        moves by the shown crop's change, so it keeps its own fine detail (what the editor shows
        and what is exported). With ``detail``, where a stroke grew hair over skin the photo's
        fine detail there is replaced by strands (``hair_detail``; the editor shows it once a
        stroke ends, and export always)."""
        res = result or self.render()
        change = ((res.shown - self.x)[0] * 127.5).permute(1, 2, 0).detach().float().cpu().numpy()
        out = self.paste(change, res.mask, pixels, scale, add=True)
        if detail and self.hair_detail is not None:
            layer = self.strands(out, scale)
            if layer is not None:
                out = layer.put(out, self.photo.pixels if pixels is None else pixels)
        return out

    def strands(self, picture: np.ndarray, scale: float) -> StrandLayer | None:
        """The hair detail's strands for a picture of the photo at ``scale`` (``picture``: the
        edit pasted into it), or None where no stroke grew hair. Kept while the latent, the
        scale and the picture's size stay the same, so a slider moved after a stroke keeps
        them and stays fast."""
        growth = self.growth()
        if growth is None or self.hair_detail is None:
            return None
        key = (scale, picture.shape)
        if self._strands is None or self._strands[0] != key or self._strands[1] is not growth:
            layer = self.hair_detail.layer(picture, growth, self.transform_at(scale), self.brushed_view()[1])
            self._strands = (key, growth, layer)
        return self._strands[2]

    def growth(self) -> np.ndarray | None:
        """(R, R): where the brush grew hair over skin (``detail.growth_map``), or None when it
        grew none; sliders never do."""
        return self.brushed_view()[0]

    def brushed_view(self) -> tuple[np.ndarray | None, np.ndarray]:
        """The growth map and the crop as the brush alone left it (R, R, 3 uint8), kept while
        the latent and the brush's reach stay the same."""
        if self._growth is None or self._growth[1] is not self.reach or not self.brush_state_is(self._growth[0]):
            with torch.inference_mode():
                plain = self.generate(self.z_base, sliders=False)
                brushed = brush_mask(plain, self.recon0, self.mask_settings, self.reach_tensor())
                after = to_uint8((self.x + brushed * (plain - self.x))[0])
            grow = None
            if self.brushed:
                grow = growth_map(self.crop_pixels, after, brushed[0, 0].cpu().numpy(), self.regions.strands)
            self._growth = (self.brush_state(), self.reach, grow if grow is not None and grow.any() else None, after)
        return self._growth[2], self._growth[3]

    def transform_at(self, scale: float) -> np.ndarray:
        """The crop's transform from a copy of the photo resized by ``scale``."""
        t = self.transform.copy()
        if scale != 1.0:
            t[:, :2] /= scale
            # pixel centres: photo x = (display x + 0.5) / scale - 0.5
            t[:, 2] = align.apply(self.transform, np.array([[0.5 / scale - 0.5, 0.5 / scale - 0.5]]))[0]
        return t

    def paste(self, layer: np.ndarray, weight: torch.Tensor, pixels: np.ndarray | None = None,
              scale: float = 1.0, add: bool = False) -> np.ndarray:
        """Put a crop-sized ``layer`` (R, R, 3: an image in 0..255, or with ``add`` a change) into
        the photo, or into a copy of it resized by ``scale``, where ``weight`` (1, 1, R, R) says."""
        base = self.photo.pixels if pixels is None else pixels
        return align.paste_back(base, self.transform_at(scale), layer, weight[0, 0].detach().cpu().numpy(), add=add)

    @property
    def edited(self) -> bool:
        moved_a = self.a0 is not None and self.sliders_set and not torch.equal(self.a, self.a0)  # type: ignore[arg-type]
        return moved_a or self.brushed or not torch.equal(self.z, self.z0)

    @property
    def brushed(self) -> bool:
        """Whether the brush (or the latent canvas, a sample) moved anything from the encoded photo."""
        moved = self.brush_attributes
        return not torch.equal(self.z_base, self.z0) or (moved is not None and bool(moved.any()))

    def latent_grid(self) -> np.ndarray:
        """The current latent as a (rows, cols) array, for the latent canvas."""
        rows, cols = self.model.config.grid
        return self.z[0].detach().cpu().numpy().reshape(rows, cols)


def to_255(t: torch.Tensor) -> np.ndarray:
    """(1, 3, R, R) in [-1, 1] -> float32 (R, R, 3) in 0..255."""
    return ((t[0].detach().float().cpu().clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()


def fit_scale(width: int, height: int, max_w: int, max_h: int) -> float:
    """The scale that fits a width x height photo inside max_w x max_h (never enlarging)."""
    return min(1.0, max_w / width, max_h / height) if width and height else 1.0

