"""``npe eval``: how well a model reconstructs held-out faces and follows the brush.

Reconstruction (aligned faces, encoder mean -> decoder):
    psnr        dB, 8-bit
    ssim        mean structural similarity (11x11 Gaussian window, per channel)
    sharpness   Laplacian energy of the reconstruction / of the original (1 = as sharp)
Brush (a fixed set of strokes in template coordinates, replayed through ``EditSession``
exactly as the editor does, one latent update per mouse sample):
    brush_color_error_reduction  1 - (error after / error before), error = mean squared
                                 distance of the shown painted pixels to the paint colour
    outside_change               mean |shown - photo| (0..1) outside the stroke dilated by
                                 two brush radii
    brush_hue_drift              per pixel the stroke and its halo visibly moved: the CIELAB
                                 (a*, b*) distance of the shown colour from the line between the
                                 photo's colour there and the paint's (mean, p90, per stroke; a
                                 colour cast shows here, a mix of photo and paint does not)
    brush_export_lab             the same strokes on each face enlarged 4x and exported at that
                                 size (paste-back keeps the photo's detail, so the exported colour
                                 is not the crop's): per stroke, CIELAB distance to the paint
                                 before and after (Delta E 1976) and the mean signed residual
                                 L*, a*, b* (export - paint): a colour cast shows as a biased
                                 a* (negative: green) or b* (negative: blue)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.core import align
from engine.core.edit import BrushRule, MaskSettings, halo_of
from engine.core.faces import find_faces, whole_image_face
from engine.core.images import READABLE_SUFFIXES, ImageError, Photo, load_photo, resized, to_tensor, to_uint8
from engine.core.landmarks import EyeRefiner, _read_rgb
from engine.core.model import FaceModel
from engine.core.model_folder import ModelFolder
from engine.core.pipeline import Engine, detect, open_session
from engine.core.session import EditSession
from engine.tools.attribute_learning import evaluate_attributes
from engine.tools.data import (
    AlignedFaces,
    Item,
    _held_out,
    aligned_cache,
    celeba_eyes,
    celeba_with_eyes,
    list_items,
)


@dataclass(frozen=True)
class StrokeSpec:
    name: str
    color: tuple[int, int, int]
    radius: float  # fraction of the crop side
    points: tuple[tuple[float, float], ...]  # template fractions


STROKES = (
    StrokeSpec("dark hair on forehead", (30, 22, 18), 0.05, ((0.35, 0.26), (0.5, 0.22), (0.65, 0.26))),
    StrokeSpec("light on mouth", (235, 225, 215), 0.03, ((0.42, 0.77), (0.5, 0.78), (0.58, 0.77))),
    StrokeSpec("blond hair", (215, 180, 110), 0.05, ((0.2, 0.3), (0.22, 0.5), (0.2, 0.7))),
    StrokeSpec("dark eyebrows", (25, 20, 20), 0.025, ((0.3, 0.41), (0.42, 0.4))),
)
EVENTS_PER_STROKE = 20


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    xs = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(xs**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of (N, 3, H, W) images in [0, 1]."""
    w = gaussian_window().to(a).repeat(3, 1, 1, 1)
    c1, c2 = 0.01**2, 0.03**2

    def filt(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, groups=3)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3))


def laplacian_energy(x: torch.Tensor) -> torch.Tensor:
    """Mean squared Laplacian of the grey image, per image; x in [0, 1]."""
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    k = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3).to(x)
    return F.conv2d(grey, k).pow(2).mean(dim=(1, 2, 3))


def reconstruction_metrics(model: torch.nn.Module, crops: np.ndarray, batch: int = 50,
                           resolution: int | None = None) -> dict[str, float]:
    """PSNR, SSIM and sharpness of the model's reconstructions of ``crops`` (N, S, S, 3 uint8).
    When the model's ``resolution`` is not S, it reads the crops resized to its own size and
    its reconstructions are resized back to S: models of different resolutions are then
    scored on the same faces at the same size."""
    psnrs, ssims, sharp_r, sharp_o = [], [], [], []
    for i in range(0, len(crops), batch):
        x01 = torch.from_numpy(crops[i:i + batch]).permute(0, 3, 1, 2).float() / 255
        x = resized(x01, resolution or x01.shape[-1]) * 2 - 1
        with torch.inference_mode():
            r = model.reconstruct(x)  # type: ignore[operator]
        r01 = torch.from_numpy(to_uint8(r)).permute(0, 3, 1, 2).float() / 255
        r01 = resized(r01, x01.shape[-1]).clamp(0, 1)
        mse = (x01 - r01).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
        psnrs.append(10 * torch.log10(1 / mse))
        ssims.append(ssim(x01, r01))
        sharp_r.append(laplacian_energy(r01))
        sharp_o.append(laplacian_energy(x01))
    energy_o = torch.cat(sharp_o)
    return {
        "psnr": round(float(torch.cat(psnrs).mean()), 3),
        "ssim": round(float(torch.cat(ssims).mean()), 4),
        "sharpness": round(float(torch.cat(sharp_r).sum() / energy_o.sum()), 4),
    }


