"""Training the eye-landmark refiner (``npe landmarks --data DIR``).

Labels come from aligned CelebA under random similarity perturbations: each image's own
hand-placed eyes when the data folder has CelebA's landmark list
(``celeba/list_landmarks_align_celeba.txt``; then only the images it covers are used), else
the place CelebA's alignment puts eyes on average. The perturbation is known, so the eyes'
position in the perturbed crop is known too. (Trained on the average place, the refiner
learns where that alignment would put the eyes, not where they are: on 500 held-out CelebA
photos measured against their hand-placed eyes, median 0.043 of the inter-ocular distance;
trained on the eyes themselves, 0.035 after 3,000 steps and 0.024 after 20,000.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from engine.core import align
from engine.core.faces import find_faces
from engine.core.landmarks import INPUT, ROUNDS, WEIGHTS, EyeNet, _crop_gray, _read_rgb
from engine.tools.data import LAYOUT_HINT, _held_out, celeba_eyes, celeba_with_eyes, list_items


def _perturbation(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random similarity about the crop centre: +-35 degrees, 0.75-1.3x, +-15% shift."""
    ang = np.deg2rad(rng.uniform(-35, 35))
    s = np.exp(rng.uniform(np.log(0.75), np.log(1.3)))
    c = np.array([size / 2 - 0.5, size / 2 - 0.5])
    rot = s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    shift = rng.uniform(-0.15, 0.15, 2) * size
    return np.hstack([rot, (c - rot @ c + shift)[:, None]])


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a after b."""
    return (np.vstack([a, [0, 0, 1]]) @ np.vstack([b, [0, 0, 1]]))[:2]


def degrade(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grey image (uint8) as another camera, light or compression might give it: gamma,
    contrast and brightness, then at random blur, JPEG artefacts and sensor noise. (The
    refiner equalises its crops' histograms, so the first three mostly test that.)"""
    x = crop.astype(np.float32) / 255.0
    x = x ** np.exp(rng.uniform(np.log(0.6), np.log(1.6)))
    x = (x - x.mean()) * rng.uniform(0.6, 1.4) + x.mean() + rng.uniform(-0.12, 0.12)
    out: np.ndarray = np.clip(x * 255.0, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 2.5))
    if rng.random() < 0.4:
        ok, enc = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 85))])
        decoded = cv2.imdecode(enc, cv2.IMREAD_GRAYSCALE) if ok else None
        out = out if decoded is None else np.asarray(decoded)
    if rng.random() < 0.4:
        out = np.clip(out + rng.normal(0, rng.uniform(2, 10), out.shape), 0, 255).astype(np.uint8)
    return out


