"""Procedural stand-ins for the seven Re-ID benchmarks, written in their real folder layouts.

No real data set can be downloaded in CI, so ``generate(root, layout)`` draws small pedestrian images
that the real parsers (``mhsa.data.datasets``) read unchanged. Design (details in docs/data.md):

* identity = attributes drawn from a numpy Generator keyed by ``(seed, role, index)``: shirt and
  trouser colours, shirt pattern (plain / stripes / checked), skin and hair colour, build, sleeves,
  and accessories (hat, bag, backpack). The key does not include the layout, so ``market1501`` and
  ``occluded_duke`` generated with the same seed show the same people (a controlled comparison).
* image = identity seen by a camera: per-camera background texture and colour, per-camera colour
  gain (illumination), plus per-image pose (stride, arm swing), mirror, slight shear, scale and
  position jitter, clutter, sensor noise.
* variants: ``holistic``; ``occluded`` (query always, some train/gallery images: a car, pole, wall,
  blob or another synthetic person covers 20-50 % of the body); ``partial`` (query = the top or left
  40-70 % of the body, resized to the full image size).

Everything is derived from numpy Generators seeded by integer tuples, never from the clock or
``hash()``, so the same arguments give byte-identical files.

The generator knows where the person and the occluder are: with ``labels=True`` it also writes
``labels.npz`` at the data set's root, one per-pixel map per image (``LABELS``: background, visible
body, occluder), which real data sets cannot offer (docs/demo-study.md, "The paper's premise"). The
images are the same bytes with or without it.
"""

from __future__ import annotations

import argparse
import colorsys
import io
import json
import numbers
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from mhsa.switches import BOUNDS
from mhsa.errors import ConfigError
from mhsa.io import held
from mhsa.io import atomic_write, atomic_write_text

from .datasets import UnknownDatasetError, load, names

VARIANTS = ("holistic", "occluded", "partial")
# layout -> (default variant, default number of cameras of the real data set)
LAYOUTS = {
    "market1501": ("holistic", 6),
    "dukemtmc": ("holistic", 8),
    "cuhk03_detected": ("holistic", 2),
    "cuhk03_labeled": ("holistic", 2),
    "occluded_duke": ("occluded", 8),
    "p_dukemtmc": ("occluded", 8),
    "partial_reid": ("partial", 2),
    "partial_ilids": ("partial", 2),
}
# Roles key the identity RNG; train and test people never share a key, so the id sets are disjoint.
TRAIN, TEST, DISTRACTOR, OCCLUDER = 1, 2, 3, 4
# Fraction of non-query images that are occluded in the occluded variant (Occluded-Duke has ~10 %
# occluded gallery images and some occluded train images; P-DukeMTMC-reID ~20 % occluded train).
OCCLUDED_TRAIN_FRACTION = 0.2
OCCLUDED_GALLERY_FRACTION = 0.1
# Written last by `generate` (its parameters as JSON): a folder without it is unfinished.
COMPLETE_MARKER = ".complete"
# Generator parameters a preset of config.yaml may set under `synthetic:` (the schema lists the same).
PRESET_PARAMS = ("num_ids", "images_per_id", "height", "width", "labels")
# Seeds of the synthetic data sets: 1000 + the data set's position in the registry (`names()`).
SEED_BASE = 1000
# The classes of a label map (labels.npz): index = value of its pixels.
LABELS = ("background", "body", "occluder")
LABELS_FILE = "labels.npz"
SKIN = [(241, 194, 167), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 56, 31)]
HAIR = [(20, 16, 14), (70, 45, 25), (120, 80, 40), (200, 170, 110), (150, 150, 150), (140, 50, 30)]


def is_complete(root: str | Path) -> bool:
    """True when ``root`` holds a finished synthetic data set (its marker is written last)."""
    return (Path(root) / COMPLETE_MARKER).is_file()


def dataset_seed(name: str) -> int:
    """The one seed of the synthetic stand-in for data set ``name``, used by the workflow and by
    ``python -m mhsa train``, so a name means the same images everywhere. Distinct per data set, so
    two layouts never share their train identities by accident."""
    known = names()
    if name not in known:
        raise UnknownDatasetError(f"unknown data set {name!r}; known: {', '.join(known)}")
    return SEED_BASE + known.index(name)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key])


def _colour(
    rng: np.random.Generator, v_lo: float = 0.2, v_hi: float = 1.0, s_lo: float = 0.25, s_hi: float = 1.0
) -> tuple[int, int, int]:
    h, s, v = rng.random(), rng.uniform(s_lo, s_hi), rng.uniform(v_lo, v_hi)
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))


@dataclass(frozen=True)
class Person:
    """Appearance attributes fixed per identity."""

    shirt: tuple
    shirt2: tuple  # second colour of stripes / checks
    pattern: str  # plain | stripes | checked
    period: float  # pattern period, fraction of the person height
    trousers: tuple
    shoes: tuple
    skin: tuple
    hair: tuple
    long_sleeves: bool
    build: float  # width / height ratio of the body
    hat: tuple | None
    bag: tuple | None
    backpack: tuple | None


def _person(seed: int, role: int, index: int) -> Person:
    rng = _rng(seed, 11, role, index)
    return Person(
        shirt=_colour(rng),
        shirt2=_colour(rng),
        pattern=str(rng.choice(["plain", "stripes", "checked"], p=[0.5, 0.3, 0.2])),
        period=float(rng.uniform(0.04, 0.08)),
        trousers=_colour(rng, 0.1, 0.8),
        shoes=_colour(rng, 0.05, 0.5),
        skin=SKIN[rng.integers(len(SKIN))],
        hair=HAIR[rng.integers(len(HAIR))],
        long_sleeves=bool(rng.random() < 0.5),
        build=float(rng.uniform(0.30, 0.44)),
        hat=_colour(rng) if rng.random() < 0.25 else None,
        bag=_colour(rng) if rng.random() < 0.3 else None,
        backpack=_colour(rng, 0.1, 0.7) if rng.random() < 0.3 else None,
    )