def brush_metrics(engine: object, crops: np.ndarray, rule: BrushRule | None = None,
                  mask: MaskSettings | None = None) -> dict[str, object]:
    """Replay ``STROKES`` on each crop through ``EditSession``; average the effects."""
    loaded = engine.loaded  # type: ignore[attr-defined]
    res = loaded.config.resolution
    reductions: list[float] = []
    outside: list[float] = []
    per_stroke: dict[str, list[float]] = {s.name: [] for s in STROKES}
    drift: dict[str, list[np.ndarray]] = {s.name: [] for s in STROKES}
    ms: list[float] = []
    for crop in crops:
        photo = Photo(pixels=crop, name="eval")
        for spec in STROKES:
            s = EditSession(loaded, photo, whole_image_face(res, res), engine.device,  # type: ignore[attr-defined]
                            rule=rule or loaded.brush_rule, mask=mask or MaskSettings())
            radius = spec.radius * res
            samples = _stroke_samples(spec, res)
            t0 = time.perf_counter()
            s.brush_begin(spec.color, radius)
            for p in samples:
                s.brush_to([(float(p[0]), float(p[1]))])
            alpha = torch.from_numpy(s.stroke.alpha.copy())[None, None]  # type: ignore[union-attr]
            s.brush_end()
            ms.append((time.perf_counter() - t0) * 1000 / EVENTS_PER_STROKE)
            shown = s.render().shown
            paint = torch.tensor(spec.color, dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1
            before = float(((s.x - paint) ** 2 * alpha).sum() / (alpha.sum() * 3))
            after = float(((shown - paint) ** 2 * alpha).sum() / (alpha.sum() * 3))
            red = 1 - after / max(before, 1e-8)
            reductions.append(red)
            per_stroke[spec.name].append(red)
            out = (1 - halo_of(alpha, 2 * radius)) > 0.5
            diff = (shown - s.x).abs().mean(1, keepdim=True) / 2  # 0..1 units
            outside.append(float(diff[out].mean()) if out.any() else 0.0)
            drift[spec.name].append(_hue_drift(s.x, shown, spec.color, ~out[0, 0].numpy()))
    every = np.concatenate([d for v in drift.values() for d in v] + [np.zeros(0)])

    def mean(v: list[np.ndarray]) -> float | None:
        d = np.concatenate(v + [np.zeros(0)])
        return round(float(d.mean()), 2) if d.size else None

    return {
        "brush_color_error_reduction": round(float(np.mean(reductions)), 4),
        "outside_change": round(float(np.mean(outside)), 5),
        "brush_per_stroke": {k: round(float(np.mean(v)), 4) for k, v in per_stroke.items()},
        "brush_hue_drift": {"mean": mean([every]),
                            "p90": round(float(np.percentile(every, 90)), 2) if every.size else None,
                            **{k: mean(v) for k, v in drift.items()}},
        "brush_rule": asdict(rule or loaded.brush_rule),
        "brush_ms_per_event": round(float(np.median(ms)), 2),
    }


def _hue_drift(x: torch.Tensor, shown: torch.Tensor, color: tuple[int, int, int], near: np.ndarray) -> np.ndarray:
    """Per pixel near a stroke that visibly moved (> 8 / 255): the CIELAB (a*, b*) distance of the
    shown colour from the line between the photo's colour and the paint's there. Mixing the two
    gives 0; a cast towards a third hue (dark paint turning green) does not."""
    before, after = to_uint8(x[0]).astype(np.float32), to_uint8(shown[0]).astype(np.float32)
    moved = near & (np.abs(after - before).max(axis=2) > 8)
    if not moved.any():
        return np.zeros(0, np.float32)
    c0, c = _lab(before[moved])[:, 1:], _lab(after[moved])[:, 1:]
    d = _lab(np.array(color, np.float32))[1:] - c0
    t = np.clip(((c - c0) * d).sum(1) / np.maximum((d * d).sum(1), 1e-6), 0, 1)
    return np.linalg.norm(c - c0 - t[:, None] * d, axis=1)


def _stroke_samples(spec: StrokeSpec, size: float) -> np.ndarray:
    """The stroke's polyline in pixels of a square of ``size``, resampled to EVENTS_PER_STROKE samples."""
    pts = np.array(spec.points) * size - 0.5
    seg = np.cumsum(np.r_[0, np.hypot(*np.diff(pts, axis=0).T)])
    ts = np.linspace(0, seg[-1], EVENTS_PER_STROKE)
    return np.stack([np.interp(ts, seg, pts[:, 0]), np.interp(ts, seg, pts[:, 1])], 1)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 or 0..255 float RGB (..., 3) -> CIELAB (..., 3)."""
    a = np.asarray(rgb, np.float32).reshape(-1, 1, 3) / 255.0
    return cv2.cvtColor(a, cv2.COLOR_RGB2Lab).reshape(np.shape(rgb))


def export_lab_metrics(engine: Engine, crops: np.ndarray, scale: int = 4,
                       rule: BrushRule | None = None) -> dict[str, dict[str, float]]:
    """``STROKES`` on each crop enlarged ``scale`` times, measured in CIELAB on the exported photo
    under the stroke (its centre line widened to 0.8 of the brush radius)."""
    res = engine.loaded.config.resolution
    size = res * scale
    rows: dict[str, list[list[float]]] = {s.name: [] for s in STROKES}
    for crop in crops:
        big = cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)
        photo = Photo(pixels=big, name="eval")
        for spec in STROKES:
            s = EditSession(engine.loaded, photo, whole_image_face(size, size), engine.device, engine.attributes,
                            rule=rule)
            samples = _stroke_samples(spec, size)
            s.paint(spec.color, spec.radius * size, [(float(x), float(y)) for x, y in samples])
            exported = s.composite()
            under = np.zeros((size, size), np.uint8)
            cv2.polylines(under, [np.round(samples).astype(np.int32)], False, 1,
                          thickness=max(1, int(round(1.6 * spec.radius * size))))
            inside = under.astype(bool)
            paint = _lab(np.array(spec.color, np.float32))
            before = _lab(big[inside]) - paint
            after = _lab(exported[inside]) - paint
            rows[spec.name].append([float(np.linalg.norm(before, axis=1).mean()),
                                    float(np.linalg.norm(after, axis=1).mean()), *after.mean(0).tolist()])
    out = {}
    for name, vals in rows.items():
        m = np.mean(vals, 0)
        out[name] = {"delta_e_before": round(float(m[0]), 2), "delta_e_after": round(float(m[1]), 2),
                     "reduction": round(float(1 - m[1] / max(m[0], 1e-6)), 4),
                     "residual_L": round(float(m[2]), 2), "residual_a": round(float(m[3]), 2),
                     "residual_b": round(float(m[4]), 2)}
    return out


# The prepared sets whose held-out faces ``npe eval`` scores: every figure published so far is on
# CelebA's.
EVAL_SETS = ("celeba",)


def load_eval_crops(data: Path, resolution: int, n: int, refiner: EyeRefiner | None = None
                    ) -> tuple[np.ndarray, str, int]:
    """Held-out aligned faces from prepared data, or detected+aligned faces from a plain folder.
    From prepared data the faces are CelebA's held-out ones (``EVAL_SETS``) whatever else the
    cache holds, so that adding a set to it (LFW, for a training run) leaves every model's
    figures comparable; a cache without CelebA gives its own held-out faces."""
    if (data / "celeba").is_dir() or any(data.glob("aligned-*/meta.json")):
        cache = aligned_cache(data, resolution)
        test = AlignedFaces(cache, split="test", sets=EVAL_SETS)
        source = f"held-out split ({', '.join(EVAL_SETS)})"
        if len(test) == 0:
            test, source = AlignedFaces(cache, split="test"), "held-out split"
        rows = np.linspace(0, len(test) - 1, min(n, len(test))).astype(int)
        return test.images(rows), source, 0
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in READABLE_SUFFIXES)
    crops: list[np.ndarray] = []
    missed = 0
    for p in files:
        if len(crops) >= n:
            break
        try:
            photo = load_photo(p)
        except ImageError:
            missed += 1
            continue
        faces = detect(photo, refiner)
        if not faces:
            missed += 1
            continue
        crops.append(align.warp_to_crop(photo.pixels, faces[0].transform(resolution), resolution))
    if not crops:
        raise ValueError(f"no faces found in {data}")
    return np.stack(crops), "photo folder (detected and aligned)", missed


def between_two_faces(model: FaceModel, first: torch.Tensor, second: torch.Tensor,
                      k: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The decoder's inputs for ``k`` steps from one face (1, 3, R, R) to another: each part of
    what the encoder reads (``FaceModel.decoder_inputs``) blended alike, so the ends are the two
    reconstructions. A latent alone would decode to the model's average face where the shortcut
    carries the person."""
    w = torch.linspace(0, 1, k, device=first.device)

    def blend(t: torch.Tensor) -> torch.Tensor:  # rows 0 and 1 of t, and k - 2 steps between them
        wk = w.view(-1, *[1] * (t.dim() - 1))
        return t[0:1] * (1 - wk) + t[1:2] * wk

    mu, a, shortcut = model.decoder_inputs(torch.cat([first, second]))
    return blend(mu), None if a is None else blend(a), None if shortcut is None else blend(shortcut)


def write_grid(model: FaceModel, crops: np.ndarray, path: Path, latent_dim: int) -> None:
    k = min(8, len(crops))
    device = next(model.parameters()).device
    x = to_tensor(crops[:k]).to(device)
    g = torch.Generator().manual_seed(7)
    with torch.inference_mode():
        recon = model.reconstruct(x)
        samples = model.decode(torch.randn(k, latent_dim, generator=g).to(device))
        inter = model.decode(*between_two_faces(model, x[0:1], x[min(1, k - 1):min(1, k - 1) + 1], k))
    rows = [torch.cat(list(t.cpu()), 2) for t in (x, recon, samples, inter)]
    Image.fromarray(to_uint8(torch.cat(rows, 1))).resize(
        (k * 128, 4 * 128), Image.Resampling.NEAREST if crops.shape[1] < 128 else Image.Resampling.BILINEAR
    ).save(path)


@dataclass
class EvalOptions:
    """``npe eval``: what to evaluate, on which data and model."""

    data: str
    n: int | None = None  # faces to evaluate (None: 500, or 24 whole photos for photo_edits)
    grid: str = "eval-grid.png"  # where to write the image grid
    attributes: bool = False  # the attribute sliders instead
    alignment: bool = False  # face detection and eye alignment instead
    photo_edits: bool = False  # edits on whole photos at their own resolution instead (texture, background)
    compare_at: int | None = None  # also score reconstructions at this size (models of any resolution, same faces)
    rule: str = "adam"  # brush update rule to measure (adam or sgd2016)
    brush_lr: float | None = None  # the brush's step size to measure (None: the model's own)
    brush_hue: float | None = None  # the brush's hue-drift weight to measure (None: the model's own)
    brush_attributes: float | None = None  # the brush's step on the attribute input to measure (None: the model's own)
    brush_n: int = 24  # faces to replay the brush strokes on
    threads: int = 0  # CPU threads (0: torch's default)
    weights: str | None = None  # model folder (default: pretrained/)
    device: str = "auto"

    def count(self, default: int = 500) -> int:
        """How many faces (or photos) to evaluate: ``n``, or the evaluation's own default."""
        return default if self.n is None else self.n


def evaluate(opts: EvalOptions) -> dict[str, object]:
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.attributes:
        return evaluate_attributes(opts)
    n = opts.count()
    if opts.alignment:
        refiner = ModelFolder.find(opts.weights).load_refiner()
        if landmark_folder(Path(opts.data)) is not None:
            return photo_alignment_metrics(Path(opts.data), refiner, n)
        return alignment_metrics(Path(opts.data), refiner, n)
    engine = Engine.load(opts.weights, opts.device)
    if opts.photo_edits:
        return photo_edit_metrics(engine, Path(opts.data), opts.count(24))
    model = engine.loaded.model
    res = engine.loaded.config.resolution
    crops, source, missed = load_eval_crops(Path(opts.data), res, n, engine.refiner)
    t0 = time.perf_counter()
    out: dict[str, object] = {"n": int(len(crops)), "source": source, "weights": str(engine.folder.path),
                              "model_id": engine.loaded.model_id, "resolution": res}
    if missed:
        out["skipped_no_face"] = missed
    out.update(reconstruction_metrics(model, crops))
    if opts.compare_at:
        same, _, _ = load_eval_crops(Path(opts.data), opts.compare_at, n, engine.refiner)
        out[f"at_{opts.compare_at}px"] = reconstruction_metrics(model, same, resolution=res)
    n_brush = min(len(crops), opts.brush_n)
    rule = replace(engine.loaded.brush_rule, kind=opts.rule)
    if opts.brush_lr is not None:
        rule = replace(rule, lr=opts.brush_lr)
    if opts.brush_hue is not None:
        rule = replace(rule, hue=opts.brush_hue)
    if opts.brush_attributes is not None:
        rule = replace(rule, attributes=opts.brush_attributes)
    out.update(brush_metrics(engine, crops[:n_brush], rule))
    out["brush_export_lab"] = export_lab_metrics(engine, crops[:max(1, n_brush // 3)], rule=rule)
    out["brush_n"] = n_brush
    grid = Path(opts.grid)
    write_grid(model, crops, grid, engine.loaded.config.latent_dim)
    out["grid"] = str(grid)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out



# The fringe stroke of the photo test (template fractions) and the head's envelope: outside it is
# clearly background in the canonical framing (the crop's corners beside and above the head).
FRINGE = StrokeSpec("dark fringe", (35, 25, 20), 0.05, ((0.3, 0.3), (0.5, 0.27), (0.7, 0.3)))
HEAD_ENVELOPE = ((0.5, 0.5), (0.44, 0.56))  # centre, radii (template fractions)
INNER_FACE = ((0.5, 0.62), (0.17, 0.2))  # eyes, nose, mouth and cheeks: skin a hair colour must not tint
TOP_OF_HEAD = ((0.5, 0.2), (0.2, 0.07))  # above the forehead: hair on most heads, where a hair colour must show
# The forehead above the brows: bare skin on a face without bangs (CelebA's label), which a hair
# colour must not tint either.
BARE_FOREHEAD = ((0.5, 0.36), (0.11, 0.035))
EYES = ((0.5, 0.48), (0.3, 0.08))  # both eyes and the bridge of the nose: where glasses are
MOUTH_AND_CHIN = ((0.5, 0.74), (0.14, 0.09))  # where glasses never are, and a beard is
LIPS = ((0.5, 0.765), (0.07, 0.025))  # within the lips: their own colour, which pale skin must leave
# Sliders about one part of the face, at +1: (where it must show, where it must not) by name
PART_SLIDERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pale_skin": (("face",), ("hair", "background", "lips")),
    "eyeglasses": (("eyes",), ("mouth_and_chin", "hair")),
    "beard": (("mouth_and_chin",), ("eyes", "hair")),
    "bangs": (("hair",), ("mouth_and_chin",)),
    "smiling": (("mouth_and_chin",), ("hair", "background")),
}


def _laplacian_energy(pixels: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return np.abs(cv2.Laplacian(gray, cv2.CV_32F, ksize=3))


def _change_255(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(H, W) float: how far an edit moved each pixel of a uint8 photo, the mean over its channels (0..255)."""
    return np.abs(after.astype(np.int16) - before.astype(np.int16)).mean(axis=2)


def _texture_ratio(before: np.ndarray, after: np.ndarray) -> float:
    """Mean |Laplacian| of ``after`` over the pixels the edit changed, over the same of ``before``."""
    changed = np.abs(after.astype(np.int16) - before.astype(np.int16)).max(axis=2) > 4
    if changed.sum() < 50:
        return float("nan")
    return float(_laplacian_energy(after)[changed].mean() / max(1e-6, _laplacian_energy(before)[changed].mean()))


def _photo_pixels_of(session: EditSession, ellipse: tuple[tuple[float, float], tuple[float, float]],
                     inside: bool) -> np.ndarray:
    """(H, W) bool: the photo pixels inside (or, with ``inside=False``, outside but within the
    face's crop) a template ellipse (centre, radii as fractions of the crop)."""
    h, w = session.photo.pixels.shape[:2]
    r = session.resolution
    (cx, cy), (rx, ry) = ellipse
    ys, xs = np.mgrid[0:r, 0:r].astype(np.float32)
    u, v = ((xs + 0.5) / r - cx) / rx, ((ys + 0.5) / r - cy) / ry
    chosen = np.zeros((r, r, 3), np.float32)
    chosen[(u * u + v * v < 1) == inside] = 255.0
    inv = align.invert(session.transform)
    mapped = cv2.warpAffine(chosen, inv, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    return mapped[..., 0] > 254


def photo_edit_metrics(engine: Engine, data: Path, n: int = 12) -> dict[str, object]:
    """Edits on whole photos at their own resolution, where paste-back and the photo's own detail
    matter: the largest held-out CelebA photos of a prepared data folder, or the photos of a
    folder, as they are (faces detected; photos without one are skipped). Per edit: texture ratio
    (mean |Laplacian| of the export over the changed pixels / the photo's there: 1 keeps the
    photo's texture, > 1 adds texture) and the mean change (0..255) of the pixels beside and
    above the head (background), of the inner face (skin, which a hair colour must leave) and
    of the top of the head (hair, where it must show), and on photos labelled without bangs of the
    bare forehead (skin too; ``slider_bare_forehead_change_255``); for the sliders about one part
    of the face (``PART_SLIDERS``: pale skin, eyeglasses, beard, bangs) the change at +1 where it must
    show and where it must not (``NAME_PLACE_change_255``). Every edit
    is scored as exported, with the hair detail pass; the fringe also without it
    (``fringe_texture_ratio_without_detail``), and by the change it lays over the brows and eyes
    below it (``fringe_eyes_change_255``, the EYES ellipse, whose top the stroke's reach meets). On a
    prepared folder, ``real_fringe`` gives the texture ratio a real fringe has there
    (``real_fringe_texture``), the fringe's reference."""
    listing = list_items(data, ("celeba",)) if (data / "celeba").is_dir() else None
    bangs: dict[Path, bool] = {}  # the photos with a Bangs label: whether they have bangs
    if listing is not None:
        files = [data / it.file for it in listing[0] if _held_out(it.identity)]
        files = sorted(files, key=lambda f: -f.stat().st_size)[:n]  # the full-size ones first
        if "Bangs" in listing[1]:
            column = listing[1].index("Bangs")
            bangs = {data / it.file: bool(it.attrs[column] > 0) for it in listing[0] if it.attrs is not None}
    else:
        files = sorted(p for p in data.rglob("*") if p.suffix.lower() in READABLE_SUFFIXES)[:n]
    sliders = [a for a in engine.attributes.attributes if a.name in ("blond_hair", "black_hair")]
    fringe, fringe_plain, fringe_eyes, slider_texture, background, skin, hair, sizes = [], [], [], [], [], [], [], []
    parts = {name: sum(places, ()) for name, places in PART_SLIDERS.items() if name in engine.attributes.names}
    part_changes: dict[str, list[float]] = {f"{name}_{place}": [] for name, places in parts.items() for place in places}
    forehead: list[float] = []
    skipped = 0
    for f in files:
        photo = load_photo(f)
        faces = detect(photo, engine.refiner)
        if not faces:
            skipped += 1
            continue
        sizes.append(photo.size)
        session, _ = open_session(engine, photo, faces=faces)
        t = session.transform
        samples = align.apply(align.invert(t), _stroke_samples(FRINGE, session.resolution))
        radius = FRINGE.radius * session.resolution / align.scale_of(t)
        session.paint(FRINGE.color, radius, [(float(x), float(y)) for x, y in samples])
        painted = session.composite(detail=True)
        fringe.append(_texture_ratio(photo.pixels, painted))
        fringe_plain.append(_texture_ratio(photo.pixels, session.composite()))
        eyes = _photo_pixels_of(session, EYES, True)
        if eyes.any():  # what the fringe's reach lays over the brows and eyes below it
            fringe_eyes.append(float(_change_255(photo.pixels, painted)[eyes].mean()))
        session.reset()
        outside = _photo_pixels_of(session, HEAD_ENVELOPE, inside=False)
        face = _photo_pixels_of(session, INNER_FACE, inside=True)
        top = _photo_pixels_of(session, TOP_OF_HEAD, inside=True)
        bare = _photo_pixels_of(session, BARE_FOREHEAD, inside=True) if bangs.get(f) is False else None
        for a in sliders:
            session.set_sliders({a.name: 1.0})
            edited = session.composite(detail=True)
            slider_texture.append(_texture_ratio(photo.pixels, edited))
            diff = _change_255(photo.pixels, edited)
            if outside.any():
                background.append(float(diff[outside].mean()))
            if face.any():
                skin.append(float(diff[face].mean()))
            if top.any():
                hair.append(float(diff[top].mean()))
            if bare is not None and bare.any():
                forehead.append(float(diff[bare].mean()))
            session.set_sliders({})
        where = {"face": face, "hair": top, "background": outside, "eyes": eyes,
                 "mouth_and_chin": _photo_pixels_of(session, MOUTH_AND_CHIN, True),
                 "lips": _photo_pixels_of(session, LIPS, True)}
        for name, places in parts.items():
            session.set_sliders({name: 1.0})
            diff = _change_255(photo.pixels, session.composite(detail=True))
            for place in places:
                if where[place].any():
                    part_changes[f"{name}_{place}"].append(float(diff[where[place]].mean()))
            session.set_sliders({})
    if not sizes:
        raise ValueError(f"no faces found in the photos of {data}")

    def mean(v: list[float]) -> float | None:
        v = [x for x in v if np.isfinite(x)]
        return round(float(np.mean(v)), 3) if v else None

    out: dict[str, object] = {"photos": len(sizes), "skipped_no_face": skipped,
                              "median_size": np.median(np.array(sizes), axis=0).astype(int).tolist(),
                              "fringe_texture_ratio": mean(fringe),
                              "hair_detail": engine.detail is not None,
                              "fringe_texture_ratio_without_detail": mean(fringe_plain),
                              "fringe_eyes_change_255": mean(fringe_eyes),
                              "slider_texture_ratio": mean(slider_texture),
                              "sliders": [a.name for a in sliders],
                              "slider_background_change_255": mean(background),
                              "slider_skin_change_255": mean(skin),
                              "slider_hair_change_255": mean(hair),
                              # on the photos labelled without bangs (None: no labels)
                              "slider_bare_forehead_change_255": mean(forehead),
                              "bare_forehead_edits": len(forehead)}
    out.update({f"{k}_change_255": mean(v) for k, v in part_changes.items()})
    if listing is not None:
        out["real_fringe"] = real_fringe_texture(data, listing, engine.refiner)
    return out


def _fringe_region(transform: np.ndarray, resolution: int, shape: tuple[int, ...]) -> np.ndarray:
    """(H, W) bool: the photo pixels within three brush radii of the fringe stroke's centre line
    (the stroke and the halo around it that its edit changes)."""
    r = resolution
    ys, xs = np.mgrid[0:r, 0:r].astype(np.float32)
    dist = np.min([np.hypot(xs - x, ys - y) for x, y in _stroke_samples(FRINGE, r)], axis=0)
    chosen = np.where(dist < 3 * FRINGE.radius * r, 255.0, 0.0).astype(np.float32)
    h, w = shape[:2]
    return cv2.warpAffine(chosen, align.invert(transform), (w, h), flags=cv2.INTER_LINEAR, borderValue=0) > 127


def real_fringe_texture(data: Path, listing: tuple[list[Item], list[str]], refiner: EyeRefiner | None,
                        per_group: int = 150) -> dict[str, object] | None:
    """What ``fringe_texture_ratio`` would be for a real fringe: the mean |Laplacian| where the
    fringe stroke goes, on held-out full-size CelebA photos of dark-haired people with bangs,
    over the same on dark-haired people without (CelebA's labels; a population comparison, not
    the same faces). ``listing``: the folder's CelebA items and attribute names (``list_items``).
    None when the folder has no hair labels."""
    items, names = listing
    needed = ("Bangs", "Black_Hair", "Brown_Hair")
    if not all(n in names for n in needed):
        return None
    bangs_col, black, brown = (names.index(n) for n in needed)
    energy: dict[bool, list[float]] = {True: [], False: []}
    for it in items:
        if it.attrs is None or not _held_out(it.identity) or (it.attrs[black] <= 0 and it.attrs[brown] <= 0):
            continue
        with_bangs = it.attrs[bangs_col] > 0
        if len(energy[with_bangs]) >= per_group:
            if all(len(v) >= per_group for v in energy.values()):
                break
            continue
        photo = load_photo(data / it.file)
        if min(photo.size) < 170:  # the half-size copies show no strands
            continue
        faces = detect(photo, refiner)
        if not faces:
            continue
        region = _fringe_region(faces[0].transform(64), 64, photo.pixels.shape)
        if region.sum() >= 50:
            energy[with_bangs].append(float(_laplacian_energy(photo.pixels)[region].mean()))
    if not energy[True] or not energy[False]:
        return None
    fringed, bare = float(np.mean(energy[True])), float(np.mean(energy[False]))
    return {"photos_with_bangs": len(energy[True]), "photos_without": len(energy[False]),
            "texture_with_bangs": round(fringed, 2), "texture_without": round(bare, 2),
            "ratio": round(fringed / max(bare, 1e-6), 3)}


# Eye centres from a photo's landmark file: the mean of each eye's contour points (0-based
# ranges; the viewer's left eye first), by the number of points in the file.
EYE_POINTS = {49: (range(19, 25), range(25, 31)),  # All-Age-Faces' 49 points (IntraFace layout)
              68: (range(36, 42), range(42, 48))}  # the iBUG 300-W 68 points


def landmark_folder(data: Path) -> Path | None:
    """The folder of landmark files beside a folder of photos (``key points``, as All-Age-Faces
    ships them, or ``points``), or None."""
    for name in ("key points", "points"):
        if (data / name).is_dir():
            return data / name
    return None


def _eyes_of(points_file: Path) -> np.ndarray | None:
    pts = np.loadtxt(points_file, dtype=np.float64).reshape(-1, 2)
    ranges = EYE_POINTS.get(len(pts))
    return None if ranges is None else np.array([pts[list(r)].mean(0) for r in ranges])


def _error_stats(e: list[float]) -> dict[str, float]:
    a = np.asarray(e)
    return {"mean": round(float(a.mean()), 4), "median": round(float(np.median(a)), 4),
            "p90": round(float(np.percentile(a, 90)), 4), "within_0.1": round(float((a < 0.1).mean()), 3)}


def _eye_errors(pixels: np.ndarray, truth: np.ndarray, refiner: EyeRefiner | None,
                worse: bool) -> tuple[float, float | None] | None:
    """Eye error over the inter-ocular distance of the detected face nearest the truth (the
    photo may hold other faces or reflections), from the cascade and after the refiner: the
    worse eye's, or with ``worse=False`` the two eyes' mean. None when no face is that near."""
    iod = float(np.hypot(*(truth[1] - truth[0])))

    def error(eyes: np.ndarray) -> float:
        d = np.linalg.norm(eyes - truth, axis=1)
        return float((d.max() if worse else d.mean()) / iod)

    best = min(((error(f.eyes), f) for f in find_faces(pixels)), key=lambda p: p[0], default=None)
    if best is None or best[0] > 1.0:
        return None
    return best[0], None if refiner is None else error(refiner.refine(pixels, best[1].eyes))


def photo_alignment_metrics(data: Path, refiner: EyeRefiner | None, n: int = 300) -> dict[str, object]:
    """Face detection and eye error on photos as they are, with hand-placed landmarks: a folder
    of photos beside a ``key points`` (or ``points``) folder of text files of the same stem,
    one "x y" line per point (49 or 68 points). The error of a photo is its worse eye's
    distance from the truth over the inter-ocular distance; a face counts as found when the
    detected face nearest the truth has its eyes within one inter-ocular distance. With
    All-Age-Faces' file names (``00000A02``: age after the A) the errors are also given by age."""
    points = landmark_folder(data)
    assert points is not None
    photos = sorted(p for p in data.rglob("*") if p.suffix.lower() in READABLE_SUFFIXES
                    and (points / (p.stem + ".txt")).is_file())[:n]
    if not photos:
        raise ValueError(f"no photo in {data} has a landmark file in {points}")
    found, worse_cascade, worse_refined, ages = 0, [], [], []
    for path in photos:
        truth = _eyes_of(points / (path.stem + ".txt"))
        if truth is None:
            continue
        errors = _eye_errors(load_photo(path).pixels, truth, refiner, worse=True)
        if errors is None:
            continue
        found += 1
        worse_cascade.append(errors[0])
        if errors[1] is not None:
            worse_refined.append(errors[1])
        age = path.stem.rpartition("A")[2]
        ages.append(int(age) if age.isdigit() else -1)
    out: dict[str, object] = {"photos": len(photos), "detected": found,
                              "detection_rate": round(found / len(photos), 3),
                              "worse_eye_error_cascade": _error_stats(worse_cascade) if worse_cascade else None}
    if worse_refined:
        out["worse_eye_error_refined"] = _error_stats(worse_refined)
        age_of, refined = np.asarray(ages), np.asarray(worse_refined)
        bands = [(0, 12), (13, 25), (26, 50), (51, 200)]
        by_age = {}
        for lo, hi in bands:
            band = (age_of >= lo) & (age_of <= hi)
            if band.any():
                by_age[f"{lo}-{hi if hi < 200 else ''}"] = {"n": int(band.sum()),
                                                            "median": round(float(np.median(refined[band])), 4)}
        out["worse_eye_error_refined_median_by_age"] = by_age
    return out


def alignment_metrics(data: Path, refiner: EyeRefiner | None, n: int = 300, seed: int = 0) -> dict[str, object]:
    """Eye localisation on held-out aligned CelebA photos, turned and scaled at random.

    The truth is each image's own hand-placed eyes when the data folder has CelebA's landmark
    list (then only the images it covers are drawn), else the place CelebA's alignment puts
    eyes on average (about 1.5 px spread); it survives any known similarity transform. Errors
    are mean eye distance divided by the inter-ocular distance, for the cascade alone and with
    the landmark refiner.
    """
    items, table = celeba_with_eyes(data, held_out=True)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(items), min(n, len(items)), replace=False)
    found, err_cascade, err_refined, times = 0, [], [], []
    for i in pick:
        img = _read_rgb(data / items[i].file)
        truth = celeba_eyes(table, Path(items[i].file).name, img.shape[1])
        angle, scale = rng.uniform(-30, 30), float(np.exp(rng.uniform(np.log(1.0), np.log(2.5))))
        h, w = img.shape[:2]
        big = cv2.copyMakeBorder(img, h // 2, h // 2, w // 2, w // 2, cv2.BORDER_REFLECT)
        m = np.asarray(cv2.getRotationMatrix2D((big.shape[1] / 2, big.shape[0] / 2), angle, scale), np.float64)
        m[:, 2] += (np.array([big.shape[1], big.shape[0]]) * (scale - 1) / 2)
        size = (int(big.shape[1] * scale), int(big.shape[0] * scale))
        photo = cv2.warpAffine(big, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        t_truth = align.apply(m, truth + [w // 2, h // 2])
        t0 = time.perf_counter()
        errors = _eye_errors(photo, t_truth, refiner, worse=False)
        if errors is None:
            continue
        found += 1
        err_cascade.append(errors[0])
        if errors[1] is not None:
            err_refined.append(errors[1])
        times.append(time.perf_counter() - t0)

    out: dict[str, object] = {"n": len(pick), "truth": "hand-placed eyes" if table else "average eye place",
                              "detected": found, "detection_rate": round(found / len(pick), 3),
                              "eye_error_cascade": _error_stats(err_cascade) if err_cascade else None,
                              "ms_per_photo": round(1000 * float(np.median(times)), 1) if times else None}
    if err_refined:
        out["eye_error_refined"] = _error_stats(err_refined)
    return out