def make_examples(images: list[np.ndarray], rng: np.random.Generator, per_image: int,
                  augment: bool = True, eyes_of: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Perturbed (and, with ``augment``, degraded) crops of aligned CelebA images and their eye
    offsets. ``eyes_of`` gives each image's eye centres; without it they are taken to sit where
    CelebA's alignment puts eyes on average."""
    xs, ys = [], []
    base = align.template_points(INPUT)
    for k, img in enumerate(images):
        truth = celeba_eyes(None, "", img.shape[1]) if eyes_of is None else eyes_of[k]
        t_true = align.eyes_to_crop(truth, INPUT)
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        for _ in range(per_image):
            t = _compose(_perturbation(rng, INPUT), t_true)
            crop = _crop_gray(degrade(gray, rng) if augment else gray, t)
            if rng.random() < 0.5:  # mirror: the eyes swap roles
                crop = crop[:, ::-1].copy()
                eyes = align.apply(t, truth)
                eyes = np.array([[INPUT - 1 - eyes[1, 0], eyes[1, 1]], [INPUT - 1 - eyes[0, 0], eyes[0, 1]]])
            else:
                eyes = align.apply(t, truth)
            xs.append(crop)
            ys.append(((eyes - base) / INPUT).ravel())
    return np.stack(xs)[:, None].astype(np.float32), np.stack(ys).astype(np.float32)


@dataclass
class LandmarkOptions:
    """``npe landmarks``: train the eye refiner on aligned CelebA (on each image's own hand-placed
    eyes when the data folder has CelebA's landmark list, on the images it covers)."""

    data: str
    out: str = "pretrained"  # the model folder that receives landmarks.safetensors
    steps: int = 3000
    batch: int = 64
    seed: int = 0
    augment: bool = False  # photometric, blur, JPEG and noise degradation of the training images
    unlabelled: int = 0  # LFW and UTKFace faces for the equivariance term (0: CelebA labels only)
    equivariance: float = 1.0  # its weight against the labelled term
    log: bool = True


def unlabelled_faces(data_dir: Path, n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to ``n`` grey training-identity LFW and UTKFace images (whichever sets the data folder
    holds) with the cascade's rough eyes: faces of every age and many skin tones, unlabelled."""
    sets = tuple(s for s in ("lfw", "utkface") if (data_dir / s / "images").is_dir())
    items = [it for it in list_items(data_dir, sets)[0] if not _held_out(it.identity)] if sets else []
    pool: list[tuple[np.ndarray, np.ndarray]] = []
    for i in rng.permutation(len(items)):
        if len(pool) >= n:
            break
        img = _read_rgb(data_dir / items[i].file)
        faces = find_faces(img)
        if faces:
            largest = max(faces, key=lambda f: float(np.hypot(*(f.box[1] - f.box[0]))))
            pool.append((cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), largest.eyes))
    return pool


def equivariance_examples(pool: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, count: int,
                          augment: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two differently turned, scaled, shifted (and degraded) crops of each of ``count`` faces,
    with the crop-to-photo transforms (N, 2, 2, 3) and the rough inter-ocular distances (N,).
    Whatever the refiner finds in both crops must be the same place in the photo."""
    xs, inverses, iods = [], [], []
    for k in rng.choice(len(pool), count, replace=len(pool) < count):
        gray, eyes = pool[k]
        t_rough = align.eyes_to_crop(eyes, INPUT)
        pair = []
        for _ in range(2):
            t = _compose(_perturbation(rng, INPUT), t_rough)
            xs.append(_crop_gray(degrade(gray, rng) if augment else gray, t))
            pair.append(align.invert(t))
        inverses.append(pair)
        iods.append(float(np.hypot(*(eyes[1] - eyes[0]))))
    return (np.stack(xs)[:, None].astype(np.float32), np.asarray(inverses, np.float32),
            np.asarray(iods, np.float32))


def equivariance_loss(net: nn.Module, x: np.ndarray, inverses: np.ndarray, iods: np.ndarray) -> torch.Tensor:
    """Disagreement, in the photo and in inter-ocular distances, between the eyes found in the
    two crops of each face."""
    offsets = net(torch.from_numpy(x)).view(-1, 2, 2, 2)  # (pair item, crop, eye, xy)
    base = torch.from_numpy(align.template_points(INPUT).astype(np.float32))
    in_crop = base + offsets * INPUT
    m = torch.from_numpy(inverses)  # (N, 2 crops, 2, 3)
    in_photo = torch.einsum("ncij,ncej->ncei", m[..., :2], in_crop) + m[..., None, :, 2]
    gap = (in_photo[:, 0] - in_photo[:, 1]) / torch.from_numpy(iods).view(-1, 1, 1)
    return nn.functional.smooth_l1_loss(gap, torch.zeros_like(gap), beta=0.01)


def train_landmarks(opts: LandmarkOptions) -> Path:
    data_dir, out_dir, steps, batch, seed = Path(opts.data), Path(opts.out), opts.steps, opts.batch, opts.seed
    train_items, table = celeba_with_eyes(data_dir, held_out=False)
    if not train_items:
        raise ValueError(f"no training-identity CelebA image in {data_dir}"
                         + (" has a row in its landmark list" if table is not None else f"; {LAYOUT_HINT}"))
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = EyeNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    pool = unlabelled_faces(data_dir, opts.unlabelled, rng) if opts.unlabelled > 0 else []
    if opts.unlabelled > 0 and not pool:
        raise ValueError(f"no LFW or UTKFace faces found in {data_dir} for the equivariance term")
    bar = tqdm(range(steps), disable=not opts.log, desc="training eye landmarks")
    for _step in bar:
        pick = rng.choice(len(train_items), batch // 4, replace=False)
        names = [Path(train_items[i].file).name for i in pick]
        imgs = [_read_rgb(data_dir / train_items[i].file) for i in pick]
        eyes = [celeba_eyes(table, name, img.shape[1]) for name, img in zip(names, imgs, strict=True)]
        x, y = make_examples(imgs, rng, 4, opts.augment, eyes)
        loss = nn.functional.smooth_l1_loss(net(torch.from_numpy(x)), torch.from_numpy(y), beta=0.01)
        if pool:
            loss = loss + opts.equivariance * equivariance_loss(
                net, *equivariance_examples(pool, rng, batch // 4, opts.augment))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out_dir / WEIGHTS))
    (out_dir / WEIGHTS).with_suffix(".json").write_text(json.dumps(
        {"format_version": 1, "width": 24, "input": INPUT, "rounds": ROUNDS, "steps": steps,
         "trained_on": "aligned CelebA (training identities"
                       + (f", {len(train_items)} images with their own hand-placed eyes)" if table else ")")
                       + ", random similarity perturbations"
                       + (", photometric/blur/JPEG/noise degradation" if opts.augment else "")
                       + (f", equivariance on {len(pool)} unlabelled LFW/UTKFace faces" if pool else "")},
        indent=2) + "\n")
    return out_dir / WEIGHTS
