"""``npe bench``: speed figures of the real engine path, as one JSON object.

    decoder_step_ms        one bare decoder forward + backward to the latent (the floor)
    brush_event_ms_p50/95  one mouse sample in, masked crop out (EditSession.brush_to)
    display_ms_p95         pasting that crop into the photo at screen size (what the GUI adds)
    slider_event_ms_p50/95 one step of an attribute slider dragged 0 -> +1, shown at screen size
    slider_first_event_ms  its first step, which also finds the face's region map
    stroke_end_view_ms     the view once the stroke ends: the region map, growth and the hair detail
                           pass at screen size (stroke_end_view_again_ms: a later frame, strands kept)
    detail_pass_ms         the hair detail pass alone on the 12-megapixel photo at full size (the
                           stroke grows hair on the forehead); hair_detail says whether one is shipped
    encode_ms              encoder on one aligned crop
    open_to_editable_ms    12-megapixel JPEG: read + decode + detect + align + encode
    export_ms              the edited 12-megapixel photo composited at full size and written
    overhead_ratio         brush_event_ms_p50 / decoder_step_ms
"""

from __future__ import annotations

import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from engine.core.attributes import SliderKind
from engine.core.checkpoint import REPO_ROOT
from engine.core.images import load_photo, save_image
from engine.core.pipeline import Engine, open_session
from engine.core.session import fit_scale

SCREEN = (1600, 1000)  # the canvas size the display figure is measured for


