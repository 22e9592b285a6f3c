"""Training data: the prepared face folders, re-aligned to the canonical template.

DIR holds ``celeba/``, ``utkface/`` and ``lfw/``, laid out as the README's "Training your own
model" describes. Each set is framed differently; every image goes through the project's
own alignment (``engine.core.align``) into one cache per resolution, ``DIR/aligned-R/``:

    images.npy   uint8 (N, R, R, 3)
    labels.npy   int8 (N, 40) CelebA attributes (+1 / -1, 0 unknown)
    meta.json    per image: set, file, identity, split; attribute names; UTK age/gender

The split is by identity where the set names one (CelebA, LFW) and by file name
otherwise, so no person of the held-out split is ever trained on.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from engine.core import align
from engine.core.faces import locate_eyes

CACHE_VERSION = 2
TEST_FRACTION_MOD = 10  # one identity in ten is held out
PACK_SUFFIX = ".npepack"  # a cache packed into one file (engine.tools.pack)
LAYOUT_HINT = "lay the data out as the README's 'Training your own model' describes"


def _held_out(key: str) -> bool:
    digest = hashlib.sha1(key.encode()).digest()
    return int.from_bytes(digest[:4], "little") % TEST_FRACTION_MOD == 0


@dataclass
class Item:
    set: str
    file: str  # relative to DIR
    identity: str
    attrs: list[int] | None = None
    age: int = -1
    gender: int = -1


def read_celeba_attributes(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    lines = path.read_text().splitlines()
    names = lines[1].split()
    table = {}
    for line in lines[2:]:
        parts = line.split()
        if len(parts) == len(names) + 1:
            table[parts[0]] = [int(v) for v in parts[1:]]
    return names, table


CELEBA_LANDMARKS = "list_landmarks_align_celeba.txt"


def read_celeba_landmarks(path: Path) -> dict[str, np.ndarray]:
    """CelebA's five hand-placed points of each aligned image (eyes, nose, mouth corners; the
    viewer's left first), as (5, 2) float64 in the 178x218 frame: file name -> points. Reads
    CelebA's own format (a count line, the column names, then ``file x1 y1 ... x5 y5``) and the
    same table as CSV; rows that are not a file name and ten numbers are skipped."""
    table: dict[str, np.ndarray] = {}
    for line in path.read_text().splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) != 11 or not parts[0].lower().endswith((".jpg", ".png")):
            continue
        try:
            table[parts[0]] = np.array([float(v) for v in parts[1:]]).reshape(5, 2)
        except ValueError:
            continue
    return table


def celeba_eyes(table: dict[str, np.ndarray] | None, name: str, width: int) -> np.ndarray:
    """The eye centres of the aligned CelebA image ``name`` in an image ``width`` pixels wide
    (178, or 89 for the half-size copies): its own hand-placed eyes where ``table`` has them,
    else the place CelebA's alignment puts eyes on average."""
    points = None if table is None else table.get(name)
    eyes = align.CELEBA_ALIGNED_EYES if points is None else points[:2]
    s = width / 178.0
    return (eyes + 0.5) * s - 0.5  # pixel centres sit at integer coordinates at either size


def celeba_landmark_table(data_dir: Path) -> dict[str, np.ndarray] | None:
    """``DIR/celeba/list_landmarks_align_celeba.txt`` read, or None when the data folder has none."""
    path = data_dir / "celeba" / CELEBA_LANDMARKS
    return read_celeba_landmarks(path) if path.is_file() else None


def celeba_with_eyes(data_dir: Path, held_out: bool) -> tuple[list[Item], dict[str, np.ndarray] | None]:
    """The aligned CelebA items of one split whose eyes are known, and the landmark table: with
    the table, the items it covers (their own eyes); without it, all of them (the average eye
    place, ``celeba_eyes``)."""
    table = celeba_landmark_table(data_dir)
    items = [it for it in list_items(data_dir, ("celeba",))[0]
             if _held_out(it.identity) == held_out and (table is None or Path(it.file).name in table)]
    return items, table


def _is_pack(path: Path) -> bool:
    return path.suffix == PACK_SUFFIX and path.is_file()


def list_items(data_dir: Path, sets: tuple[str, ...]) -> tuple[list[Item], list[str]]:
    items: list[Item] = []
    names: list[str] = []
    attr_table: dict[str, list[int]] = {}
    attr_file = data_dir / "celeba" / "list_attr_celeba.txt"
    if attr_file.exists():
        names, attr_table = read_celeba_attributes(attr_file)
    ident: dict[str, str] = {}
    id_file = data_dir / "celeba" / "identity_CelebA.txt"
    if id_file.exists():
        for line in id_file.read_text().splitlines():
            fname, _, person = line.partition(" ")
            ident[fname] = person.strip()
    if "celeba" in sets:
        for p in sorted((data_dir / "celeba" / "images").glob("*.jpg")):
            items.append(Item("celeba", f"celeba/images/{p.name}", "celeba:" + ident.get(p.name, p.name),
                              attrs=attr_table.get(p.name)))
    if "lfw" in sets:
        for p in sorted((data_dir / "lfw" / "images").glob("*/*.jpg")):
            items.append(Item("lfw", f"lfw/images/{p.parent.name}/{p.name}", "lfw:" + p.parent.name))
    if "utkface" in sets:
        labels = data_dir / "utkface" / "labels.csv"
        with labels.open() as fh:
            for row in csv.DictReader(fh):
                items.append(Item("utkface", f"utkface/images/{row['file']}", "utk:" + row["file"],
                                  age=int(row["age"]), gender=int(row["gender"])))
    return items, names


