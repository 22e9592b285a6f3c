"""A prepared face cache as small files, to carry training data to another machine.

An aligned cache (``DIR/aligned-R/``, see ``engine.tools.data``) holds raw pixels: 49 KB a face
at 128 px, 1.4 GB for CelebA + LFW. A pack holds the same faces, labels and per-face records as
WebP images in a zip file, 45 MiB for those, and ``--data PACK`` works wherever a data
folder does: the first use unpacks it into ``PACK-unpacked/aligned-R/`` beside it.

With ``--max-mb`` the faces are split over parts of at most that size: ``NAME.npepack`` holds
the first faces of the cache (CelebA's come first, and the held-out ones used for progress
grids), ``NAME-2.npepack``, ``NAME-3.npepack``, ... the rest. Each part can travel on its own
(a lent machine takes 64 MiB per call); ``--data`` names any one of them, and every part
found beside it is unpacked with it.

    meta.json    the cache's own meta.json (this part's faces), with ``packed`` (codec, part)
    labels.npy   int8 (N, 40)
    offsets.npy  int64 (N + 1): image i is images.bin[offsets[i]:offsets[i + 1]]
    images.bin   the WebP images, one after another

Nothing in a pack is unpickled: numpy arrays are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from engine.tools.data import CACHE_VERSION, PACK_SUFFIX, AlignedFaces, aligned_cache

PACK_FORMAT = 1
_PART = re.compile(r"^(?P<base>.+?)(-(?P<part>\d+))?$")


@dataclass(frozen=True)
class PackOptions:
    data: str = ""
    out: str = ""
    resolution: int = 128
    sets: str = "celeba,lfw"
    # WebP quality; measured at 128 px (400 CelebA crops): 75: 36.2 dB from the cache's pixels, 1.8 KB a face
    # (CelebA + LFW in two 25-MiB parts); 80: 37.5 dB, 2.2 KB; 90: 41.0 dB, 3.5 KB
    quality: int = 75
    max_mb: float = 0.0  # the largest part, in MiB (0: one file); further faces go to NAME-2.npepack, ...
    test: int = 64  # held-out faces kept (evenly spaced, in the first part), for a run's progress grids


def _encode(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="WEBP", quality=quality, method=4)
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _part_path(first: Path, k: int) -> Path:
    return first if k == 1 else first.with_name(f"{first.stem}-{k}{PACK_SUFFIX}")


def write_pack(opts: PackOptions) -> dict[str, object]:
    """Pack the training faces of ``opts.sets`` and ``opts.test`` held-out ones at
    ``opts.resolution``; returns what was written."""
    out = Path(opts.out)
    if out.suffix != PACK_SUFFIX or _PART.match(out.stem)["part"]:  # type: ignore[index]
        raise ValueError(f"a pack's name ends in {PACK_SUFFIX}, with no -N before it (that names its parts): {out}")
    sets = tuple(s for s in opts.sets.split(",") if s)
    faces = AlignedFaces(aligned_cache(Path(opts.data), opts.resolution), sets=sets)
    held_out = [i for i, it in enumerate(faces.items) if it["split"] == "test"]
    test = set(held_out[k] for k in np.linspace(0, len(held_out) - 1, min(opts.test, len(held_out))).astype(int))
    rows = [i for i, it in enumerate(faces.items) if it["split"] == "train" or i in test]
    if not rows:
        raise ValueError(f"{opts.data} holds no faces of the sets {', '.join(sets)} at {opts.resolution} px")
    rows.sort(key=lambda i: (i not in test, i))  # the grid faces travel in the first part
    chunks = [rows[s:s + 256] for s in range(0, len(rows), 256)]
    blobs: list[bytes] = []
    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool, \
            tqdm(total=len(rows), desc=f"packing faces at {opts.resolution}px", unit="img") as bar:
        for encoded in pool.map(lambda c: [_encode(im, opts.quality) for im in faces.images(np.asarray(c))], chunks):
            blobs.extend(encoded)
            bar.update(len(encoded))
    limit = opts.max_mb * 2**20 - 2**20 if opts.max_mb else float("inf")  # 1 MiB for the records and labels
    parts: list[list[int]] = [[]]
    size = 0
    for pos, blob in enumerate(blobs):
        if parts[-1] and size + len(blob) > limit:
            parts.append([])
            size = 0
        parts[-1].append(pos)
        size += len(blob)
    for old in pack_parts(out):  # the numbered parts of an earlier pack of this name
        if old != out:
            old.unlink()
    written = []
    for k, part in enumerate(parts, 1):
        path = _part_path(out, k)
        picked = [rows[p] for p in part]
        meta = {"version": CACHE_VERSION, "sets": list(sets), "resolution": faces.resolution,
                "attribute_names": faces.attribute_names, "items": [faces.items[r] for r in picked],
                "packed": {"format": PACK_FORMAT, "codec": "webp", "quality": opts.quality, "part": k,
                           "parts": len(parts)}}
        offsets = np.zeros(len(part) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(blobs[p]) for p in part])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with zipfile.ZipFile(tmp, "w") as z:
            z.writestr("meta.json", json.dumps(meta), compress_type=zipfile.ZIP_DEFLATED)
            z.writestr("labels.npy", _npy(faces.labels(np.asarray(picked))), compress_type=zipfile.ZIP_DEFLATED)
            z.writestr("offsets.npy", _npy(offsets), compress_type=zipfile.ZIP_DEFLATED)
            z.writestr("images.bin", b"".join(blobs[p] for p in part))
        os.replace(tmp, path)
        written.append({"file": str(path), "bytes": path.stat().st_size, "faces": len(part),
                        "celeba": sum(faces.items[r]["set"] == "celeba" for r in picked)})
    return {"parts": written, "train": len(rows) - len(test), "test": len(test), "quality": opts.quality,
            "mean_image_bytes": round(sum(map(len, blobs)) / len(blobs))}


def pack_parts(pack: Path) -> list[Path]:
    """Every part of the pack that ``pack`` (any one of its parts) belongs to, present beside it."""
    base = _PART.match(pack.stem)["base"]  # type: ignore[index]
    numbered = re.compile(re.escape(base) + r"-(\d+)")
    parts = {1: pack.with_name(base + PACK_SUFFIX)} if (pack.parent / (base + PACK_SUFFIX)).is_file() else {}
    for p in pack.parent.glob(f"{base}-*{PACK_SUFFIX}"):
        m = numbered.fullmatch(p.stem)
        if m:
            parts[int(m[1])] = p
    return [parts[k] for k in sorted(parts)]


def _read_part(path: Path) -> tuple[dict, np.ndarray, np.ndarray, bytes]:  # type: ignore[type-arg]
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read("meta.json"))
            if meta.get("packed", {}).get("format") != PACK_FORMAT:
                raise ValueError(f"{path} is a pack of another format: pack the data again")
            labels = np.load(io.BytesIO(z.read("labels.npy")), allow_pickle=False)
            offsets = np.load(io.BytesIO(z.read("offsets.npy")), allow_pickle=False)
            return meta, labels, offsets, z.read("images.bin")
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as e:
        raise ValueError(f"{path} is not a readable face pack ({e}): pack the data again") from e


def unpacked_folder(pack: Path) -> Path:
    """The data folder a pack unpacks into (beside its first part), unpacked on first use and
    again when other parts are found beside it."""
    parts = pack_parts(pack)
    base = _PART.match(pack.stem)["base"]  # type: ignore[index]
    folder = pack.with_name(base + "-unpacked")
    names = [p.name for p in parts]
    for meta_file in folder.glob("aligned-*/meta.json"):
        if json.loads(meta_file.read_text()).get("packed", {}).get("from") == names:
            return folder
    read = [_read_part(p) for p in parts]
    meta = read[0][0]
    res = int(meta["resolution"])
    cache = folder / f"aligned-{res}"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "meta.json").unlink(missing_ok=True)
    n = sum(len(r[2]) - 1 for r in read)
    tmp = cache / "images.tmp.npy"
    images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, res, res, 3))
    jobs: list[tuple[int, bytes, int, int]] = []
    for meta_k, _, offsets, blob in read:
        if meta_k["resolution"] != res or meta_k["attribute_names"] != meta["attribute_names"]:
            raise ValueError(f"the parts of {pack} differ in resolution or labels: pack the data again")
        start = len(jobs)
        jobs += [(start + i, blob, int(offsets[i]), int(offsets[i + 1])) for i in range(len(offsets) - 1)]

    def decode(job: tuple[int, bytes, int, int], into: np.ndarray = images) -> None:
        i, blob, a, b = job
        with Image.open(io.BytesIO(blob[a:b])) as im:
            into[i] = np.asarray(im.convert("RGB"))

    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        list(tqdm(pool.map(decode, jobs), total=n, desc=f"unpacking {', '.join(names)}", unit="img"))
    images.flush()
    del images
    os.replace(tmp, cache / "images.npy")
    np.save(cache / "labels.npy", np.concatenate([r[1] for r in read]))
    merged = {**meta, "items": [it for r in read for it in r[0]["items"]],
              "packed": {**meta["packed"], "from": names}}
    (cache / "meta.json").write_text(json.dumps(merged))  # last: a half-unpacked folder is unpacked again
    return folder