@dataclass(frozen=True)
class Camera:
    """Scene and sensor of one camera: background texture/colours, colour gain, typical shear."""

    texture: int
    bg1: tuple
    bg2: tuple
    period: int
    gain: tuple
    shear: float
    noise: float


def _camera(seed: int, cam: int) -> Camera:
    rng = _rng(seed, 13, cam)
    return Camera(
        texture=int(rng.integers(4)),
        # Muted scenes (streets, walls, floors) so that clothes, not the camera, dominate the colours.
        bg1=_colour(rng, 0.3, 0.9, 0.0, 0.3),
        bg2=_colour(rng, 0.2, 0.8, 0.0, 0.3),
        period=int(rng.integers(4, 12)),
        gain=tuple(float(g) for g in rng.uniform(0.85, 1.15, size=3)),
        shear=float(rng.uniform(-0.12, 0.12)),
        noise=float(rng.uniform(2.0, 8.0)),
    )


def _background(cam: Camera, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    phase = int(rng.integers(cam.period * 2))
    if cam.texture == 0:  # vertical gradient (open street)
        t = (y / max(h - 1, 1))[..., None]
    elif cam.texture == 1:  # horizontal bands (pavement)
        t = (((y + phase) // cam.period) % 2)[..., None] * 0.6
    elif cam.texture == 2:  # vertical bands (building facade)
        t = (((x + phase) // cam.period) % 2)[..., None] * 0.6
    else:  # tiles
        t = ((((x + phase) // cam.period) + (y // cam.period)) % 2)[..., None] * 0.5
    img = ((1 - t) * np.array(cam.bg1, float) + t * np.array(cam.bg2, float)) * rng.uniform(0.8, 1.2)
    for _ in range(int(rng.integers(0, 3))):  # clutter: signs, doors, parked things
        x0, y0 = int(rng.integers(w)), int(rng.integers(h))
        dy, dx = int(rng.integers(4, h // 3)), int(rng.integers(4, w // 2))
        img[y0 : y0 + dy, x0 : x0 + dx] = _colour(rng, 0.2, 0.9)
    return img


def _draw_person(p: Person, rng: np.random.Generator, h: int, w: int, box) -> Image.Image:
    """The person on a transparent layer; ``box`` = (x0, y0, width, height) of the body."""
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    x0, y0, bw, bh = box
    cx = x0 + bw / 2

    def jit(c):  # per-image colour jitter: same clothes, slightly different look
        return tuple(int(np.clip(v * rng.uniform(0.92, 1.08), 0, 255)) for v in c) + (255,)

    def rect(xa, ya, xb, yb, colour):
        d.rectangle([x0 + xa * bw, y0 + ya * bh, x0 + xb * bw, y0 + yb * bh], fill=colour)

    stride, swing = rng.uniform(-0.12, 0.12), rng.uniform(-0.05, 0.05)
    if p.backpack:  # behind the torso: shows as bands on both sides
        rect(0.02, 0.17, 0.98, 0.47, jit(p.backpack))
    # legs and shoes
    rect(0.22 + stride, 0.52, 0.48 + stride, 0.95, jit(p.trousers))
    rect(0.52 - stride, 0.52, 0.78 - stride, 0.95, jit(p.trousers))
    rect(0.18 + stride, 0.94, 0.48 + stride, 1.0, jit(p.shoes))
    rect(0.52 - stride, 0.94, 0.82 - stride, 1.0, jit(p.shoes))
    # arms: sleeves in the shirt colour, hands in skin colour
    sleeve = jit(p.shirt)
    for side, s in ((0.0, swing), (0.84, -swing)):
        rect(side, 0.16 + s, side + 0.16, 0.30 + s, sleeve)
        rect(side, 0.30 + s, side + 0.16, 0.46 + s, sleeve if p.long_sleeves else jit(p.skin))
        rect(side, 0.46 + s, side + 0.16, 0.50 + s, jit(p.skin))
    # torso with its pattern
    rect(0.14, 0.15, 0.86, 0.54, jit(p.shirt))
    if p.pattern != "plain":
        c2, n = jit(p.shirt2), max(2, int(0.39 / p.period))
        for i in range(0, n, 2):
            rect(0.14, 0.15 + i * 0.39 / n, 0.86, 0.15 + (i + 1) * 0.39 / n, c2)
        if p.pattern == "checked":
            m = max(2, int(0.72 / (p.period * 2)))
            for i in range(1, m, 2):
                rect(0.14 + i * 0.72 / m, 0.15, 0.14 + (i + 1) * 0.72 / m, 0.54, jit(p.shirt))
    # head, hair, hat
    hw, hh = 0.44 * bw, 0.14 * bh
    d.ellipse([cx - hw / 2, y0 + 0.01 * bh, cx + hw / 2, y0 + 0.01 * bh + hh], fill=jit(p.skin))
    d.chord([cx - hw / 2, y0, cx + hw / 2, y0 + hh], 180, 360, fill=jit(p.hair))
    if p.hat:
        rect(0.22, -0.01, 0.78, 0.05, jit(p.hat))
    if p.bag:  # shoulder bag on the right side with a strap across the torso
        rect(0.80, 0.38, 1.04, 0.56, jit(p.bag))
        d.line([x0 + 0.2 * bw, y0 + 0.16 * bh, x0 + 0.9 * bw, y0 + 0.4 * bh], fill=jit(p.bag), width=2)
    return layer


def _body_box(rng: np.random.Generator, p: Person, h: int, w: int):
    bh = h * rng.uniform(0.78, 0.96)
    bw = min(bh * p.build * rng.uniform(0.92, 1.08), w * 0.95)
    x0 = (w - bw) / 2 + rng.uniform(-0.08, 0.08) * w
    y0 = rng.uniform(0.01, max(h - bh - 1, 0.02))
    return x0, y0, bw, bh


# ---- occlusion knob (docs/demo-study.md): how hard the occluded variant is. The defaults draw exactly what the
# generator drew before the knob existed (same RNG calls in the same order), so default data sets
# are byte-identical to earlier ones.
OCCLUDER_KINDS = ("car", "pole", "blob", "person")


@dataclass(frozen=True)
class Occlusion:
    """Occluders of the ``occluded`` variant.

    ``coverage``: (lo, hi), share of the body box hidden, drawn uniformly per image (a fixed share:
    lo == hi; 0 puts the occluder next to the body without covering it). ``kinds``: occluders drawn
    uniformly among these (``car`` band from below, ``pole``/wall band from one side, ``blob``, another
    ``person``). ``blob_height``: (lo, hi), where a blob's centre sits on the body, 0 = top, 1 = feet.
    """

    coverage: tuple = (0.2, 0.5)
    kinds: tuple = OCCLUDER_KINDS
    blob_height: tuple = (0.3, 0.75)

    @classmethod
    def parse(cls, spec: Occlusion | dict | None) -> Occlusion:
        if isinstance(spec, Occlusion):
            return spec
        spec = dict(spec or {})
        unknown = sorted(set(spec) - {"coverage", "kinds", "blob_height"})
        if unknown:
            raise ValueError(f"occlusion: unknown key(s) {unknown}; known: coverage, kinds, blob_height")
        occ = cls(**{k: tuple(v) if isinstance(v, list | tuple) else v for k, v in spec.items()})
        for key in ("coverage", "blob_height"):
            lo_hi = getattr(occ, key)
            if len(lo_hi) != 2 or not 0.0 <= lo_hi[0] <= lo_hi[1] <= 1.0:
                raise ValueError(f"occlusion.{key}={list(lo_hi)!r}: expected [lo, hi] with 0 <= lo <= hi <= 1")
        bad = [k for k in occ.kinds if k not in OCCLUDER_KINDS]
        if not occ.kinds or bad:
            raise ValueError(f"occlusion.kinds={list(occ.kinds)!r}: expected a non-empty subset of "
                             f"{list(OCCLUDER_KINDS)}")
        return occ

    def non_default(self) -> dict:
        """The fields that differ from the defaults (recorded in the data set's marker)."""
        default = Occlusion()
        return {k: list(getattr(self, k)) for k in ("coverage", "kinds", "blob_height")
                if getattr(self, k) != getattr(default, k)}


def _occlude(img: Image.Image, box, rng: np.random.Generator, seed: int, occ: Occlusion = Occlusion()) -> np.ndarray:
    """Cover ``occ.coverage`` of the body with a car, pole/wall, blob or another synthetic person;
    returns where the occluder is (a boolean mask). It is drawn opaque on a layer of its own, so
    compositing gives the pixels drawing on ``img`` would."""
    x0, y0, bw, bh = box
    frac = rng.uniform(*occ.coverage)
    kind = OCCLUDER_KINDS.index(occ.kinds[int(rng.integers(len(occ.kinds)))])
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    colour = _colour(rng, 0.15, 0.95)
    if kind == 0:  # car / bench / bike in front of the legs: bottom band
        top = y0 + bh * (1 - frac)
        d.rounded_rectangle([x0 - bw * 0.6, top, x0 + bw * 1.6, img.height + 4], radius=4, fill=colour + (255,))
        window = _colour(rng, 0.1, 0.5)
        # max(): a tiny coverage would give an inverted box (the defaults never do)
        d.rectangle([x0 - bw * 0.3, top + 2, x0 + bw * 1.3, max(top + 2, top + bh * frac * 0.35)], fill=window + (255,))
    elif kind == 1:  # pole, tree or wall edge: vertical band from one side
        if rng.random() < 0.5:
            d.rectangle([-1, 0, x0 + bw * frac, img.height], fill=colour + (255,))
        else:
            d.rectangle([x0 + bw * (1 - frac), 0, img.width + 1, img.height], fill=colour + (255,))
    elif kind == 2:  # blob (umbrella, plant, sign) over the torso or legs
        r = np.sqrt(frac * bw * bh / np.pi)
        cy = y0 + bh * rng.uniform(*occ.blob_height)
        cx = x0 + bw * rng.uniform(0.2, 0.8)
        d.ellipse([cx - r * 1.2, cy - r / 1.2, cx + r * 1.2, cy + r / 1.2], fill=colour + (255,))
    else:  # another pedestrian walking past, shifted sideways so that ``frac`` of the body is hidden
        other = _person(seed, OCCLUDER, int(rng.integers(1 << 30)))
        shift = bw * (1 - frac) * (1 if rng.random() < 0.5 else -1)
        layer = _draw_person(other, rng, img.height, img.width, (x0 + shift, y0 + bh * 0.03, bw, bh))
    img.alpha_composite(layer)
    return np.asarray(layer)[..., 3] >= 128


def render(
    person: Person, camera: Camera, rng: np.random.Generator, height: int, width: int,
    occluded: bool = False, partial: bool = False, seed: int = 0, occlusion: Occlusion = Occlusion(),
) -> Image.Image:
    """One RGB image of ``person`` seen by ``camera``; all per-image randomness comes from ``rng``."""
    return render_labelled(person, camera, rng, height, width, occluded, partial, seed, occlusion)[0]


def render_labelled(
    person: Person, camera: Camera, rng: np.random.Generator, height: int, width: int,
    occluded: bool = False, partial: bool = False, seed: int = 0, occlusion: Occlusion = Occlusion(),
) -> tuple[Image.Image, np.ndarray]:
    """`render`'s image and its label map (height x width, uint8, values index ``LABELS``): the same
    random draws, so the image is the same bytes."""
    img = Image.fromarray(_background(camera, rng, height, width).astype(np.uint8)).convert("RGBA")
    box = _body_box(rng, person, height, width)
    layer = _draw_person(person, rng, height, width, box)
    shear = camera.shear + rng.uniform(-0.05, 0.05)
    affine = (1, shear, -shear * height / 2, 0, 1, 0)
    layer = layer.transform(layer.size, Image.AFFINE, affine, Image.BILINEAR)
    if rng.random() < 0.5:  # viewpoint: seen from the other side
        layer = ImageOps.mirror(layer)
        box = (width - box[0] - box[2], box[1], box[2], box[3])
    img.alpha_composite(layer)
    labels = np.where(np.asarray(layer)[..., 3] >= 128, 1, 0).astype(np.uint8)
    if occluded:
        labels[_occlude(img, box, rng, seed, occlusion)] = 2
    img = img.convert("RGB")
    if partial:  # keep the top or left 40-70 % of the body, resized like Partial-REID probes
        x0, y0, bw, bh = box
        f = rng.uniform(0.4, 0.7)
        if rng.random() < 0.5:
            crop = (max(0, x0 - 2), max(0, y0 - 2), min(width, x0 + bw + 2), y0 + f * bh)
        else:
            crop = (max(0, x0 - 2), max(0, y0 - 2), x0 + f * bw, min(height, y0 + bh + 2))
        box = tuple(int(round(c)) for c in crop)
        img = img.crop(box).resize((width, height), Image.BILINEAR)
        labels = np.asarray(Image.fromarray(labels).crop(box).resize((width, height), Image.NEAREST))
    arr = np.asarray(img, dtype=float) * np.array(camera.gain) * rng.uniform(0.85, 1.15)
    arr += rng.normal(0.0, camera.noise, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), labels


@dataclass
class _Shot:
    """One image to write: relative path, who, which camera, how it is degraded."""

    rel: str
    role: int
    index: int
    cam: int
    occluded: bool = False
    partial: bool = False


def _id_cameras(rng: np.random.Generator, n_images: int, num_cams: int) -> list[int]:
    """Cameras of one identity's images: >= 3 cameras where possible so that 2 can be used as query."""
    k = min(num_cams, max(2, int(rng.integers(3, num_cams + 1)) if num_cams >= 3 else 2), n_images)
    used = rng.choice(num_cams, size=k, replace=False)
    cams = list(used) + list(rng.choice(used, size=n_images - k))
    return [int(c) for c in rng.permutation(cams)]


def _market_style_plan(layout, variant, seed, num_ids, images_per_id, num_cams, rng) -> list[_Shot]:
    ext = ".png" if layout.startswith("cuhk03") else ".jpg"

    def name(pid, cam, n):
        if layout == "market1501":
            tag = f"{pid:04d}" if pid >= 0 else "-1"  # junk is written "-1_c1s1_...", as in the release
            return f"{tag}_c{cam + 1}s1_{n:06d}_00{ext}"
        if layout.startswith("cuhk03"):
            return f"{pid:04d}_c{cam + 1}_{n}{ext}"
        return f"{pid:04d}_c{cam + 1}_f{n:07d}{ext}"

    occ = variant == "occluded"
    shots = []
    # Non-contiguous original ids (as in the real sets) so that relabelling is exercised.
    for i in range(num_ids):
        pid = 2 * i + 2
        for n, cam in enumerate(_id_cameras(rng, images_per_id, num_cams)):
            shots.append(_Shot(f"bounding_box_train/{name(pid, cam, n)}", TRAIN, i, cam,
                               occluded=occ and rng.random() < OCCLUDED_TRAIN_FRACTION))
    for i in range(num_ids):
        pid = 2 * i + 3
        cams = _id_cameras(rng, images_per_id, num_cams)
        query_cams = list(dict.fromkeys(cams))[: min(2, len(set(cams)) - 1)]
        for n, cam in enumerate(cams):
            if cam in query_cams:  # the first image from each query camera is a query
                query_cams.remove(cam)
                shots.append(_Shot(f"query/{name(pid, cam, n)}", TEST, i, cam,
                                   occluded=occ, partial=variant == "partial"))
            else:
                shots.append(_Shot(f"bounding_box_test/{name(pid, cam, n)}", TEST, i, cam,
                                   occluded=occ and rng.random() < OCCLUDED_GALLERY_FRACTION))
    if not layout.startswith("cuhk03"):  # Market: pid 0 distractors; Duke: gallery-only ids
        for j in range(max(1, num_ids // 4)):
            pid = 0 if layout == "market1501" else 2 * num_ids + 2 + j
            cam = int(rng.integers(num_cams))
            shots.append(_Shot(f"bounding_box_test/{name(pid, cam, 900 + j)}", DISTRACTOR, j, cam))
    if layout == "market1501":  # junk boxes (pid -1): background-heavy bad detections
        for j in range(max(1, num_ids // 8)):
            cam = int(rng.integers(num_cams))
            shots.append(_Shot(f"bounding_box_test/{name(-1, cam, 950 + j)}", DISTRACTOR, 10_000 + j, cam,
                               partial=True))
    return shots


def _p_duke_plan(variant, seed, num_ids, images_per_id, num_cams, rng) -> list[_Shot]:
    def name(split, kind, pid, cam, n):
        return f"{split}/{kind}/{pid:04d}/{pid:04d}_c{cam + 1}_f{n:07d}.jpg"

    occ, whole = "occluded_body_images", "whole_body_images"
    shots = []
    for i in range(num_ids):
        pid = 2 * i + 2
        for n, cam in enumerate(_id_cameras(rng, images_per_id, num_cams)):
            o = rng.random() < OCCLUDED_TRAIN_FRACTION
            shots.append(_Shot(name("train", occ if o else whole, pid, cam, n), TRAIN, i, cam,
                               occluded=o and variant == "occluded", partial=o and variant == "partial"))
    for i in range(num_ids):
        pid = 2 * i + 3
        cams = _id_cameras(rng, images_per_id, num_cams)
        query_cams = list(dict.fromkeys(cams))[: min(2, len(set(cams)) - 1)]
        for n, cam in enumerate(cams):
            if cam in query_cams:
                query_cams.remove(cam)
                shots.append(_Shot(name("test", occ, pid, cam, n), TEST, i, cam,
                                   occluded=variant == "occluded", partial=variant == "partial"))
            else:
                shots.append(_Shot(name("test", whole, pid, cam, n), TEST, i, cam))
    return shots


def _partial_plan(layout, variant, num_ids, images_per_id, rng) -> list[_Shot]:
    shots = []
    deg = {"occluded": variant == "occluded", "partial": variant == "partial"}
    for i in range(num_ids):
        pid = i + 1
        if layout == "partial_reid":  # images_per_id / 2 probe shots and as many full-body shots
            half = max(1, images_per_id // 2)
            for n in range(half):
                shots.append(_Shot(f"partial_body_images/{pid:03d}_{n + 1:02d}.jpg", TEST, i, 0, **deg))
            for n in range(half):
                shots.append(_Shot(f"whole_body_images/{pid:03d}_{n + 1:02d}.jpg", TEST, i, 1))
        else:  # Partial-iLIDS: one probe and one gallery image per id
            shots.append(_Shot(f"Probe/{pid:03d}.jpg", TEST, i, 0, **deg))
            shots.append(_Shot(f"Gallery/{pid:03d}.jpg", TEST, i, 1))
    return shots


def _readme(layout: str, params: dict) -> str:
    return (
        f"SYNTHETIC DATA - not the real {layout} data set.\n"
        "Procedurally drawn pedestrians written by mhsa.data.synthetic in the real folder layout and\n"
        "file naming, so that the real parser reads it. Useful for tests and smoke runs only; numbers\n"
        "measured on it say nothing about the paper's benchmarks.\n"
        f"Parameters: {json.dumps(params, sort_keys=True)}\n"
    )


def generator_params(layout, seed, num_ids, images_per_id, num_cams, height, width, variant) -> dict:
    """The checked, complete generator parameters (also the content of the marker file)."""
    if layout not in LAYOUTS:
        raise UnknownDatasetError(f"unknown data set {layout!r}; known: {', '.join(LAYOUTS)}")
    variant = variant or LAYOUTS[layout][0]
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    num_cams = num_cams or LAYOUTS[layout][1]
    values = dict(seed=seed, num_ids=num_ids, images_per_id=images_per_id, num_cams=num_cams, height=height,
                  width=width)
    for key, value in values.items():  # the bounds of mhsa.switches.BOUNDS, the one place they live
        bound = BOUNDS[f"data.synthetic.{key}"]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not bound.contains(value):
            raise ConfigError(f"synthetic data parameter {key!r} must be an integer {bound.text()}, got {value!r} "
                              "(data.synthetic, presets.<name>.synthetic)")
    return dict(layout=layout, seed=seed, num_ids=num_ids, images_per_id=images_per_id, num_cams=num_cams,
                height=height, width=width, variant=variant)


def _marker(out: Path) -> dict | None:
    try:
        return json.loads((out / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):  # a marker cut short by an older, non-atomic writer
        return None


def _prepare(out: Path, params: dict, overwrite: bool) -> bool:
    """False when ``out`` already holds this data set; else empties it (only ever what this generator
    wrote: never a real data set that happens to be there) and returns True."""
    if not overwrite and is_complete(out) and _marker(out) == params:
        return False
    if out.exists():
        if any(out.iterdir()) and not (out / "README.txt").is_file():
            raise FileExistsError(f"{out} exists and is not a synthetic data set; refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return True


def _plan(params: dict, rng: np.random.Generator) -> list[_Shot]:
    layout, variant, seed = params["layout"], params["variant"], params["seed"]
    num_ids, per_id, cams = params["num_ids"], params["images_per_id"], params["num_cams"]
    if layout == "p_dukemtmc":
        return _p_duke_plan(variant, seed, num_ids, per_id, cams, rng)
    if layout.startswith("partial"):
        return _partial_plan(layout, variant, num_ids, per_id, rng)
    return _market_style_plan(layout, variant, seed, num_ids, per_id, cams, rng)


def _write_images(out: Path, params: dict, shots: list[_Shot], occlusion: Occlusion | None = None,
                  labels: bool = False) -> None:
    seed, layout, height, width = params["seed"], params["layout"], params["height"], params["width"]
    occlusion = Occlusion() if occlusion is None else occlusion
    cameras = [_camera(seed, c) for c in range(params["num_cams"])]
    people: dict[tuple[int, int], Person] = {}
    maps = np.zeros((len(shots) if labels else 0, height, width), np.uint8)
    for n, shot in enumerate(shots):
        person = people.setdefault((shot.role, shot.index), _person(seed, shot.role, shot.index))
        img_rng = _rng(seed, 19, zlib.crc32(layout.encode()), n)
        img, label_map = render_labelled(person, cameras[shot.cam], img_rng, height, width, shot.occluded,
                                         shot.partial, seed, occlusion)
        if labels:
            maps[n] = label_map
        path = out / shot.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        options = {"format": "PNG"} if path.suffix == ".png" else {"format": "JPEG", "quality": 95}
        try:
            img.save(path, **options)
        except OSError as err:  # PIL's write errors (a full disk) name no file: the one line should
            if err.filename is None:
                err.filename = str(path)
            raise
    if labels:
        paths = np.array([shot.rel for shot in shots])
        atomic_write(out / LABELS_FILE, lambda tmp: _save_labels(tmp, paths, maps))


def _save_labels(tmp: str, paths: np.ndarray, maps: np.ndarray) -> None:
    with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a temp name
        np.savez_compressed(fh, paths=paths, labels=maps, classes=np.array(LABELS))


def read_labels(root: str | Path) -> dict[str, np.ndarray]:
    """The label maps of a data set generated with ``labels=True``: relative path -> (H, W) uint8 map
    (values index ``LABELS``); {} when it has none."""
    path = Path(root) / LABELS_FILE
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return dict(zip((str(p) for p in z["paths"]), z["labels"], strict=True))


def generate(
    root: str | Path,
    layout: str,
    seed: int = 0,
    num_ids: int = 48,
    images_per_id: int = 10,
    num_cams: int | None = None,
    height: int = 128,
    width: int = 64,
    variant: str | None = None,
    overwrite: bool = False,
    occlusion: Occlusion | dict | None = None,
    labels: bool = False,
) -> Path:
    """Write a synthetic ``layout`` data set into the folder ``root`` and return it (``load`` reads it).

    ``root`` becomes the data set folder itself (``root/bounding_box_train``, ``root/query``, ... in
    the layout's real structure), so use one root per layout. ``num_ids`` identities for train and as
    many (disjoint) for test; ``images_per_id`` images each; ``num_cams`` defaults to the real data
    set's camera count. A finished data set (``root/.complete``, written last, same parameters) is
    left alone unless ``overwrite``; an unfinished or differently parameterised synthetic one is
    regenerated; a non-empty folder that is not synthetic (no README.txt) is never touched.
    ``dataset_seed(layout)`` is the seed the workflow and the trainer use. ``occlusion`` (an ``Occlusion``
    or a dict of its fields) sets the occluded variant's difficulty. ``labels``: also write each image's
    label map (``LABELS_FILE``; the images are the same).
    """
    params = generator_params(layout, seed, num_ids, images_per_id, num_cams, height, width, variant)
    occlusion = Occlusion.parse(occlusion)
    if occlusion.non_default():  # recorded only when set, so default data sets keep their marker
        params["occlusion"] = occlusion.non_default()
    if labels:
        params["labels"] = True
    out = Path(root)
    # Several trainers may start on a fresh root together: one generates, the others wait here and
    # then find it complete (`_prepare` looks again under the lock).
    with held(lock_path(out)):
        if not _prepare(out, params, overwrite):
            return out
        # README first: it marks the folder as ours, so an interrupted generation is regenerated
        # (not refused as a foreign data set); the marker last and atomically: only a finished
        # data set looks complete.
        (out / "README.txt").write_text(_readme(layout, params))
        rng = _rng(seed, 17, zlib.crc32(layout.encode()), zlib.crc32(params["variant"].encode()))
        _write_images(out, params, _plan(params, rng), occlusion, labels)
        atomic_write_text(out / COMPLETE_MARKER, json.dumps(params, sort_keys=True))
    return out


def lock_path(root: str | Path) -> Path:
    """The lock that serialises generators of one data set folder: beside it (the folder itself
    is emptied when regenerated)."""
    root = Path(root).resolve()
    return root.parent / f".{root.name}.lock"


# ------------------------------------------------------------------------------ published sizes
# The stand-ins of `generate_published`: each data set at its published per-split counts
# (`mhsa.data.check.PUBLISHED`), in its real folder under one root, so that the published-statistics check
# accepts it as the real data set. What PUBLISHED does not say, from the releases (docs/data.md):
# Market-1501's gallery holds 2,793 distractor images (pid 0) and bounding_box_test 3,819 junk files
# (pid -1); a Duke-style gallery's identities beyond the query's are gallery-only (distractor) ids.
PUBLISHED_FOLDERS = {
    "market1501": "Market-1501-v15.09.15", "dukemtmc": "DukeMTMC-reID", "cuhk03_detected": "cuhk03-np/detected",
    "cuhk03_labeled": "cuhk03-np/labeled", "occluded_duke": "Occluded_Duke", "p_dukemtmc": "P-DukeMTMC-reid",
    "partial_reid": "Partial-REID_Dataset", "partial_ilids": "Partial_iLIDS",
}
MARKET_DISTRACTORS, MARKET_JUNK = 2793, 3819
# The stand-ins' image size: Market-1501's boxes are all 128x64; the other releases' boxes vary in size
# (around the same 2:1 aspect), so they are drawn at Market's size too (docs/data.md, "Stand-ins at the
# published size").
PUBLISHED_SIZE = (128, 64)


def _spread(total: int, n: int, rng: np.random.Generator) -> list[int]:
    """`total` items over `n` owners as evenly as possible (which owners get one more: drawn)."""
    base, extra = divmod(total, n)
    more = set(rng.permutation(n)[:extra].tolist())
    return [base + (i in more) for i in range(n)]


def _cams_with_a_match(rng: np.random.Generator, n: int, num_cams: int) -> list[int]:
    """Cameras of an identity's `n` gallery images, at least two different ones when n >= 2, so that every
    query of the identity has a match under another camera."""
    cams = rng.integers(num_cams, size=n)
    if n >= 2 and len(set(cams.tolist())) < 2:
        cams[1] = (cams[0] + 1 + rng.integers(num_cams - 1)) % num_cams
    return [int(c) for c in cams]


def _published_market_style(layout: str, variant: str, rng: np.random.Generator) -> list[_Shot]:
    from .check import PUBLISHED

    pub = PUBLISHED[layout]
    num_cams = pub["cams"] or LAYOUTS[layout][1]
    ext = ".png" if layout.startswith("cuhk03") else ".jpg"
    occ = variant == "occluded"
    counter = iter(range(10**7))

    def name(pid: int, cam: int) -> str:
        n = next(counter)
        if layout == "market1501":
            tag = f"{pid:04d}" if pid >= 0 else "-1"
            return f"{tag}_c{cam + 1}s1_{n:06d}_00{ext}"
        if layout.startswith("cuhk03"):
            return f"{pid:04d}_c{cam + 1}_{n}{ext}"
        return f"{pid:04d}_c{cam + 1}_f{n:07d}{ext}"

    shots = []
    (n_train, train_imgs), (n_query, query_imgs), (n_gallery, gallery_imgs) = pub["train"], pub["query"], pub["gallery"]
    for i, count in enumerate(_spread(train_imgs, n_train, rng)):
        for cam in _id_cameras(rng, count, num_cams):
            shots.append(_Shot(f"bounding_box_train/{name(2 * i + 2, cam)}", TRAIN, i, cam,
                               occluded=occ and rng.random() < OCCLUDED_TRAIN_FRACTION))
    distractors = MARKET_DISTRACTORS if layout == "market1501" else 0
    gallery_ids = n_gallery - (1 if distractors else 0)  # Market: the distractors are one "identity", pid 0
    per_query = _spread(query_imgs, n_query, rng)
    per_gallery = _spread(gallery_imgs - distractors, gallery_ids, rng)
    for i in range(gallery_ids):  # the query ids first, then the gallery-only ones
        pid = 2 * i + 3
        gallery_cams = _cams_with_a_match(rng, per_gallery[i], num_cams)
        if i < n_query:
            # one query per camera where there are enough cameras (as in the releases)
            if per_query[i] <= num_cams:
                query_cams = rng.permutation(num_cams)[: per_query[i]]
            else:
                query_cams = rng.integers(num_cams, size=per_query[i])
            for cam in query_cams:
                shots.append(_Shot(f"query/{name(pid, int(cam))}", TEST, i, int(cam), occluded=occ,
                                   partial=variant == "partial"))
        for cam in gallery_cams:
            shots.append(_Shot(f"bounding_box_test/{name(pid, cam)}", TEST if i < n_query else DISTRACTOR, i, cam,
                               occluded=occ and rng.random() < OCCLUDED_GALLERY_FRACTION))
    for j in range(distractors):
        cam = int(rng.integers(num_cams))
        shots.append(_Shot(f"bounding_box_test/{name(0, cam)}", DISTRACTOR, 20_000 + j, cam))
    if layout == "market1501":
        for j in range(MARKET_JUNK):
            cam = int(rng.integers(num_cams))
            shots.append(_Shot(f"bounding_box_test/{name(-1, cam)}", DISTRACTOR, 30_000 + j, cam, partial=True))
    return shots


def _published_p_duke(variant: str, rng: np.random.Generator) -> list[_Shot]:
    from .check import PUBLISHED

    pub, num_cams = PUBLISHED["p_dukemtmc"], LAYOUTS["p_dukemtmc"][1]
    counter = iter(range(10**7))

    def name(split: str, kind: str, pid: int, cam: int) -> str:
        return f"{split}/{kind}/{pid:04d}/{pid:04d}_c{cam + 1}_f{next(counter):07d}.jpg"

    occ, whole = "occluded_body_images", "whole_body_images"
    shots = []
    (n_train, train_imgs), (n_test, query_imgs), (_, gallery_imgs) = pub["train"], pub["query"], pub["gallery"]
    for i, count in enumerate(_spread(train_imgs, n_train, rng)):
        for cam in _id_cameras(rng, count, num_cams):
            o = rng.random() < OCCLUDED_TRAIN_FRACTION
            shots.append(_Shot(name("train", occ if o else whole, 2 * i + 2, cam), TRAIN, i, cam,
                               occluded=o and variant == "occluded"))
    for i, (nq, ng) in enumerate(zip(_spread(query_imgs, n_test, rng), _spread(gallery_imgs, n_test, rng),
                                     strict=True)):
        pid = 2 * i + 3
        for cam in rng.integers(num_cams, size=nq):
            shots.append(_Shot(name("test", occ, pid, int(cam)), TEST, i, int(cam), occluded=variant == "occluded"))
        for cam in _cams_with_a_match(rng, ng, num_cams):
            shots.append(_Shot(name("test", whole, pid, cam), TEST, i, cam))
    return shots


def _published_plan(params: dict, rng: np.random.Generator) -> list[_Shot]:
    from .check import PUBLISHED

    layout, variant = params["layout"], params["variant"]
    if layout == "p_dukemtmc":
        return _published_p_duke(variant, rng)
    if layout.startswith("partial"):  # 60 ids x 5 partial + 5 whole shots; 119 ids x 1 + 1
        ids, images = PUBLISHED[layout]["query"]
        return _partial_plan(layout, variant, ids, 2 * images // ids, rng)
    return _published_market_style(layout, variant, rng)


def _write_blank(out: Path, params: dict, shots: list[_Shot]) -> None:
    """`pixels: blank`: one tiny image per camera, its bytes written under every name of that camera."""
    encoded, folders = {}, set()
    for shot in shots:
        path = out / shot.rel
        key = (shot.cam, path.suffix)
        if key not in encoded:
            img = render(_person(params["seed"], TEST, 0), _camera(params["seed"], shot.cam),
                         _rng(params["seed"], 23, shot.cam), params["height"], params["width"])
            buf = io.BytesIO()
            img.save(buf, format="PNG" if path.suffix == ".png" else "JPEG", quality=95)
            encoded[key] = buf.getvalue()
        if path.parent not in folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            folders.add(path.parent)
        path.write_bytes(encoded[key])


def generate_published(root: str | Path, layout: str, seed: int | None = None, height: int | None = None,
                       width: int | None = None, pixels: str = "drawn", overwrite: bool = False) -> Path:
    """A stand-in of data set `layout` at its published size, in its real layout, at `root` (the data set
    folder itself; `published_root(base, layout)` is its real folder under a common base).

    Identities, images and cameras per split are those of `mhsa.data.check.PUBLISHED` (exactly), with the
    junk and distractor files the real set has, drawn at `PUBLISHED_SIZE` unless `height`/`width` say
    otherwise. The published-statistics check accepts it as the real data set (`data_source: real`): its
    `.complete` marker says `published: true`, so it is checked against the published numbers, not against
    generator parameters. `pixels`: `drawn` (every image rendered, as `generate`) or `blank` (one image per
    camera copied under every name: the names, folders and counts only, for tests of parsers and checks).
    Same arguments, same bytes; a finished tree with the same parameters is left alone.
    """
    if layout not in PUBLISHED_FOLDERS:
        raise UnknownDatasetError(f"unknown data set {layout!r}; known: {', '.join(PUBLISHED_FOLDERS)}")
    if pixels not in ("drawn", "blank"):
        raise ConfigError(f"pixels must be drawn or blank, got {pixels!r}")
    height, width = height or PUBLISHED_SIZE[0], width or PUBLISHED_SIZE[1]
    seed = dataset_seed(layout) if seed is None else seed
    params = generator_params(layout, seed, 1, 3, None, height, width, None)
    params = {k: params[k] for k in ("layout", "seed", "num_cams", "height", "width", "variant")}
    params.update(published=True, pixels=pixels)
    out = Path(root)
    with held(lock_path(out)):
        if not _prepare(out, params, overwrite):
            return out
        (out / "README.txt").write_text(_readme(layout, params))
        rng = _rng(seed, 29, zlib.crc32(layout.encode()))
        shots = _published_plan(params, rng)
        if pixels == "blank":
            _write_blank(out, params, shots)
        else:
            _write_images(out, params, shots)
        atomic_write_text(out / COMPLETE_MARKER, json.dumps(params, sort_keys=True))
    return out


def published_root(base: str | Path, layout: str) -> Path:
    """Where `layout`'s stand-in goes under `base`: the real release's folder name (docs/data.md)."""
    return Path(base) / PUBLISHED_FOLDERS[layout]


def _published_one(args: tuple) -> tuple[str, float]:
    import time

    base, layout, seed, height, width, pixels = args
    t0 = time.perf_counter()
    generate_published(published_root(base, layout), layout, seed, height, width, pixels)
    return layout, time.perf_counter() - t0


def generate_all_published(base: str | Path, layouts: list[str] | None = None, jobs: int = 1,
                           seed: int | None = None, height: int | None = None, width: int | None = None,
                           pixels: str = "drawn") -> dict[str, float]:
    """Every data set's published-size stand-in under `base`, `jobs` at a time (largest first); returns the
    seconds each took."""
    from concurrent.futures import ProcessPoolExecutor

    from .check import PUBLISHED

    layouts = list(layouts or PUBLISHED_FOLDERS)
    layouts.sort(key=lambda n: -sum(PUBLISHED[n][s][1] for s in ("train", "query", "gallery")))
    work = [(str(base), n, seed, height, width, pixels) for n in layouts]
    if jobs <= 1:
        return dict(map(_published_one, work))
    with ProcessPoolExecutor(jobs) as pool:
        return dict(pool.map(_published_one, work))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mhsa.data.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="data set folder to write (with several layouts: the "
                    "folder holding one sub-folder per layout)")
    ap.add_argument("--layout", nargs="+", required=True, help=f"any of {', '.join(names())}, or 'all'")
    ap.add_argument("--seed", type=int, default=None, help="default: dataset_seed(layout), as the workflow")
    ap.add_argument("--num-ids", type=int, default=48)
    ap.add_argument("--images-per-id", type=int, default=10)
    ap.add_argument("--num-cams", type=int, default=None)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--variant", choices=VARIANTS, default=None)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--published", action="store_true",
                    help="each data set at its published size in its real folder under --root "
                         "(generate_published; --num-ids/--images-per-id/--variant do not apply)")
    ap.add_argument("--pixels", choices=("drawn", "blank"), default="drawn", help="with --published")
    ap.add_argument("--jobs", type=int, default=1, help="with --published: data sets generated at once")
    args = ap.parse_args(argv)
    layouts = names() if args.layout == ["all"] else args.layout
    if args.published:
        times = generate_all_published(args.root, layouts, args.jobs, args.seed,
                                       args.height if args.height != 128 else None,
                                       args.width if args.width != 64 else None, args.pixels)
        for layout in layouts:
            print(load(layout, published_root(args.root, layout)).summary(), f"\n  generated in {times[layout]:.1f} s")
        return
    for layout in layouts:
        out = generate(
            args.root if len(layouts) == 1 else Path(args.root) / layout, layout,
            seed=dataset_seed(layout) if args.seed is None else args.seed, num_ids=args.num_ids,
            images_per_id=args.images_per_id,
            num_cams=args.num_cams, height=args.height, width=args.width, variant=args.variant,
            overwrite=args.overwrite,
        )
        print(load(layout, out).summary())


if __name__ == "__main__":
    main()