def celeba_transform(image: np.ndarray, size: int) -> np.ndarray:
    """Aligned CelebA images share one eye position (scaled with the image width)."""
    s = image.shape[1] / 178.0
    return align.eyes_to_crop(align.CELEBA_ALIGNED_EYES * s, size)


def align_item(item: Item, data_dir: Path, size: int,
               locate: Callable[[np.ndarray], np.ndarray | None]) -> np.ndarray | None:
    """Aligned RGB crop of one image, or None when no face is found."""
    bgr = cv2.imread(str(data_dir / item.file), cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if item.set == "celeba":
        t = celeba_transform(rgb, size)
    else:
        eyes = locate(rgb)
        if eyes is None:
            return None
        t = align.eyes_to_crop(eyes, size)
    return align.warp_to_crop(rgb, t, size)


def build_cache(data_dir: Path, size: int, sets: tuple[str, ...] = ("celeba", "lfw"),
                locate: Callable[[np.ndarray], np.ndarray | None] | None = None) -> Path:
    """Align every image of ``sets`` into ``DIR/aligned-SIZE`` (skipped if up to date). A pack
    (``engine.tools.pack``) holds its cache already: it must hold ``sets`` at ``size``."""
    if _is_pack(data_dir):
        cache = aligned_cache(data_dir, size)
        packed = json.loads((cache / "meta.json").read_text())["sets"]
        if not set(sets) <= set(packed):
            raise ValueError(f"{data_dir} packs the sets {', '.join(packed)}, not {', '.join(sets)}")
        return cache
    out = data_dir / f"aligned-{size}"
    meta_path = out / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("version") == CACHE_VERSION and tuple(meta.get("sets", ())) == tuple(sets):
            return out
    if locate is None:
        locate = locate_eyes
    items, names = list_items(data_dir, sets)
    if not items:
        raise ValueError(f"{data_dir} holds no images of the sets {', '.join(sets)}: {LAYOUT_HINT}")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "images.tmp.npy"
    images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(items), size, size, 3))
    kept: list[Item] = []
    for item in tqdm(items, desc=f"aligning faces to {size}px", unit="img"):
        crop = align_item(item, data_dir, size, locate)
        if crop is not None:
            images[len(kept)] = crop
            kept.append(item)
    images.flush()
    del images
    final = np.load(tmp, mmap_mode="r")[: len(kept)]
    np.save(out / "images.npy", final)
    del final
    tmp.unlink()
    labels = np.zeros((len(kept), len(names)), dtype=np.int8)
    for i, it in enumerate(kept):
        if it.attrs is not None:
            labels[i] = it.attrs
    np.save(out / "labels.npy", labels)
    meta = {
        "version": CACHE_VERSION,
        "sets": list(sets),
        "resolution": size,
        "attribute_names": names,
        "dropped": len(items) - len(kept),
        "items": [
            {"set": it.set, "file": it.file, "identity": it.identity,
             "split": "test" if _held_out(it.identity) else "train",
             "age": it.age, "gender": it.gender}
            for it in kept
        ],
    }
    meta_path.write_text(json.dumps(meta))
    return out


def aligned_cache(data_dir: Path, size: int) -> Path:
    """The aligned cache for ``size``: the one already built, else built from the sets present
    (a pack: its own, unpacked beside it on first use)."""
    if _is_pack(data_dir):
        from engine.tools.pack import unpacked_folder  # the pack module reads caches with this one

        folder = unpacked_folder(data_dir)
        if not (folder / f"aligned-{size}" / "meta.json").is_file():
            raise ValueError(f"{data_dir} packs faces of another size than {size} px: pack them at {size} px")
        return folder / f"aligned-{size}"
    cache = data_dir / f"aligned-{size}"
    if (cache / "meta.json").exists():
        return cache
    sets = tuple(s for s in ("celeba", "lfw") if (data_dir / s).is_dir())
    if not sets:
        raise ValueError(f"{data_dir} holds no prepared face sets (celeba/, lfw/): {LAYOUT_HINT}")
    return build_cache(data_dir, size, sets)


class AlignedFaces:
    """The aligned cache of one resolution, memory-mapped."""

    def __init__(self, cache_dir: Path, split: str | None = None, sets: tuple[str, ...] | None = None) -> None:
        meta = json.loads((cache_dir / "meta.json").read_text())
        self.resolution: int = meta["resolution"]
        self.attribute_names: list[str] = meta["attribute_names"]
        self._images = np.load(cache_dir / "images.npy", mmap_mode="r")
        self._labels = np.load(cache_dir / "labels.npy")
        items = meta["items"]
        keep = [i for i, it in enumerate(items)
                if (split is None or it["split"] == split) and (sets is None or it["set"] in sets)]
        self.index = np.asarray(keep, dtype=np.int64)
        self.items = [items[i] for i in keep]

    def __len__(self) -> int:
        return len(self.index)

    def images(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (len(rows), R, R, 3) for positions in this split."""
        idx = self.index[np.asarray(rows)]
        order = np.argsort(idx)
        out = np.empty((len(idx), self.resolution, self.resolution, 3), dtype=np.uint8)
        out[order] = self._images[idx[order]]
        return out

    def labels(self, rows: np.ndarray | None = None) -> np.ndarray:
        idx = self.index if rows is None else self.index[np.asarray(rows)]
        return self._labels[idx]

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Endless shuffled batches of row positions."""
        while True:
            perm = rng.permutation(len(self))
            for i in range(0, len(perm) - batch_size + 1, batch_size):
                yield perm[i:i + batch_size]
