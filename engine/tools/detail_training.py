"""Training the hair detail network (engine.core.detail): ``npe detail --data DIR --out RUN``.

Data: the fringes of aligned full-size CelebA photos (178x218) of the training identities that
CelebA labels Bangs. Each step cuts random 64x64 patches from the forehead band, blurs them
(``INPUT_SIGMA``), and asks the network for the fine detail. A patch discriminator sees the
blurred patch beside its detail, real or answered, and the network learns to be taken for
real (hinge loss, spectral norm on the discriminator). Nothing else is asked of it: the
answer is band-limited by construction (``detail.band``), so it cannot change colour.

The run folder keeps ``state.safetensors`` + ``state.json`` (both networks, both optimisers,
the step), written every ``--save-every`` seconds; ``--resume`` continues it. The shippable
weights (``detail.safetensors`` + ``detail.json``) are written beside them at each save.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from engine.core.detail import INPUT_SIGMA, WEIGHTS, DetailNet, band, lowpass
from engine.core.images import atomic_write, load_photo
from engine.tools.data import _held_out, list_items

PATCH = 64
# The forehead band of an aligned 178x218 CelebA photo (eyes at y 112): where fringes are.
BAND = (28, 118, 24, 154)  # y0, y1, x0, x1


def fringe_bands(data: Path, limit: int | None = None) -> np.ndarray:
    """(N, 90, 130, 3) uint8: the forehead bands of the training identities' full-size CelebA
    photos labelled Bangs (no held-out person)."""
    items, names = list_items(data, ("celeba",))
    bangs = names.index("Bangs")
    y0, y1, x0, x1 = BAND
    out = []
    for it in items:
        if it.attrs is None or it.attrs[bangs] <= 0 or _held_out(it.identity):
            continue
        px = load_photo(data / it.file).pixels
        if px.shape[:2] != (218, 178):
            continue
        out.append(px[y0:y1, x0:x1])
        if limit and len(out) >= limit:
            break
    if not out:
        raise ValueError(f"no full-size CelebA photos labelled Bangs in {data}")
    return np.stack(out)


class PatchCritic(nn.Module):
    """(N, 6, 64, 64): blurred patch and its detail -> (N, 1, 8, 8) realness scores."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        sn = nn.utils.spectral_norm
        act = nn.LeakyReLU(0.2, inplace=True)
        w = width
        self.net = nn.Sequential(
            sn(nn.Conv2d(6, w, 3, padding=1)), act,
            sn(nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)), act,
            sn(nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1)), act,
            sn(nn.Conv2d(4 * w, 4 * w, 4, stride=2, padding=1)), act,
            sn(nn.Conv2d(4 * w, 1, 3, padding=1)))

    def forward(self, low: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([low, detail * 4.0], 1))


@dataclass
class DetailOptions:
    data: Path
    out: Path
    steps: int = 20000
    batch: int = 16
    lr: float = 2e-4
    width: int = 24
    resume: bool = False
    save_every: float = 600.0
    seed: int = 0


def _batch(bands: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n random 64x64 patches in [-1, 1], mirrored at random, with a random brightness and
    contrast (fringes of every darkness)."""
    idx = torch.randint(len(bands), (n,), generator=gen)
    h, w = bands.shape[1:3]
    ys = torch.randint(h - PATCH + 1, (n,), generator=gen)
    xs = torch.randint(w - PATCH + 1, (n,), generator=gen)
    patches = torch.stack([bands[i, y:y + PATCH, x:x + PATCH] for i, y, x in zip(idx, ys, xs, strict=True)])
    x = patches.permute(0, 3, 1, 2).float() / 127.5 - 1
    flip = torch.rand(n, generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    gain = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen)
    bias = 0.2 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    return (x * gain + bias).clamp(-1, 1)


def _save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)
    atomic_write(path.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())


def train_detail(opts: DetailOptions) -> Path:
    torch.manual_seed(opts.seed)
    opts.out.mkdir(parents=True, exist_ok=True)
    cache = opts.out / "bands.npy"
    if cache.exists():
        bands_np = np.load(cache)
    else:
        bands_np = fringe_bands(opts.data)
        np.save(cache, bands_np)
    bands = torch.from_numpy(bands_np)
    print(f"{len(bands)} fringe bands", flush=True)
    g, d = DetailNet(opts.width), PatchCritic()
    opt_g = torch.optim.Adam(g.parameters(), opts.lr, betas=(0.5, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), opts.lr, betas=(0.5, 0.99))
    step = 0
    state_file = opts.out / "state.safetensors"
    if opts.resume and state_file.exists():
        state = load_file(str(state_file))
        meta = json.loads(state_file.with_suffix(".json").read_text())
        g.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("g.")})
        d.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("d.")})
        for name, opt in (("og", opt_g), ("od", opt_d)):
            sd = opt.state_dict()
            for pid in sd["param_groups"][0]["params"]:
                if f"{name}.{pid}.exp_avg" in state:
                    sd["state"][pid] = {"step": state[f"{name}.{pid}.step"],
                                        "exp_avg": state[f"{name}.{pid}.exp_avg"],
                                        "exp_avg_sq": state[f"{name}.{pid}.exp_avg_sq"]}
            opt.load_state_dict(sd)
        step = int(meta["step"])
        print(f"resumed at step {step}", flush=True)
    gen = torch.Generator().manual_seed(opts.seed + step)
    last_save, t0 = time.monotonic(), time.monotonic()
    while step < opts.steps:
        x = _batch(bands, opts.batch, gen)
        low = lowpass(x, INPUT_SIGMA)
        real = x - low
        fake = band(g(low))
        # the critic: real fringes' detail against the network's
        loss_d = F.relu(1 - d(low, real)).mean() + F.relu(1 + d(low, fake.detach())).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # the network: be taken for real
        loss_g = -d(low, fake).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        step += 1
        if step % 50 == 0:
            e_real = real.abs().mean().item()
            e_fake = fake.abs().mean().item()
            print(f"step {step} d {loss_d.item():.3f} g {loss_g.item():.3f} |detail| real {e_real:.4f} "
                  f"answered {e_fake:.4f} {(time.monotonic() - t0) / step:.2f} s/step", flush=True)
        if time.monotonic() - last_save > opts.save_every or step == opts.steps:
            _write_state(opts, g, d, opt_g, opt_d, step)
            last_save = time.monotonic()
    return opts.out / WEIGHTS


def _write_state(opts: DetailOptions, g: DetailNet, d: PatchCritic, opt_g: torch.optim.Optimizer,
                 opt_d: torch.optim.Optimizer, step: int) -> None:
    tensors = {f"g.{k}": v for k, v in g.state_dict().items()}
    tensors.update({f"d.{k}": v for k, v in d.state_dict().items()})
    for name, opt in (("og", opt_g), ("od", opt_d)):
        for pid, st in opt.state_dict()["state"].items():
            for k in ("step", "exp_avg", "exp_avg_sq"):
                tensors[f"{name}.{pid}.{k}"] = torch.as_tensor(st[k])
    _save(opts.out / "state.safetensors", tensors, {"step": step})
    _save(opts.out / WEIGHTS, g.state_dict(), {"width": opts.width, "step": step, "input_sigma": INPUT_SIGMA,
                                               "data": "CelebA (aligned, full size), training identities, Bangs"})
    print(f"saved step {step}", flush=True)