def _ms(samples: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(samples) * 1000, q)), 3)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_test_photo(path: Path, megapixels: float = 12.0) -> Path:
    """A 4:3 JPEG of about ``megapixels`` with the bundled portrait in it (a real face)."""
    w = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    h = int(round(w * 3 / 4))
    face = Image.open(REPO_ROOT / "resources" / "astronaut.png").convert("RGB")
    canvas = Image.new("RGB", (w, h), (90, 110, 130))
    side = int(h * 0.8)
    canvas.paste(face.resize((side, side), Image.Resampling.BICUBIC), ((w - side) // 2, (h - side) // 2))
    canvas.save(path, quality=92)
    return path


@dataclass
class BenchOptions:
    """``npe bench``: which model, device and photo to time."""

    threads: int = 0  # CPU threads (0: torch's default)
    photo: str | None = None  # a photo to open (default: a generated 12-megapixel photo)
    events: int = 300  # brush samples to replay
    weights: str | None = None
    device: str = "auto"


def bench(args: BenchOptions) -> dict[str, object]:
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine.load(args.weights, args.device)
    dev = engine.device
    cfg = engine.loaded.config
    dec = engine.loaded.model.decoder
    out: dict[str, object] = {"device": str(dev), "threads": torch.get_num_threads(), "resolution": cfg.resolution,
                              "latent_dim": cfg.latent_dim, "torch": torch.__version__,
                              "model_id": engine.loaded.model_id}
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)

    # the floor: a bare decoder step to the latent
    z = torch.randn(1, cfg.latent_dim, device=dev, requires_grad=True)
    target = torch.zeros(1, 3, cfg.resolution, cfg.resolution, device=dev)
    times = []
    for i in range(60):
        _sync(dev)
        t0 = time.perf_counter()
        loss = ((dec(z) - target) ** 2).mean()
        (g,) = torch.autograd.grad(loss, z)
        _sync(dev)
        if i >= 10:
            times.append(time.perf_counter() - t0)
    step_ms = _ms(times, 50)
    out["decoder_step_ms"] = step_ms

    with tempfile.TemporaryDirectory() as tmp:
        photo_path = Path(args.photo) if args.photo else make_test_photo(Path(tmp) / "photo-12mp.jpg")
        # open to editable, three times (the first warms caches)
        opens = []
        for _ in range(3):
            t0 = time.perf_counter()
            session, faces = open_session(engine, photo_path)
            _sync(dev)
            opens.append(time.perf_counter() - t0)
        out["photo"] = {"path": str(photo_path) if args.photo else "generated", "size": list(session.photo.size),
                        "faces": len(faces)}
        out["open_to_editable_ms"] = _ms(opens[1:], 50)
        times = []
        for _ in range(20):
            _sync(dev)
            t0 = time.perf_counter()
            with torch.inference_mode():
                engine.loaded.model.encode(session.x)
            _sync(dev)
            times.append(time.perf_counter() - t0)
        out["encode_ms"] = _ms(times, 50)

        # a replayed stroke across the face, in photo pixels
        n = args.events
        corners = session.face.eyes
        mid = corners.mean(0)
        iod = float(np.hypot(*(corners[1] - corners[0])))
        ts = np.linspace(-1.2, 1.2, n)
        pts = np.stack([mid[0] + ts * iod, mid[1] - 0.8 * iod + 0.15 * iod * np.sin(ts * 3)], 1)
        w, h = session.photo.size
        scale = fit_scale(w, h, *SCREEN)
        screen = cv2.resize(session.photo.pixels, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        scale = screen.shape[1] / w
        session.brush_begin((40, 30, 20), 0.25 * iod)
        events, display = [], []
        for p in pts:
            _sync(dev)
            t0 = time.perf_counter()
            result = session.brush_to([(float(p[0]), float(p[1]))])
            _ = result.shown.cpu()
            _sync(dev)
            t1 = time.perf_counter()
            frame = session.composite(screen, scale, result)
            _ = np.ascontiguousarray(frame).copy()  # the GUI's copy into a QImage
            t2 = time.perf_counter()
            events.append(t1 - t0)
            display.append(t2 - t1)
        session.brush_end()
        # the view once the stroke ends: strands where it grew hair (the first frame also finds
        # the face's region map and the strands; later frames reuse them)
        for name in ("stroke_end_view_ms", "stroke_end_view_again_ms"):
            t0 = time.perf_counter()
            frame = session.composite(screen, scale, detail=True)
            out[name] = round((time.perf_counter() - t0) * 1000, 1)
        out["hair_detail"] = engine.detail is not None
        if engine.detail is not None:
            plain = session.composite()
            grown, rendition = session.brushed_view()
            passes = []
            for _ in range(3):
                t0 = time.perf_counter()
                if grown is not None:
                    engine.detail.apply(plain, grown, session.transform, rendition, bare=session.photo.pixels)
                passes.append(time.perf_counter() - t0)
            out["detail_pass_ms"] = _ms(passes, 50)
            out["detail_grown_share"] = 0.0 if grown is None else round(float((grown > 0).mean()), 4)
        ev = events[10:]
        p50 = _ms(ev, 50)
        out["brush_events"] = len(ev)
        out["brush_event_ms_p50"] = p50
        out["brush_event_ms_p95"] = _ms(ev, 95)
        out["display_ms_p95"] = _ms(display[10:], 95)
        out["overhead_ratio"] = round(p50 / max(step_ms, 1e-6), 3)

        # a slider dragged from 0 to +1 (after the stroke: the brush edit and the slider combine);
        # an attribute slider: a latent direction, or for a conditioned model an entry of its
        # attribute input
        named = [a.name for a in engine.attributes.attributes if a.kind is not SliderKind.PRINCIPAL]
        if named:
            slider = []
            for v in np.linspace(0.02, 1.0, 50):
                _sync(dev)
                t0 = time.perf_counter()
                session.set_sliders({named[0]: float(v)})
                frame = session.composite(screen, scale, detail=True)
                _ = np.ascontiguousarray(frame).copy()
                _sync(dev)
                slider.append(time.perf_counter() - t0)
            out["slider"] = named[0]
            out["slider_first_event_ms"] = round(slider[0] * 1000, 1)  # with the face's region map, found once
            out["slider_event_ms_p50"] = _ms(slider[5:], 50)
            out["slider_event_ms_p95"] = _ms(slider[5:], 95)
        else:  # said, so that a missing figure is not read as a fast one
            out["slider"] = None
            out["slider_note"] = f"{engine.folder.path} has no attribute sliders: `npe attributes` makes them"

        t0 = time.perf_counter()
        save_image(Path(tmp) / "export.jpg", session.composite(detail=True), quality=95, photo=session.photo)
        out["export_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        out["open_file_only_ms"] = round(_time(lambda: load_photo(photo_path)) * 1000, 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if dev.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return out


def _time(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0
