"""Deterministic synthetic data: fictional metal bands, their drawn logos and album covers, and phone photos.

Everything here is procedural (numpy + OpenCV drawing, Hershey fonts) and driven by an explicit
``np.random.Generator``, so the same seed always gives the same bytes. It serves three purposes:

* ``kyb demo``: a newcomer with no data gets a sample catalog, reference images and query photos
  (:func:`write_demo_set`).
* Tests of the identification engine: photos with perspective, rotation, scale, blur, glare, occlusion,
  several objects per photo and photos without any reference (:func:`compose_scene`).
* Training data for an object detector: :class:`Placement` gives the exact outline of every object.

The engine matches RootSIFT local features with a RANSAC homography, so every drawing is built to be rich
in distinctive, non-repetitive corners and blobs: random polygons, strokes, noise blotches, gradients and
warped text, never big flat areas or periodic patterns.

Conventions used throughout:

* Images are BGR ``uint8`` arrays of shape ``(H, W, 3)``; sizes are given as ``(width, height)``.
* Points are ``(x, y)`` pixels with OpenCV's convention: pixel ``(i, j)`` has its centre at ``x=i, y=j``.
  The corners of a ``w x h`` reference are the centres of its corner pixels, ``(0, 0), (w-1, 0),
  (w-1, h-1), (0, h-1)`` (TL, TR, BR, BL; see :func:`reference_corners`).
* Boxes are ``(x1, y1, x2, y2)`` ints with ``x2``/``y2`` exclusive: ``photo[y1:y2, x1:x2]`` holds the object.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = [
    "MERCH_MEDIA",
    "MerchStyle",
    "Placement",
    "RenderedScene",
    "SampleAlbum",
    "SampleBand",
    "SceneStyle",
    "compose_scene",
    "degrade_image",
    "degrade_scene",
    "draw_album_cover",
    "draw_background",
    "draw_logo",
    "draw_merch",
    "draw_merch_photo",
    "make_bands",
    "place_references",
    "project_points",
    "quad_box",
    "random_homography",
    "reference_corners",
    "slugify",
    "warp_reference",
    "write_demo_set",
]

Color = tuple[int, int, int]

# --------------------------------------------------------------------------------------------------------
# Word tables for fictional bands. Combined at random they give thousands of distinct, plausible names.
# --------------------------------------------------------------------------------------------------------

_ADJECTIVES = (
    "Grave", "Black", "Crimson", "Hollow", "Frozen", "Ashen", "Rotting", "Infernal", "Silent", "Burning",
    "Iron", "Pale", "Withered", "Obsidian", "Cursed", "Forsaken", "Sunken", "Shattered", "Nocturnal",
    "Bleeding", "Eternal", "Venomous", "Ancient", "Desolate", "Feral", "Funeral", "Sullen", "Morbid",
    "Vile", "Spectral", "Wretched", "Carrion", "Thorned", "Ruined", "Savage", "Bitter", "Grim", "Blighted",
    "Moonless", "Starving", "Rusted", "Drowned", "Charred", "Seething", "Leaden", "Shrouded",
)  # fmt: skip
_NOUNS = (
    "Vortex", "Throne", "Monolith", "Sepulchre", "Altar", "Crypt", "Tomb", "Winter", "Abyss", "Serpent",
    "Raven", "Wolf", "Shroud", "Chalice", "Pyre", "Gallows", "Cathedral", "Requiem", "Oracle", "Veil",
    "Harvest", "Storm", "Dominion", "Plague", "Coven", "Spire", "Ember", "Horizon", "Mire", "Marrow",
    "Covenant", "Dirge", "Remnant", "Legion", "Catacomb", "Eclipse", "Wraith", "Hymn", "Bastion", "Maw",
    "Ossuary", "Reliquary", "Furnace", "Labyrinth", "Tide", "Citadel", "Hunger", "Lantern",
)  # fmt: skip
_OF_NOUNS = (
    "Ash", "Bone", "Rust", "Frost", "Sorrow", "Flesh", "Dust", "Embers", "Thorns", "Ruin", "Silence",
    "Blood", "Shadows", "Stone", "Night", "Decay", "Salt", "Smoke", "Wolves", "Cinders", "Ravens",
    "Grief", "Iron", "Lament", "Famine", "Winter", "the Void", "the Deep", "the Fallen", "Black Suns",
)  # fmt: skip
_SYL_START = (
    "Nec", "Mor", "Vor", "Kra", "Zar", "Thul", "Gor", "Skol", "Ul", "Dra", "Xar", "Bel", "Azh", "Kul",
    "Vel", "Grim", "Ith", "Nox", "Sar", "Mal", "Hex", "Vorn", "Tor", "Sath",
)  # fmt: skip
_SYL_MID = ("o", "a", "u", "e", "i", "y", "ae", "ro", "ka", "ze", "")
_SYL_END = (
    "goth", "vore", "thrax", "nak", "dur", "mor", "lith", "zul", "gash", "rath", "nox", "kur", "thul",
    "veth", "grim", "dras", "mael", "zith", "ghul", "rok",
)  # fmt: skip
_VERBS_ING = (
    "Summoning", "Devouring", "Awakening", "Crowning", "Burning", "Flaying", "Unearthing", "Embracing",
    "Exhuming", "Invoking", "Drowning", "Severing", "Consuming", "Worshipping",
)  # fmt: skip
_ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII", "IX", "XIII")
_COUNTRIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Norway", ("Bergen", "Oslo", "Trondheim", "Tromsø")),
    ("Sweden", ("Gothenburg", "Stockholm", "Umeå", "Linköping")),
    ("Finland", ("Helsinki", "Tampere", "Oulu", "Turku")),
    ("Poland", ("Kraków", "Gdańsk", "Wrocław", "Lublin")),
    ("Germany", ("Essen", "Leipzig", "Hamburg", "Bochum")),
    ("United States", ("Tampa, Florida", "Portland, Oregon", "Oakland, California", "Chicago, Illinois")),
    ("Brazil", ("Belo Horizonte", "São Paulo", "Curitiba")),
    ("United Kingdom", ("Birmingham, England", "Glasgow, Scotland", "Leeds, England")),
    ("Greece", ("Athens", "Thessaloniki", "Patras")),
    ("Chile", ("Santiago", "Valparaíso")),
    ("Japan", ("Osaka", "Tokyo", "Sapporo")),
    ("Canada", ("Quebec City, Quebec", "Vancouver, British Columbia", "Winnipeg, Manitoba")),
    ("Netherlands", ("Tilburg", "Utrecht", "Groningen")),
    ("Italy", ("Turin", "Bologna", "Naples")),
    ("France", ("Lyon", "Lille", "Bordeaux")),
    ("Australia", ("Melbourne, Victoria", "Hobart, Tasmania", "Perth, Western Australia")),
)
_GENRES = (
    "Black Metal", "Death Metal", "Doom Metal", "Thrash Metal", "Melodic Death Metal", "Sludge/Doom Metal",
    "Progressive Metal", "Power Metal", "Grindcore", "Atmospheric Black Metal", "Funeral Doom Metal",
    "Blackened Death Metal", "Heavy Metal", "Technical Death Metal", "Stoner/Doom Metal", "Speed Metal",
)  # fmt: skip
_THEMES = (
    "Death", "Occultism", "Nature", "War", "Mythology", "Cosmic horror", "Misanthropy", "Decay", "Winter",
    "Darkness", "Folklore", "Despair", "Apocalypse", "Anti-religion", "Madness", "History", "Loss", "Space",
)  # fmt: skip
_FIRST_NAMES = (
    "Erik", "Jonas", "Mikael", "Tomasz", "Ville", "Lars", "Anders", "Piotr", "Marco", "Kenji", "Rafael",
    "Dimitris", "Sven", "Aino", "Ingrid", "Oskar", "Lukas", "Mateus", "Hanna", "Jarno", "Tiago", "Ada",
    "Bram", "Niko", "Elias", "Greta", "Ruben", "Sakari", "Dario", "Maren",
)  # fmt: skip
_LAST_NAMES = (
    "Halvorsen", "Lindqvist", "Kowalczyk", "Virtanen", "Brandt", "Moretti", "Tanaka", "Oliveira",
    "Papadakis", "Strand", "Nieminen", "Krause", "Vermeer", "Dubois", "Castillo", "Holm", "Novak",
    "Eriksen", "Salo", "Wagner", "Costa", "Marsh", "Falk", "Rautio", "Bergström", "Kade",
)  # fmt: skip
_LINEUPS = (
    ("guitars, vocals", "bass", "drums"),
    ("bass, vocals", "guitars", "drums"),
    ("vocals", "guitars", "bass", "drums"),
    ("guitars, vocals", "guitars", "bass", "drums"),
    ("vocals", "guitars", "guitars", "bass", "drums"),
    ("vocals", "guitars", "bass", "drums", "keyboards"),
)
_LABEL_KINDS = ("Records", "Productions", "Tapes", "Music", "Recordings")
_STATUSES = (("Active", 0.62), ("Split-up", 0.2), ("On hold", 0.1), ("Unknown", 0.08))
_TAGLINES = (
    "DEATH METAL", "BLACK METAL", "DOOM", "EST. MCMXCVII", "EST. MMIX", "HAIL THE VOID", "OFFICIAL",
    "WORLD TOUR", "LIVE RITUAL", "UNDERGROUND", "FROM THE NORTH", "NO MERCY", "MMXXIII", "CULT",
)  # fmt: skip
_COVER_SMALL = (
    "LIMITED EDITION", "SIDE A", "SIDE B", "REMASTERED", "DELUXE", "LIVE", "DEMO", "EP", "LP", "VOL. II",
    "2 X VINYL", "BONUS TRACKS", "EXPLICIT", "ORIGINAL MOTION", "STEREO", "33 RPM", "CASSETTE",
)  # fmt: skip

_LAST_YEAR = 2024

# Hershey fonts; PLAIN and COMPLEX_SMALL are thin, so they are kept for small print only.
_FONTS_BOLD = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
    cv2.FONT_HERSHEY_SCRIPT_COMPLEX,
)
_FONTS_ALL = (*_FONTS_BOLD, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_COMPLEX_SMALL)


# --------------------------------------------------------------------------------------------------------
# Fictional bands
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleAlbum:
    """One album of a fictional band; ``album_id`` is unique across a :func:`make_bands` call."""

    album_id: str
    title: str
    year: int


@dataclass(frozen=True)
class SampleBand:
    """A fictional metal band with the catalog's band fields plus its albums."""

    band_id: str
    name: str
    country: str
    location: str
    status: str
    formed_in: int
    genre: str
    themes: tuple[str, ...]
    label: str
    years_active: str
    members: tuple[str, ...]
    similar_artists: tuple[str, ...]
    links: tuple[str, ...]
    logo_url: str
    albums: tuple[SampleAlbum, ...]

    def to_band_dict(self) -> dict[str, object]:
        """The band fields (everything but ``albums``) as a JSON-ready dict, tuples turned into lists."""
        return {
            "band_id": self.band_id,
            "name": self.name,
            "country": self.country,
            "location": self.location,
            "status": self.status,
            "formed_in": self.formed_in,
            "genre": self.genre,
            "themes": list(self.themes),
            "label": self.label,
            "years_active": self.years_active,
            "members": list(self.members),
            "similar_artists": list(self.similar_artists),
            "links": list(self.links),
            "logo_url": self.logo_url,
        }


def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def _coined_word(rng: np.random.Generator) -> str:
    """An invented word such as ``Necrovore`` from syllable tables."""
    return _pick(rng, _SYL_START) + _pick(rng, _SYL_MID) + _pick(rng, _SYL_END)


def _band_name(rng: np.random.Generator) -> str:
    pattern = int(rng.integers(6))
    if pattern == 0:
        return f"{_pick(rng, _ADJECTIVES)} {_pick(rng, _NOUNS)}"
    if pattern == 1:
        return f"{_pick(rng, _NOUNS)} of {_pick(rng, _OF_NOUNS)}"
    if pattern == 2:
        return _coined_word(rng)
    if pattern == 3:
        return f"The {_pick(rng, _ADJECTIVES)} {_pick(rng, _NOUNS)}"
    if pattern == 4:
        return f"{_pick(rng, _ADJECTIVES)}{_pick(rng, _NOUNS).lower()}"
    return f"{_coined_word(rng)} {_pick(rng, _NOUNS)}"


def _album_title(rng: np.random.Generator) -> str:
    pattern = int(rng.integers(8))
    adj, noun, of = _pick(rng, _ADJECTIVES), _pick(rng, _NOUNS), _pick(rng, _OF_NOUNS)
    if pattern == 0:
        return f"{adj} {noun}"
    if pattern == 1:
        return f"{noun}s of {of}"
    if pattern == 2:
        return f"Beneath the {adj} {noun}"
    if pattern == 3:
        return f"{_pick(rng, _VERBS_ING)} the {noun}"
    if pattern == 4:
        return f"Rites of the {adj} {noun}"
    if pattern == 5:
        return f"{_pick(rng, _ROMAN)}: {adj} {noun}"
    if pattern == 6:
        return f"Hymns to {of}"
    return f"Descent into {of}"


def slugify(name: str) -> str:
    """Lower-case ASCII slug of a name for URLs: ``"Ossuary of Ash"`` -> ``"ossuary-of-ash"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def make_bands(n: int, *, seed: int = 0, albums_per_band: tuple[int, int] = (1, 3)) -> list[SampleBand]:
    """Return ``n`` fictional bands with unique names (case-insensitive) and unique slugs.

    ``albums_per_band`` is an inclusive ``(min, max)`` range. Band ids are ``band_0000``...; album ids are
    ``album_0000_1``... (band index, album number). Deterministic for a given ``seed``; links use the
    reserved ``example.org`` domain so nothing points at a real site.
    """
    lo, hi = albums_per_band
    if n < 0 or lo < 0 or hi < lo:
        raise ValueError(f"bad arguments: n={n}, albums_per_band={albums_per_band}")
    rng = np.random.default_rng(seed)
    names: list[str] = []
    seen: set[str] = set()
    for _ in range(n):
        for attempt in range(10_000):
            name = _band_name(rng)
            if attempt >= 40:  # the tables are nearly exhausted: lengthen the name instead of looping forever
                name = f"{name} {_coined_word(rng)}"
            if name.lower() not in seen and slugify(name) not in seen:
                break
        else:  # pragma: no cover - needs hundreds of thousands of bands
            raise RuntimeError("could not find a unique band name")
        seen.update((name.lower(), slugify(name)))
        names.append(name)

    used_titles: set[str] = set()
    bands: list[SampleBand] = []
    for i, name in enumerate(names):
        slug = slugify(name)
        country, cities = _COUNTRIES[int(rng.integers(len(_COUNTRIES)))]
        location = _pick(rng, cities)
        status = str(rng.choice([s for s, _ in _STATUSES], p=[p for _, p in _STATUSES]))
        formed = int(rng.integers(1982, 2019))
        end = int(rng.integers(formed + 3, _LAST_YEAR + 1)) if status in ("Split-up", "On hold") else None
        years_active = f"{formed}-present" if end is None else f"{formed}-{end}"
        n_albums = int(rng.integers(lo, hi + 1))
        last = end if end is not None else _LAST_YEAR
        albums: list[SampleAlbum] = []
        year = formed
        for j in range(n_albums):
            year = min(last, year + int(rng.integers(1, 5)))
            for _ in range(1000):
                title = _album_title(rng)
                if title.lower() not in used_titles:
                    break
            used_titles.add(title.lower())
            albums.append(SampleAlbum(album_id=f"album_{i:04d}_{j + 1}", title=title, year=year))
        roles = _LINEUPS[int(rng.integers(len(_LINEUPS)))]
        members = tuple(f"{_pick(rng, _FIRST_NAMES)} {_pick(rng, _LAST_NAMES)} ({role})" for role in roles)
        themes = tuple(str(t) for t in rng.choice(_THEMES, size=int(rng.integers(1, 4)), replace=False))
        label = (
            "Unsigned/independent"
            if rng.random() < 0.15
            else f"{_pick(rng, _ADJECTIVES)} {_pick(rng, _NOUNS)} {_pick(rng, _LABEL_KINDS)}"
        )
        others = [k for k in range(len(names)) if k != i]
        n_similar = min(len(others), int(rng.integers(1, 4)))
        similar = tuple(names[int(k)] for k in rng.choice(others, size=n_similar, replace=False)) if others else ()
        bands.append(
            SampleBand(
                band_id=f"band_{i:04d}",
                name=name,
                country=country,
                location=location,
                status=status,
                formed_in=formed,
                genre=_pick(rng, _GENRES),
                themes=themes,
                label=label,
                years_active=years_active,
                members=members,
                similar_artists=similar,
                links=(f"https://example.org/bands/{slug}", f"https://example.org/bands/{slug}/discography"),
                logo_url=f"https://example.org/images/logos/{slug}.jpg",
                albums=tuple(albums),
            )
        )
    return bands


# --------------------------------------------------------------------------------------------------------
# Drawing primitives
# --------------------------------------------------------------------------------------------------------


def _noise(rng: np.random.Generator, h: int, w: int, *, cells: float = 4.0, octaves: int = 4) -> np.ndarray:
    """Smooth, non-periodic noise in [0, 1], float32 ``(h, w)``: a sum of bicubic-upsampled random grids.

    ``cells`` is the number of random values along the longer side at the coarsest octave; every octave
    doubles it and halves the amplitude (fractal "clouds").
    """
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for k in range(octaves):
        c = cells * 2**k
        gh = max(2, round(c * h / max(h, w)) + 1)
        gw = max(2, round(c * w / max(h, w)) + 1)
        grid = rng.random((gh, gw), dtype=np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def _hsv(h: float, s: float, v: float) -> Color:
    """BGR colour from hue in degrees and saturation/value in [0, 1]."""
    px = np.array([[[int(h % 360) // 2, int(np.clip(s, 0, 1) * 255), int(np.clip(v, 0, 1) * 255)]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _palette(rng: np.random.Generator, n: int) -> list[Color]:
    """``n`` colours sorted from dark to bright, with a random harmony (mono, complementary or wild)."""
    base = rng.uniform(0, 360)
    scheme = int(rng.integers(3))
    values = np.sort(rng.uniform(0.1, 1.0, n))
    values[0] = rng.uniform(0.03, 0.22)
    values[-1] = max(values[-1], rng.uniform(0.75, 1.0))
    out: list[Color] = []
    for v in values:
        if scheme == 0:
            hue = base + rng.normal(0, 12)
        elif scheme == 1:
            hue = base + 180 * int(rng.integers(2)) + rng.normal(0, 10)
        else:
            hue = rng.uniform(0, 360)
        out.append(_hsv(hue, rng.uniform(0.15, 1.0), float(v)))
    return out


def _random_color(rng: np.random.Generator, *, vmin: float = 0.0, vmax: float = 1.0) -> Color:
    return _hsv(rng.uniform(0, 360), rng.uniform(0, 1), rng.uniform(vmin, vmax))


def _ramp(t: np.ndarray, colors: Sequence[Color]) -> np.ndarray:
    """Map ``t`` (float in [0, 1], ``(h, w)``) through a piecewise-linear colour ramp -> BGR uint8 image."""
    stops = np.linspace(0.0, 1.0, len(colors))
    xs = np.linspace(0.0, 1.0, 256)
    lut = np.stack([np.interp(xs, stops, [c[ch] for c in colors]) for ch in range(3)], axis=1)
    idx = np.clip(t * 255.0, 0, 255).astype(np.uint8)
    return cv2.LUT(cv2.merge([idx, idx, idx]), lut.astype(np.uint8).reshape(256, 1, 3))


def _linear_gradient(h: int, w: int, angle: float) -> np.ndarray:
    """Float32 ``(h, w)`` ramp from 0 to 1 along direction ``angle`` (radians)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xs * math.cos(angle) + ys * math.sin(angle)
    return (t - t.min()) / max(float(t.max() - t.min()), 1e-6)


def _paint(img: np.ndarray, mask: np.ndarray, fill: Color | np.ndarray, alpha: float = 1.0) -> None:
    """Alpha-composite ``fill`` into ``img`` (uint8 BGR, in place) with coverage ``mask`` (uint8 0..255).

    ``fill`` is a colour or an image of the same size as ``img``. Only the mask's bounding box is touched,
    which keeps many small layers cheap.
    """
    x, y, bw, bh = cv2.boundingRect(mask)
    if bw == 0 or bh == 0:
        return
    roi = img[y : y + bh, x : x + bw]
    a = mask[y : y + bh, x : x + bw].astype(np.float32) * (alpha / 255.0)
    if isinstance(fill, np.ndarray):
        src = fill[y : y + bh, x : x + bw].astype(np.float32)
    else:
        src = np.array(fill, np.float32).reshape(1, 1, 3)
    base = roi.astype(np.float32)
    roi[...] = np.clip(base + (src - base) * a[..., None], 0, 255).astype(np.uint8)


def _paint_at(img: np.ndarray, mask: np.ndarray, x: int, y: int, fill: Color) -> None:
    """Like :func:`_paint` for a small ``mask`` with its top-left corner at ``(x, y)``, clipped to ``img``."""
    h, w = img.shape[:2]
    x1, y1 = max(0, x), max(0, y)
    x2, y2 = min(w, x + mask.shape[1]), min(h, y + mask.shape[0])
    if x2 <= x1 or y2 <= y1:
        return
    _paint(img[y1:y2, x1:x2], mask[y1 - y : y2 - y, x1 - x : x2 - x], fill)


def _translucent(img: np.ndarray, alpha: float, draw: Callable[[np.ndarray], None]) -> None:
    """Run ``draw`` on a copy of ``img`` and blend it back with opacity ``alpha`` (in place)."""
    layer = img.copy()
    draw(layer)
    cv2.addWeighted(layer, alpha, img, 1.0 - alpha, 0.0, dst=img)


def _grain(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Add Gaussian grain of ``sigma`` grey levels (film grain / print texture)."""
    noise = rng.normal(0.0, sigma, img.shape[:2]).astype(np.float32)
    return np.clip(img.astype(np.float32) + noise[..., None], 0, 255).astype(np.uint8)


def _random_polygon(rng: np.random.Generator, center: tuple[float, float], radius: float) -> np.ndarray:
    """An irregular (possibly star-shaped) simple polygon around ``center`` as int32 ``(n, 1, 2)``."""
    n = int(rng.integers(3, 10))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.35, 1.0, n)
    pts = np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], axis=1)
    return pts.round().astype(np.int32).reshape(-1, 1, 2)


def _random_walk(rng: np.random.Generator, start: tuple[float, float], steps: int, step: float) -> np.ndarray:
    """A wandering polyline (cracks, lightning, roots) as int32 ``(steps + 1, 1, 2)``."""
    heading = rng.uniform(0, 2 * np.pi)
    pts = [start]
    x, y = start
    for _ in range(steps):
        heading += rng.normal(0, 0.6)
        d = step * rng.uniform(0.4, 1.3)
        x, y = x + d * math.cos(heading), y + d * math.sin(heading)
        pts.append((x, y))
    return np.array(pts).round().astype(np.int32).reshape(-1, 1, 2)


# --------------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------------


def _text_mask(text: str, font: int, height: int, thickness: int, pad: int = 0) -> np.ndarray:
    """White-on-black uint8 mask of one line of ``text`` with capital height ~``height`` px.

    The mask is cropped to the ink plus ``pad`` pixels on every side (room for outlines and spikes).
    """
    scale = cv2.getFontScaleFromHeight(font, max(4, height), thickness)
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    margin = thickness + th // 2 + 4  # italics and script fonts lean out of the nominal box
    canvas = np.zeros((th + base + 2 * margin, tw + 2 * margin), np.uint8)
    cv2.putText(canvas, text, (margin, margin + th), font, scale, 255, thickness, cv2.LINE_AA)
    x, y, bw, bh = cv2.boundingRect(canvas)
    if bw == 0:
        return np.zeros((2 * pad + 1, 2 * pad + 1), np.uint8)
    return cv2.copyMakeBorder(canvas[y : y + bh, x : x + bw], pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)


def _jittered_text_mask(
    text: str, font: int, height: int, thickness: int, rng: np.random.Generator, amount: float, pad: int = 0
) -> np.ndarray:
    """Like :func:`_text_mask`, but every character gets its own small rotation, baseline shift, size and
    spacing change (``amount`` in [0, 1] scales them), like hand-lettering.

    Two renderings of the same letters never share their layout, so a word that appears on several
    references (same font, same letters) cannot produce geometrically consistent false matches.
    """
    scale = cv2.getFontScaleFromHeight(font, max(4, height), thickness)
    (_, th), base = cv2.getTextSize("Hg", font, scale, thickness)
    margin = thickness + th // 2 + 4
    gh = th + base + 2 * margin
    pieces: list[tuple[np.ndarray, int]] = []
    x = margin
    for ch in text:
        if ch == " ":
            x += cv2.getTextSize(" ", font, scale, thickness)[0][0]
            continue
        s = scale * (1.0 + amount * rng.uniform(-0.12, 0.12))
        (cw, _), _ = cv2.getTextSize(ch, font, s, thickness)
        glyph = np.zeros((gh, cw + 2 * margin), np.uint8)
        dy = round(amount * rng.uniform(-0.1, 0.1) * height)
        cv2.putText(glyph, ch, (margin, margin + th + dy), font, s, 255, thickness, cv2.LINE_AA)
        rot = cv2.getRotationMatrix2D((glyph.shape[1] / 2, gh / 2), amount * rng.uniform(-10, 10), 1.0)
        pieces.append((cv2.warpAffine(glyph, rot, (glyph.shape[1], gh), flags=cv2.INTER_LINEAR), x - margin))
        x += cw + round(amount * rng.uniform(-0.05, 0.12) * height)
    canvas = np.zeros((gh, x + 2 * margin), np.uint8)
    for glyph, gx in pieces:
        roi = canvas[:, gx : gx + glyph.shape[1]]
        np.maximum(roi, glyph[:, : roi.shape[1]], out=roi)
    bx, by, bw, bh = cv2.boundingRect(canvas)
    if bw == 0:
        return np.zeros((2 * pad + 1, 2 * pad + 1), np.uint8)
    return cv2.copyMakeBorder(canvas[by : by + bh, bx : bx + bw], pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)


def _wobble(mask: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Displace ``mask`` by a smooth random field of up to ``amplitude`` px ("hand-inked" unevenness).

    Makes every rendering of the same word different, so identical words on two references do not
    produce matching keypoints.
    """
    h, w = mask.shape
    cells = max(3.0, max(h, w) / 40.0)
    dx = (_noise(rng, h, w, cells=cells, octaves=2) - 0.5) * 2 * amplitude
    dy = (_noise(rng, h, w, cells=cells, octaves=2) - 0.5) * 2 * amplitude
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(mask, xs + dx, ys + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _shear(mask: np.ndarray, k: float) -> np.ndarray:
    """Shear horizontally by ``k`` (x += k * (y - h/2)), widening the canvas so nothing is cut."""
    h, w = mask.shape
    extra = int(abs(k) * h) + 2
    m = np.array([[1, k, extra / 2 - k * h / 2], [0, 1, 0]], dtype=np.float32)
    return cv2.warpAffine(mask, m, (w + extra, h), flags=cv2.INTER_LINEAR)


def _arch(mask: np.ndarray, amount: float) -> np.ndarray:
    """Bend the text along a parabola: positive ``amount`` raises the middle by ``amount`` px relative to the
    ends, negative lowers it. The canvas grows so nothing is cut."""
    h, w = mask.shape
    extra = math.ceil(abs(amount)) + 2
    ys, xs = np.mgrid[0 : h + extra, 0:w].astype(np.float32)
    u = (xs - w / 2) / (w / 2)
    shift = amount * u * u if amount > 0 else -amount * (1 - u * u)  # in [0, |amount|] either way
    return cv2.remap(mask, xs, ys - shift, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _outline_points(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outer contour points ``(n, 2)`` float and their outward unit normals ``(n, 2)``."""
    binary = (mask > 127).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts_list, normals_list = [], []
    for c in contours:
        if len(c) < 12:
            continue
        p = c.reshape(-1, 2).astype(np.float32)
        tangent = np.roll(p, -3, axis=0) - np.roll(p, 3, axis=0)
        normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-6)
        # Orient outward: step along the normal; if that lands inside the ink, flip it.
        probe = np.round(p + 3 * normal).astype(int)
        probe[:, 0] = probe[:, 0].clip(0, mask.shape[1] - 1)
        probe[:, 1] = probe[:, 1].clip(0, mask.shape[0] - 1)
        inside = binary[probe[:, 1], probe[:, 0]] > 0
        normal[inside] *= -1
        pts_list.append(p)
        normals_list.append(normal)
    if not pts_list:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    return np.concatenate(pts_list), np.concatenate(normals_list)


def _spikes(mask: np.ndarray, rng: np.random.Generator, count: int, length: float, vertical: float) -> None:
    """Grow ``count`` thorn-like triangles out of the letters' outline (in place), metal-logo style.

    ``vertical`` in [0, 1] bends the thorns towards straight up/down, as in many black-metal logos.
    """
    pts, normals = _outline_points(mask)
    if len(pts) == 0:
        return
    for idx in rng.choice(len(pts), size=min(count, len(pts)), replace=False):
        p, nrm = pts[idx], normals[idx].copy()
        if vertical > 0:
            nrm = (1 - vertical) * nrm + vertical * np.array([0.0, 1.0 if nrm[1] >= 0 else -1.0])
            nrm /= max(float(np.linalg.norm(nrm)), 1e-6)
        tang = np.array([-nrm[1], nrm[0]])
        ln = length * rng.uniform(0.3, 1.0)
        half = max(1.5, ln * rng.uniform(0.08, 0.22))
        tip = p + nrm * ln + tang * rng.normal(0, ln * 0.15)
        tri = np.array([p - tang * half - nrm * 2, p + tang * half - nrm * 2, tip])
        cv2.fillConvexPoly(mask, tri.round().astype(np.int32), 255, cv2.LINE_AA)


def _drips(mask: np.ndarray, rng: np.random.Generator, count: int, length: float) -> None:
    """Let ``count`` drops run down from the bottom edges of the letters (in place)."""
    pts, normals = _outline_points(mask)
    bottom = pts[normals[:, 1] > 0.8]
    if len(bottom) == 0:
        return
    for idx in rng.choice(len(bottom), size=min(count, len(bottom)), replace=False):
        x, y = bottom[idx]
        ln = length * rng.uniform(0.2, 1.0)
        w = max(1, int(rng.uniform(0.5, 1.5) * length / 12))
        end = (round(x), round(min(mask.shape[0] - w - 1, y + ln)))
        cv2.line(mask, (round(x), round(y) - 1), end, 255, w, cv2.LINE_AA)
        cv2.circle(mask, end, w + 1, 255, -1, cv2.LINE_AA)


def _stylised_text(text: str, rng: np.random.Generator, height: int, *, wild: float = 1.0) -> np.ndarray:
    """Mask of ``text`` drawn like a band logo: random font and weight, shear, arch, thorns, drips.

    ``wild`` in [0, 1] scales how much decoration is applied (1 for logos, less for cover lettering).
    Returns a tightly cropped uint8 mask.
    """
    font = int(rng.choice(_FONTS_BOLD))
    if rng.random() < 0.25:
        font |= cv2.FONT_ITALIC
    thickness = max(2, round(height * rng.uniform(0.07, 0.2)))
    pad = round(height * 0.5 * wild) + 4
    if rng.random() < 0.7:
        mask = _jittered_text_mask(text, font, height, thickness, rng, rng.uniform(0.3, 0.8), pad)
    else:
        mask = _text_mask(text, font, height, thickness, pad)
    if rng.random() < 0.5:
        mask = cv2.dilate(
            mask,
            cv2.getStructuringElement(int(rng.choice([cv2.MORPH_RECT, cv2.MORPH_CROSS, cv2.MORPH_ELLIPSE])),
                                      (int(rng.integers(2, 6)), int(rng.integers(2, 6)))),
        )  # fmt: skip
    if rng.random() < 0.5:
        mask = _shear(mask, rng.uniform(-0.35, 0.35))
    if rng.random() < 0.45 * wild:
        mask = _arch(mask, rng.uniform(-0.35, 0.35) * height)
    mask = _wobble(mask, rng, rng.uniform(0.6, 1.6) + height / 60.0)
    if rng.random() < 0.8 * wild:
        _spikes(mask, rng, int(len(text) * rng.uniform(0.8, 2.8)), height * rng.uniform(0.3, 0.7) * wild,
                rng.uniform(0, 1))  # fmt: skip
    if rng.random() < 0.3 * wild:
        _drips(mask, rng, int(len(text) * rng.uniform(0.3, 1.0)) + 1, height * 0.5)
    x, y, bw, bh = cv2.boundingRect(mask)
    if bw == 0:
        return mask
    return cv2.copyMakeBorder(mask[y : y + bh, x : x + bw], 3, 3, 3, 3, cv2.BORDER_CONSTANT, value=0)


def _stack_lines(masks: Sequence[np.ndarray], gap: int) -> np.ndarray:
    """Stack masks vertically, each centred horizontally, ``gap`` px apart."""
    w = max(m.shape[1] for m in masks)
    rows = []
    for k, m in enumerate(masks):
        left = (w - m.shape[1]) // 2
        rows.append(cv2.copyMakeBorder(m, 0, gap if k < len(masks) - 1 else 0, left, w - m.shape[1] - left,
                                       cv2.BORDER_CONSTANT, value=0))  # fmt: skip
    return np.vstack(rows)


def _fit_mask(
    mask: np.ndarray,
    canvas_hw: tuple[int, int],
    center: tuple[float, float],
    box_wh: tuple[float, float],
    angle: float = 0.0,
    stretch: float = 1.0,
) -> np.ndarray:
    """Scale ``mask`` to fit inside ``box_wh``, rotate by ``angle`` degrees and place it at ``center``.

    ``stretch`` multiplies the horizontal scale (slightly condensed/expanded lettering). Returns a mask of
    the canvas size.
    """
    mh, mw = mask.shape
    s = min(box_wh[0] / (mw * stretch), box_wh[1] / mh)
    sx, sy = s * stretch, s
    a = math.radians(angle)
    ca, sa = math.cos(a), math.sin(a)
    # x' = R @ diag(sx, sy) @ (x - c_mask) + center
    m = np.array([[ca * sx, -sa * sy, 0.0], [sa * sx, ca * sy, 0.0]])
    c = np.array([(mw - 1) / 2, (mh - 1) / 2])
    m[:, 2] = np.array(center) - m[:, :2] @ c
    return cv2.warpAffine(mask, m, (canvas_hw[1], canvas_hw[0]), flags=cv2.INTER_LINEAR)


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    """Mask grown by ``width`` px (for outlines)."""
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    return cv2.dilate(mask, k)


def _textured_fill(rng: np.random.Generator, h: int, w: int, c0: Color, c1: Color, texture: float = 0.35) -> np.ndarray:
    """A metallic-looking fill: a gradient from ``c0`` to ``c1`` perturbed by fine noise of weight
    ``texture`` (0..1)."""
    t = (1 - texture) * _linear_gradient(h, w, rng.uniform(0.3 * np.pi, 0.7 * np.pi))
    t += texture * _noise(rng, h, w, cells=rng.uniform(8, 30), octaves=3)
    return _ramp(t, [c0, c1, c0] if rng.random() < 0.4 else [c0, c1])


def _is_dark_under(img: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the image is dark (mean luma < 128) where ``mask`` will be painted; picks a legible ink."""
    x, y, bw, bh = cv2.boundingRect(mask)
    if bw == 0:
        return True
    gray = cv2.cvtColor(img[y : y + bh, x : x + bw], cv2.COLOR_BGR2GRAY)
    return float(cv2.mean(gray, mask=(mask[y : y + bh, x : x + bw] > 0).astype(np.uint8))[0]) < 128


def _paint_lettering(
    img: np.ndarray,
    placed: np.ndarray,
    rng: np.random.Generator,
    fill: Color | np.ndarray,
    outline: Color | None,
    outline_width: int,
    shadow: bool,
) -> None:
    """Draw a placed text mask with optional drop shadow and outline (in place)."""
    if shadow:
        dx, dy = rng.integers(-6, 7, 2)
        sh = np.roll(placed, (int(dy), int(dx)), axis=(0, 1))
        _paint(img, cv2.GaussianBlur(sh, (0, 0), 3), (0, 0, 0), alpha=0.7)
    if outline is not None and outline_width > 0:
        _paint(img, _ring(placed, outline_width), outline)
    _paint(img, placed, fill)


# --------------------------------------------------------------------------------------------------------
# Emblems and artwork elements
# --------------------------------------------------------------------------------------------------------


def _draw_sigil(
    img: np.ndarray, rng: np.random.Generator, center: tuple[float, float], r: float, color: Color, thick: int
) -> None:
    """An occult-looking emblem: rings, an irregular star polygon, crosses and small marks.

    Radii and angles are jittered so the emblem is never rotationally symmetric (symmetric shapes give
    ambiguous matches).
    """
    cx, cy = center
    lt = cv2.LINE_AA
    c = (round(cx), round(cy))
    if rng.random() < 0.8:
        cv2.circle(img, c, round(r), color, thick, lt)
        if rng.random() < 0.5:
            cv2.circle(img, c, round(r * rng.uniform(0.7, 0.9)), color, max(1, thick // 2), lt)
    n = int(rng.choice([5, 7, 8, 9]))  # vertex counts that have a proper star polygon {n/k}
    k = int(rng.choice([k for k in range(2, (n - 1) // 2 + 1) if math.gcd(n, k) == 1]))
    a0 = rng.uniform(0, 2 * np.pi)
    ang = a0 + 2 * np.pi * np.arange(n) / n + rng.normal(0, 0.07, n)
    rad = r * rng.uniform(0.8, 0.98, n)
    verts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
    order = [(i * k) % n for i in range(n + 1)]
    cv2.polylines(img, [verts[order].round().astype(np.int32)], False, color, thick, lt)
    if rng.random() < 0.5:  # (inverted) cross or sword
        top, bot = cy - r * rng.uniform(0.6, 1.2), cy + r * rng.uniform(0.6, 1.2)
        cv2.line(img, (round(cx), round(top)), (round(cx), round(bot)), color, thick + 1, lt)
        yb = cy + r * rng.uniform(-0.5, 0.5)
        wb = r * rng.uniform(0.3, 0.7)
        cv2.line(img, (round(cx - wb), round(yb)), (round(cx + wb), round(yb)), color, thick + 1, lt)
    for _ in range(int(rng.integers(3, 9))):  # runes: short strokes and dots around the ring
        a = rng.uniform(0, 2 * np.pi)
        p = (cx + r * 1.12 * math.cos(a), cy + r * 1.12 * math.sin(a))
        q = (p[0] + rng.normal(0, r * 0.12), p[1] + rng.normal(0, r * 0.12))
        cv2.line(img, (round(p[0]), round(p[1])), (round(q[0]), round(q[1])), color, max(1, thick - 1), lt)
        if rng.random() < 0.5:
            cv2.circle(img, (round(q[0]), round(q[1])), max(2, thick), color, -1, lt)


def _el_polygons(img: np.ndarray, rng: np.random.Generator, pal: Sequence[Color]) -> None:
    s = img.shape[0]
    for _ in range(int(rng.integers(3, 9))):
        poly = _random_polygon(rng, tuple(rng.uniform(0, s, 2)), s * rng.uniform(0.05, 0.3))
        col = pal[int(rng.integers(len(pal)))] if rng.random() < 0.7 else _random_color(rng)

        def fill(im: np.ndarray, p: np.ndarray = poly, c: Color = col) -> None:
            cv2.fillPoly(im, [p], c, cv2.LINE_AA)

        _translucent(img, rng.uniform(0.35, 1.0), fill)
        if rng.random() < 0.4:
            cv2.polylines(img, [poly], True, _random_color(rng), int(rng.integers(1, 4)), cv2.LINE_AA)


def _el_circles(img: np.ndarray, rng: np.random.Generator, pal: Sequence[Color]) -> None:
    s = img.shape[0]
    for _ in range(int(rng.integers(2, 7))):
        c = tuple(int(v) for v in rng.integers(0, s, 2))
        r = int(s * rng.uniform(0.02, 0.18))
        col = pal[int(rng.integers(len(pal)))] if rng.random() < 0.6 else _random_color(rng)
        thick = -1 if rng.random() < 0.5 else int(rng.integers(1, 8))
        cv2.circle(img, c, r, col, thick, cv2.LINE_AA)


def _el_moon(img: np.ndarray, rng: np.random.Generator, pal: Sequence[Color]) -> None:
    """A big textured moon/sun with a soft halo."""
    s = img.shape[0]
    c = (int(rng.uniform(0.2, 0.8) * s), int(rng.uniform(0.15, 0.55) * s))
    r = int(s * rng.uniform(0.1, 0.22))
    f = 4  # the halo is soft: blur it at quarter resolution, which is ~16x cheaper
    halo = np.zeros((s // f, s // f), np.uint8)
    cv2.circle(halo, (c[0] // f, c[1] // f), int(r * 1.3 / f), 255, -1, cv2.LINE_AA)
    halo = cv2.resize(cv2.GaussianBlur(halo, (0, 0), r * 0.4 / f), (s, s), interpolation=cv2.INTER_LINEAR)
    _paint(img, halo, pal[-1], alpha=0.5)
    disk = np.zeros(img.shape[:2], np.uint8)
    cv2.circle(disk, c, r, 255, -1, cv2.LINE_AA)
    tex = _ramp(_noise(rng, s, s, cells=rng.uniform(8, 20), octaves=4), [pal[1], pal[-1], _random_color(rng)])
    _paint(img, disk, tex)
    if rng.random() < 0.5:  # crescent: bite a disc out of it
        off = (c[0] + int(r * rng.uniform(0.3, 0.7)), c[1] - int(r * rng.uniform(-0.4, 0.4)))
        bite = np.zeros(img.shape[:2], np.uint8)
        cv2.circle(bite, off, r, 255, -1, cv2.LINE_AA)
        _paint(img, cv2.bitwise_and(bite, disk), pal[0], alpha=0.9)


def _el_mountains(img: np.ndarray, rng: np.random.Generator, pal: Sequence[Color]) -> None:
    """One to three jagged ridge lines filled down to the bottom edge."""
    s = img.shape[0]
    for layer in range(int(rng.integers(1, 4))):
        n = int(rng.integers(8, 20))
        xs = np.sort(np.concatenate([[0, s], rng.uniform(0, s, n)]))
        base = s * rng.uniform(0.55, 0.85)
        ys = base - np.abs(np.cumsum(rng.normal(0, s * 0.06, len(xs))))
        ys = np.clip(ys, s * 0.2, s)
        pts = np.concatenate([np.stack([xs, ys], 1), [[s, s], [0, s]]]).round().astype(np.int32)
        shade = pal[min(layer, len(pal) - 1)]
        cv2.fillPoly(img, [pts], shade, cv2.LINE_AA)
        cv2.polylines(img, [pts[:-2]], False, _random_color(rng, vmin=0.4), 1, cv2.LINE_AA)


def _el_branches(img: np.ndarray, rng: np.random.Generator, pal: Sequence[Color]) -> None:
    """Dead trees: recursively forking branches."""
    s = img.shape[0]
    col = pal[0] if rng.random() < 0.7 else _random_color(rng, vmax=0.4)

    def branch(x: float, y: float, ang: float, ln: float, w: float, depth: int) -> None:
        x2, y2 = x + ln * math.cos(ang), y + ln * math.sin(ang)
        cv2.line(img, (round(x), round(y)), (round(x2), round(y2)), col, max(1, round(w)), cv2.LINE_AA)
        if depth == 0 or ln < 4:
            return
        for _ in range(int(rng.integers(1, 4))):
            branch(x2, y2, ang + rng.normal(0, 0.55), ln * rng.uniform(0.55, 0.8), w * 0.65, depth - 1)

    for _ in range(int(rng.integers(1, 4))):
        branch(rng.uniform(0, s), s * rng.uniform(0.85, 1.0), -np.pi / 2 + rng.normal(0, 0.2),
               s * rng.uniform(0.1, 0.22), s * rng.uniform(0.01, 0.025), int(rng.integers(4, 7)))  # fmt: skip


def _el_stars(img: np.ndarray, rng: np.random.Generator, pal: Sequence[Color]) -> None:
    s = img.shape[0]
    n = int(rng.integers(40, 250))
    xy = rng.uniform(0, s, (n, 2)).round().astype(int)
    rad = (rng.random(n) ** 3 * 3 + 1).astype(int)
    for (x, y), r in zip(xy, rad, strict=True):
        v = int(rng.integers(120, 256))
        cv2.circle(img, (int(x), int(y)), int(r), (v, v, min(255, v + 20)), -1, cv2.LINE_AA)


def _el_cracks(img: np.ndarray, rng: np.random.Generator, pal: Sequence[Color]) -> None:
    s = img.shape[0]
    for _ in range(int(rng.integers(2, 7))):
        walk = _random_walk(rng, tuple(rng.uniform(0, s, 2)), int(rng.integers(8, 30)), s * 0.03)
        col = _random_color(rng) if rng.random() < 0.5 else pal[int(rng.integers(len(pal)))]
        cv2.polylines(img, [walk], False, col, int(rng.integers(1, 4)), cv2.LINE_AA)


def _el_rays(img: np.ndarray, rng: np.random.Generator, pal: Sequence[Color]) -> None:
    """Light rays from one point at random (non-uniform) angles."""
    s = img.shape[0]
    c = rng.uniform(0, s, 2)
    col = pal[-1]

    def draw(im: np.ndarray) -> None:
        for a in rng.uniform(0, 2 * np.pi, int(rng.integers(6, 18))):
            da = rng.uniform(0.01, 0.06)
            far = s * 1.5
            pts = np.array([c, c + far * np.array([math.cos(a - da), math.sin(a - da)]),
                            c + far * np.array([math.cos(a + da), math.sin(a + da)])])  # fmt: skip
            cv2.fillConvexPoly(im, pts.round().astype(np.int32), col, cv2.LINE_AA)

    _translucent(img, rng.uniform(0.15, 0.4), draw)


def _el_blotches(img: np.ndarray, rng: np.random.Generator, pal: Sequence[Color]) -> None:
    """Irregular patches of high-frequency texture (paint splatter, rust, mould)."""
    s = img.shape[0]
    for _ in range(int(rng.integers(2, 6))):
        r = int(s * rng.uniform(0.06, 0.18))
        cx, cy = (int(v) for v in rng.integers(r, s - r, 2))
        local = _noise(rng, 2 * r, 2 * r, cells=rng.uniform(4, 10), octaves=4)
        yy, xx = np.mgrid[-r:r, -r:r].astype(np.float32)
        fall = np.clip(1 - np.sqrt(xx * xx + yy * yy) / r, 0, 1)
        m = ((local * fall) > rng.uniform(0.15, 0.35)).astype(np.uint8) * 255
        mask = np.zeros(img.shape[:2], np.uint8)
        mask[cy - r : cy + r, cx - r : cx + r] = m
        tex = np.zeros_like(img)
        tex[cy - r : cy + r, cx - r : cx + r] = _ramp(
            _noise(rng, 2 * r, 2 * r, cells=rng.uniform(10, 30), octaves=3),
            [_random_color(rng), _random_color(rng)],
        )
        _paint(img, mask, tex, alpha=rng.uniform(0.6, 1.0))


def _el_sigil(img: np.ndarray, rng: np.random.Generator, pal: Sequence[Color]) -> None:
    s = img.shape[0]
    _draw_sigil(img, rng, tuple(rng.uniform(0.25, 0.75, 2) * s), s * rng.uniform(0.1, 0.25),
                pal[-1] if rng.random() < 0.6 else _random_color(rng), int(rng.integers(2, 6)))  # fmt: skip


_ELEMENTS = (
    _el_polygons, _el_circles, _el_moon, _el_mountains, _el_branches, _el_stars, _el_cracks, _el_rays,
    _el_blotches, _el_sigil,
)  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# Logos and covers
# --------------------------------------------------------------------------------------------------------


def _swoosh(block: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Extend a lettering mask with a tapered, thorny bar underneath (a classic logo underline)."""
    h, w = block.shape
    bar_h = max(6, round(h * rng.uniform(0.12, 0.22)))
    out = cv2.copyMakeBorder(block, 0, 2 * bar_h, 0, 0, cv2.BORDER_CONSTANT, value=0)
    x0, x1 = w * rng.uniform(0.0, 0.15), w * rng.uniform(0.85, 1.0)
    xs = np.linspace(x0, x1, 24)
    u = np.linspace(-1, 1, 24)
    thick = bar_h * (1 - np.abs(u) ** rng.uniform(1.5, 3)) * rng.uniform(0.5, 0.9) + 1
    yc = h + bar_h * 0.6 + rng.uniform(-0.3, 0.3) * bar_h * u
    top = np.stack([xs, yc - thick / 2], 1)
    bottom = np.stack([xs, yc + thick / 2], 1)[::-1]
    cv2.fillPoly(out, [np.concatenate([top, bottom]).round().astype(np.int32)], 255, cv2.LINE_AA)
    for x in rng.uniform(x0 + 0.1 * (x1 - x0), x1 - 0.1 * (x1 - x0), int(rng.integers(2, 7))):
        ln = bar_h * rng.uniform(0.6, 1.4)
        y = float(np.interp(x, xs, yc))
        tip = (x + rng.normal(0, ln * 0.3), y + ln if rng.random() < 0.6 else y - ln)
        tri = np.array([[x - bar_h * 0.2, y], [x + bar_h * 0.2, y], tip])
        cv2.fillConvexPoly(out, tri.round().astype(np.int32), 255, cv2.LINE_AA)
    return out


def _splatter(img: np.ndarray, rng: np.random.Generator, color: Color, count: int) -> None:
    """Clusters of paint specks of random sizes (in place)."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        spread = rng.uniform(0.05, 0.2) * w
        for _ in range(count):
            r = int(rng.exponential(1.5)) + 1
            x, y = cx + rng.normal(0, spread), cy + rng.normal(0, spread * 0.6)
            cv2.circle(img, (round(x), round(y)), r, color, -1, cv2.LINE_AA)


def draw_logo(name: str, rng: np.random.Generator, size: tuple[int, int] = (640, 320)) -> np.ndarray:
    """Draw a stylised band logo for ``name``: BGR uint8 ``(height, width, 3)``; ``size`` is (width, height).

    Like a metal band logo: lettering in a random Hershey font with thorns, drips, shear, arch or an
    underline bar, an outline and a textured metallic fill, usually an emblem, on a plain or softly
    mottled background. The textured fill, emblem and ornaments are what give a logo enough distinctive
    keypoints: plain flat lettering alone is too sparse for reliable matching.
    """
    w, h = size
    dark_bg = rng.random() < 0.7
    hue = rng.uniform(0, 360)
    if dark_bg:
        bg0, bg1 = _random_color(rng, vmax=0.18), _random_color(rng, vmax=0.3)
    else:  # paper white / light grey, faintly tinted
        bg0 = _hsv(hue, rng.uniform(0, 0.2), rng.uniform(0.85, 1.0))
        bg1 = _hsv(hue + rng.normal(0, 15), rng.uniform(0, 0.25), rng.uniform(0.7, 0.9))
    t = 0.8 * _linear_gradient(h, w, rng.uniform(0, 2 * np.pi)) + 0.2 * _noise(rng, h, w, cells=6)
    img = _ramp(t, [bg0, bg1])
    if rng.random() < 0.75:  # mottled print / worn fabric
        mottle = 0.88 + 0.24 * _noise(rng, h, w, cells=rng.uniform(10, 30), octaves=3)
        img = np.clip(img.astype(np.float32) * mottle[..., None], 0, 255).astype(np.uint8)
    img = _grain(img, rng, 2.0)

    ink = _random_color(rng, vmin=0.75) if dark_bg else _random_color(rng, vmax=0.2)
    accent = _random_color(rng, vmin=0.45, vmax=0.95) if dark_bg else _random_color(rng, vmin=0.1, vmax=0.55)

    # Emblem: behind the lettering, beside it, or none.
    emblem = rng.choice(["behind", "side", "none"], p=[0.45, 0.35, 0.2])
    text_cx, text_w = w / 2, w * 0.92
    if emblem == "behind":
        r = h * rng.uniform(0.38, 0.48)
        c = (w / 2 + rng.normal(0, w * 0.05), h / 2 + rng.normal(0, h * 0.04))
        _translucent(img, rng.uniform(0.45, 0.8),
                     lambda im: _draw_sigil(im, rng, c, r, accent, int(rng.integers(2, 6))))  # fmt: skip
    elif emblem == "side":
        r = h * rng.uniform(0.22, 0.3)
        left = rng.random() < 0.5
        cx = r * 1.25 if left else w - r * 1.25
        _draw_sigil(img, rng, (cx, h / 2), r, accent, int(rng.integers(2, 5)))
        text_w = w - 2.7 * r
        text_cx = (2.5 * r + w) / 2 if left else (w - 2.5 * r) / 2
    if rng.random() < 0.4:
        _splatter(img, rng, accent, int(rng.integers(10, 40)))

    text = name.upper() if rng.random() < 0.5 else name
    words = text.split()
    if len(text) > 14 and len(words) > 1:
        cut = min(range(1, len(words)), key=lambda k: abs(len(" ".join(words[:k])) - len(text) / 2))
        lines = [" ".join(words[:cut]), " ".join(words[cut:])]
    else:
        lines = [text]
    line_h = round(h * rng.uniform(0.22, 0.3) / len(lines) * 1.4)
    masks = [_stylised_text(line, rng, line_h) for line in lines]
    block = _stack_lines(masks, gap=round(line_h * 0.1)) if len(masks) > 1 else masks[0]
    if rng.random() < 0.35:
        block = _swoosh(block, rng)

    tagline = rng.random() < 0.5
    box_h = h * (0.66 if tagline else 0.84)
    center_y = h * (0.44 if tagline else 0.5)
    placed = _fit_mask(block, (h, w), (text_cx, center_y), (text_w, box_h), angle=rng.normal(0, 2),
                       stretch=rng.uniform(0.85, 1.2))  # fmt: skip
    fill: Color | np.ndarray = ink
    if rng.random() < 0.9:
        second = _random_color(rng, vmin=0.5) if dark_bg else accent
        fill = _textured_fill(rng, h, w, ink, second, texture=rng.uniform(0.3, 0.55))
    outline = _random_color(rng) if rng.random() < 0.7 else None
    _paint_lettering(img, placed, rng, fill, outline, int(rng.integers(2, 6)), shadow=rng.random() < 0.5)
    if rng.random() < 0.75:  # distressed print: scratches and nicks through the lettering
        scratches = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(15, 50))):
            p0 = rng.uniform(0, 1, 2) * (w, h)
            p1 = p0 + rng.normal(0, h * 0.08, 2)
            cv2.line(scratches, (round(p0[0]), round(p0[1])), (round(p1[0]), round(p1[1])), 255,
                     int(rng.integers(1, 3)), cv2.LINE_AA)  # fmt: skip
        _paint(img, cv2.bitwise_and(scratches, placed), bg0, alpha=rng.uniform(0.6, 1.0))
    if rng.random() < 0.5:  # inner bevel line
        inner = cv2.subtract(placed, cv2.erode(placed, np.ones((3, 3), np.uint8)))
        _paint(img, inner, _random_color(rng), alpha=0.8)
    if tagline:
        tag_font = int(rng.choice(_FONTS_ALL))
        tag = _text_mask(_pick(rng, _TAGLINES), tag_font, max(8, round(h * 0.07)), int(rng.integers(1, 3)))
        tag = _wobble(tag, rng, 0.7)
        tm = _fit_mask(tag, (h, w), (text_cx + rng.normal(0, w * 0.03), h * 0.87), (text_w * 0.6, h * 0.11))
        _paint(img, tm, ink if rng.random() < 0.5 else accent)
        for sign in (-1, 1):  # little flourishes on both sides of the tagline
            x0 = text_cx + sign * text_w * rng.uniform(0.33, 0.45)
            x1 = x0 + sign * text_w * rng.uniform(0.03, 0.1)
            y0 = h * 0.87 + rng.normal(0, 2)
            end = (round(x1), round(y0 + rng.normal(0, 4)))
            cv2.line(img, (round(x0), round(y0)), end, accent, 2, cv2.LINE_AA)
            cv2.circle(img, end, int(rng.integers(2, 5)), accent, -1, cv2.LINE_AA)
    return _grain(img, rng, 1.5)


def draw_album_cover(title: str, band_name: str, rng: np.random.Generator, size: int = 600) -> np.ndarray:
    """Draw a square album cover, BGR uint8 ``(size, size, 3)``, with artwork, band name and album title.

    The artwork layers random clouds, polygons, moons, ridges, trees, stars, cracks, sigils and noise
    blotches so the cover is textured everywhere (plenty of distinctive SIFT keypoints, no flat areas).
    Drawing is done at 600 px and resized, so every size shows the same picture.
    """
    s = 600
    pal = _palette(rng, int(rng.integers(3, 6)))
    t = 0.6 * _noise(rng, s, s, cells=rng.uniform(2, 5), octaves=5)
    t += 0.4 * _linear_gradient(s, s, rng.uniform(0, 2 * np.pi))
    img = _ramp(t, pal)

    chosen = rng.choice(len(_ELEMENTS), size=int(rng.integers(5, 9)), replace=False)
    order = sorted(chosen, key=lambda k: (k != 3, rng.random()))  # ridges first, then anything
    for k in order:
        _ELEMENTS[int(k)](img, rng, pal)
    if rng.random() < 0.4:  # frame
        m = int(rng.integers(8, 30))
        col = _random_color(rng)
        cv2.rectangle(img, (m, m), (s - 1 - m, s - 1 - m), col, int(rng.integers(2, 7)), cv2.LINE_AA)
        if rng.random() < 0.5:
            m2 = m + int(rng.integers(6, 14))
            cv2.rectangle(img, (m2, m2), (s - 1 - m2, s - 1 - m2), col, 1, cv2.LINE_AA)

    # Band name: logo-like lettering at the top (or bottom); title in a plainer font on the other side.
    band_top = rng.random() < 0.75
    name_mask = _stylised_text(band_name.upper() if rng.random() < 0.5 else band_name, rng,
                               round(s * rng.uniform(0.08, 0.12)), wild=rng.uniform(0.3, 0.9))  # fmt: skip
    y_name = s * (rng.uniform(0.1, 0.2) if band_top else rng.uniform(0.8, 0.9))
    placed = _fit_mask(name_mask, (s, s), (s / 2 + rng.normal(0, s * 0.03), y_name), (s * 0.86, s * 0.2),
                       angle=rng.normal(0, 3), stretch=rng.uniform(0.85, 1.15))  # fmt: skip
    light = _is_dark_under(img, placed)  # light lettering on dark artwork and vice versa
    ink = _random_color(rng, vmin=0.8) if light else _random_color(rng, vmax=0.2)
    rim = (10, 10, 10) if light else (245, 245, 245)
    fill: Color | np.ndarray = _textured_fill(rng, s, s, ink, pal[-1]) if rng.random() < 0.5 else ink
    _paint_lettering(img, placed, rng, fill, rim if rng.random() < 0.5 else pal[0] if light else pal[-1],
                     int(rng.integers(1, 5)), True)  # fmt: skip

    title_font = int(rng.choice(_FONTS_ALL))
    if rng.random() < 0.2:
        title_font |= cv2.FONT_ITALIC
    title_text = title.upper() if rng.random() < 0.5 else title
    tmask = _wobble(
        _jittered_text_mask(title_text, title_font, 30, int(rng.integers(2, 5)), rng, rng.uniform(0.5, 1.0), pad=4),
        rng,
        1.2,
    )
    y_title = s * (rng.uniform(0.82, 0.92) if band_top else rng.uniform(0.08, 0.18))
    placed = _fit_mask(tmask, (s, s), (s / 2 + rng.normal(0, s * 0.05), y_title), (s * 0.8, s * 0.08),
                       angle=rng.normal(0, 2))  # fmt: skip
    light = _is_dark_under(img, placed)
    title_ink = _random_color(rng, vmin=0.75) if light else _random_color(rng, vmax=0.25)
    rim = (10, 10, 10) if light else (245, 245, 245)
    _paint_lettering(img, placed, rng, title_ink, rim, int(rng.integers(1, 3)), False)

    for _ in range(int(rng.integers(0, 3))):  # small print: edition marks, catalogue numbers
        txt = _pick(rng, _COVER_SMALL) if rng.random() < 0.6 else f"CAT-{int(rng.integers(100, 999))}"
        small = _text_mask(txt, int(rng.choice(_FONTS_ALL)), int(rng.integers(8, 14)), 1, pad=2)
        corner = (rng.uniform(0.1, 0.9) * s, rng.choice([0.04, 0.96]) * s)
        pm = _fit_mask(small, (s, s), corner, (s * 0.35, s * 0.05), angle=float(rng.choice([0, 0, 90, -90])))
        _paint(img, pm, _random_color(rng))

    # Print texture: mottled multiplicative grunge plus grain.
    grunge = 0.82 + 0.3 * _noise(rng, s, s, cells=rng.uniform(15, 40), octaves=3)
    img = np.clip(img.astype(np.float32) * grunge[..., None], 0, 255).astype(np.uint8)
    img = _grain(img, rng, 3.0)
    if size != s:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if size < s else cv2.INTER_CUBIC)
    return img


# --------------------------------------------------------------------------------------------------------
# Backgrounds (distractor scenes)
# --------------------------------------------------------------------------------------------------------


def _gibberish(rng: np.random.Generator, words: int) -> str:
    out = []
    for _ in range(words):
        w = "".join(_pick(rng, ("ka", "lo", "mi", "ru", "te", "sa", "on", "ex", "ba", "di", "ne", "st", "qu"))
                    for _ in range(int(rng.integers(1, 4))))  # fmt: skip
        out.append(w.upper() if rng.random() < 0.4 else w.capitalize())
    return " ".join(out)


def _wood(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Wood-grain texture: streaks stretched along x, warped growth rings, a brownish ramp."""
    streaks = cv2.resize(rng.random((max(2, h // 3), 6), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    warp = _noise(rng, h, w, cells=3, octaves=3)
    ys = np.arange(h, dtype=np.float32)[:, None]
    rings = 0.5 + 0.5 * np.sin(ys / rng.uniform(6, 18) + warp * rng.uniform(8, 20))
    t = np.clip(0.45 * rings + 0.55 * streaks, 0, 1)
    hue = rng.uniform(15, 40)
    cols = [_hsv(hue, rng.uniform(0.5, 0.8), v) for v in (rng.uniform(0.15, 0.3), rng.uniform(0.4, 0.6),
                                                          rng.uniform(0.65, 0.85))]  # fmt: skip
    return _ramp(t, cols)


def _fabric(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Woven fabric: fine threads plus soft folds in a random colour."""
    threads = rng.random((h, w), dtype=np.float32)
    threads = 0.5 * cv2.blur(threads, (9, 1)) + 0.5 * cv2.blur(threads, (1, 9))
    folds = _noise(rng, h, w, cells=3, octaves=3)
    t = np.clip(0.75 * folds + 1.2 * (threads - 0.5) + 0.1, 0, 1)
    hue = rng.uniform(0, 360)
    c0 = _hsv(hue, rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.25))
    return _ramp(t, [c0, _hsv(hue + rng.normal(0, 15), rng.uniform(0.2, 0.8), rng.uniform(0.4, 0.75))])


def _plaster(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A painted wall: pale, mostly desaturated, with mottled plaster texture."""
    t = 0.5 * _noise(rng, h, w, cells=5, octaves=6) + 0.3 * _linear_gradient(h, w, rng.uniform(0, 2 * np.pi))
    t += 0.2 * rng.random((h, w), dtype=np.float32)
    hue = rng.uniform(0, 360)
    c0 = _hsv(hue, rng.uniform(0.0, 0.3), rng.uniform(0.45, 0.65))
    return _ramp(t, [c0, _hsv(hue + rng.normal(0, 20), rng.uniform(0.0, 0.25), rng.uniform(0.75, 0.95))])


def _flyers(img: np.ndarray, rng: np.random.Generator, n: int) -> None:
    """Paper flyers taped to a wall: rotated rectangles with cloudy artwork and big gibberish headlines."""
    h, w = img.shape[:2]
    for _ in range(n):
        fw, fh = int(rng.uniform(80, 260)), int(rng.uniform(100, 320))
        paper = _ramp(_noise(rng, fh, fw, cells=rng.uniform(2, 6), octaves=4), _palette(rng, 3))
        cv2.rectangle(paper, (0, 0), (fw - 1, fh - 1), (235, 235, 235), int(rng.integers(3, 10)))
        for k in range(int(rng.integers(1, 4))):
            txt = _gibberish(rng, int(rng.integers(1, 3)))
            scale = rng.uniform(0.4, 1.2) * fw / 200
            org = (int(rng.uniform(5, fw * 0.3)), int(fh * (0.2 + 0.25 * k) + rng.uniform(0, 10)))
            font = int(rng.choice(_FONTS_ALL))
            cv2.putText(paper, txt, org, font, scale, _random_color(rng), int(rng.integers(1, 4)), cv2.LINE_AA)
        ang = math.radians(rng.normal(0, 8))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        ca, sa = math.cos(ang), math.sin(ang)
        m = np.array([[ca, -sa, 0.0], [sa, ca, 0.0]])
        m[:, 2] = np.array([cx, cy]) - m[:, :2] @ np.array([fw / 2, fh / 2])
        warped = cv2.warpAffine(paper, m, (w, h), flags=cv2.INTER_LINEAR)
        cover = cv2.warpAffine(np.full((fh, fw), 255, np.uint8), m, (w, h), flags=cv2.INTER_LINEAR)
        _paint(img, cover, warped)


def _spine_text(img: np.ndarray, rng: np.random.Generator, x: int, y: int, bw: int, bh: int, col: Color) -> None:
    """Write a random vertical title on a book/record spine occupying ``(x, y, bw, bh)``."""
    if bw < 10 or bh < 40:
        return
    m = _text_mask(_gibberish(rng, int(rng.integers(1, 3))), int(rng.choice(_FONTS_ALL)), 20, 2, pad=1)
    m = cv2.rotate(m, cv2.ROTATE_90_CLOCKWISE if rng.random() < 0.5 else cv2.ROTATE_90_COUNTERCLOCKWISE)
    s = min((bw * 0.7) / m.shape[1], (bh * 0.8) / m.shape[0])
    m = cv2.resize(m, (max(1, int(m.shape[1] * s)), max(1, int(m.shape[0] * s))), interpolation=cv2.INTER_AREA)
    ox, oy = x + (bw - m.shape[1]) // 2, y + (bh - m.shape[0]) // 2
    _paint_at(img, m, ox, oy, col)


def _shelves(img: np.ndarray, rng: np.random.Generator) -> None:
    """Shelf boards with rows of book/record spines (in place)."""
    h, w = img.shape[:2]
    n_boards = int(rng.integers(1, 4))
    bounds = np.sort(rng.uniform(0.15, 0.95, n_boards)) * h
    top = 0.0
    for yb in bounds:
        row_h = yb - top
        x = float(rng.uniform(-20, 40))
        while x < w and row_h > 40:
            bw = rng.uniform(10, 60)
            bh = row_h * rng.uniform(0.6, 0.95)
            if rng.random() < 0.15:  # a gap or a leaning item
                x += rng.uniform(10, 80)
                continue
            col = _random_color(rng, vmin=0.15, vmax=0.9)
            x0, y0 = round(x), round(yb - bh)
            cv2.rectangle(img, (x0, y0), (round(x + bw), round(yb)), col, -1)
            cv2.line(img, (x0, y0), (x0, round(yb)), (20, 20, 20), 1)
            if rng.random() < 0.5:
                band_y = round(y0 + bh * rng.uniform(0.05, 0.3))
                cv2.line(img, (x0, band_y), (round(x + bw), band_y), _random_color(rng), int(rng.integers(1, 5)))
            _spine_text(img, rng, x0, y0, round(bw), round(bh), _random_color(rng))
            x += bw
        thick = int(rng.uniform(12, 26))
        y0 = round(yb)
        board = _wood(rng, thick, w)
        img[y0 : min(h, y0 + thick)] = board[: max(0, min(h, y0 + thick) - y0)]
        if y0 + thick < h:
            cv2.line(img, (0, y0 + thick), (w, y0 + thick), (15, 15, 15), 3)
        top = yb + thick


def _clutter(img: np.ndarray, rng: np.random.Generator, n: int) -> None:
    """Random papers, stickers, cups, cables and scribbles (in place)."""
    h, w = img.shape[:2]
    for _ in range(n):
        kind = int(rng.integers(5))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        size = rng.uniform(20, 160)
        if kind == 0:  # a sheet of paper with lines of text
            rect = (
                (cx, cy),
                (size * rng.uniform(0.8, 1.5), size * rng.uniform(0.8, 1.5)),
                rng.uniform(0, 180),
            )
            box = cv2.boxPoints(rect).round().astype(np.int32)
            cv2.fillConvexPoly(img, box, _random_color(rng, vmin=0.75), cv2.LINE_AA)
            for k in range(int(rng.integers(1, 5))):
                txt = _gibberish(rng, int(rng.integers(1, 3)))
                org = (round(cx - size / 3), round(cy - size / 4 + k * 14))
                font = int(rng.choice(_FONTS_ALL))
                cv2.putText(img, txt, org, font, 0.4, _random_color(rng, vmax=0.3), 1, cv2.LINE_AA)
        elif kind == 1:  # cup / coaster seen from above
            r = round(size / 3)
            cv2.circle(img, (round(cx), round(cy)), r, _random_color(rng), -1, cv2.LINE_AA)
            cv2.circle(img, (round(cx), round(cy)), round(r * 0.8), _random_color(rng), 2, cv2.LINE_AA)
        elif kind == 2:  # cable
            walk = _random_walk(rng, (cx, cy), int(rng.integers(5, 15)), 30)
            cv2.polylines(img, [walk], False, _random_color(rng, vmax=0.4), int(rng.integers(2, 6)), cv2.LINE_AA)
        elif kind == 3:  # sticker / random shape
            cv2.fillPoly(img, [_random_polygon(rng, (cx, cy), size / 2)], _random_color(rng), cv2.LINE_AA)
        else:  # scribbled text
            cv2.putText(img, _gibberish(rng, int(rng.integers(1, 4))), (round(cx), round(cy)),
                        int(rng.choice(_FONTS_ALL)), rng.uniform(0.5, 1.6), _random_color(rng),
                        int(rng.integers(1, 4)), cv2.LINE_AA)  # fmt: skip


def draw_background(rng: np.random.Generator, size: tuple[int, int] = (1024, 768)) -> np.ndarray:
    """A cluttered procedural scene, BGR uint8 ``(height, width, 3)``; ``size`` is (width, height).

    One of: a record/book shelf, a wall (plaster with paper flyers), a wooden table with clutter, or a
    fabric backdrop, plus random text, shapes and uneven lighting. Never contains a reference, so it only
    adds distractor features to photos.
    """
    w, h = size
    kind = int(rng.integers(4))
    if kind == 0:
        img = _wood(rng, h, w)
        img = cv2.convertScaleAbs(img, alpha=rng.uniform(0.5, 0.8))  # the back of a shelf is in shadow
        _shelves(img, rng)
        _clutter(img, rng, int(rng.integers(2, 8)))
    elif kind == 1:
        img = _plaster(rng, h, w)
        _flyers(img, rng, int(rng.integers(2, 7)))
        _clutter(img, rng, int(rng.integers(3, 10)))
    elif kind == 2:
        img = _wood(rng, h, w)
        _clutter(img, rng, int(rng.integers(10, 25)))
    else:
        img = _fabric(rng, h, w)
        _clutter(img, rng, int(rng.integers(3, 10)))
    light = 0.75 + 0.45 * _noise(rng, h, w, cells=2, octaves=2)
    return np.clip(img.astype(np.float32) * light[..., None], 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------


def reference_corners(width: int, height: int) -> np.ndarray:
    """Corners of a ``width x height`` reference, float32 ``(4, 2)``: TL, TR, BR, BL at the corner pixels'
    centres (OpenCV convention, so the corners lie on the image and map exactly under a homography)."""
    w, h = float(width - 1), float(height - 1)
    return np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]], np.float32)


def project_points(h_matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply the 3x3 homography ``h_matrix`` to points ``(n, 2)`` -> float32 ``(n, 2)``."""
    p = np.asarray(pts, np.float64).reshape(-1, 2)
    q = np.hstack([p, np.ones((len(p), 1))]) @ np.asarray(h_matrix, np.float64).T
    return (q[:, :2] / q[:, 2:3]).astype(np.float32)


def quad_box(quad: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Axis-aligned box ``(x1, y1, x2, y2)`` (x2/y2 exclusive) of every pixel the quad touches, clipped to
    a ``size = (width, height)`` image."""
    w, h = size
    x1 = max(0, math.floor(float(quad[:, 0].min())))
    y1 = max(0, math.floor(float(quad[:, 1].min())))
    x2 = min(w, math.ceil(float(quad[:, 0].max())) + 1)
    y2 = min(h, math.ceil(float(quad[:, 1].max())) + 1)
    return x1, y1, x2, y2


def random_homography(
    src_size: tuple[int, int],
    rng: np.random.Generator,
    *,
    longer_side: float,
    rotation_deg: float,
    perspective: float,
    center: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """A random homography (3x3 float64) taking a ``src_size = (w, h)`` image to a photo.

    The reference is scaled so its longer side is ``longer_side`` px, rotated by U(-rotation_deg,
    rotation_deg), centred on ``center``, and each corner is then jittered independently by up to
    ``perspective`` x the object's width/height (a camera that is not square to the object). The
    resulting quad is always convex.
    """
    w, h = src_size
    src = reference_corners(w, h)
    s = longer_side / max(w - 1, h - 1, 1)
    half = np.array([(w - 1) / 2, (h - 1) / 2])
    a = math.radians(rng.uniform(-rotation_deg, rotation_deg))
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    base = ((src - half) * s) @ rot.T + np.array(center)
    extent = np.array([(w - 1) * s, (h - 1) * s])
    for _ in range(100):
        dst = base + rng.uniform(-perspective, perspective, (4, 2)) * extent
        if cv2.isContourConvex(dst.astype(np.float32).reshape(-1, 1, 2)):
            break
    else:  # pragma: no cover - only with absurd perspective values
        dst = base
    return cv2.getPerspectiveTransform(src, dst.astype(np.float32)).astype(np.float64)


def _translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def _prepare_source(ref: np.ndarray, h_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pre-shrink ``ref`` with area averaging when the warp minifies it a lot (avoids aliasing, like a real
    camera), returning the image to warp and the homography from *its* pixel coordinates."""
    rh, rw = ref.shape[:2]
    quad = project_points(h_matrix, reference_corners(rw, rh))
    area = 0.5 * abs(float(np.dot(quad[:, 0], np.roll(quad[:, 1], 1)) - np.dot(quad[:, 1], np.roll(quad[:, 0], 1))))
    scale = math.sqrt(area / max(1.0, (rw - 1) * (rh - 1)))
    if scale >= 0.6:
        return ref, h_matrix
    f = min(1.0, scale * 1.4)
    nw, nh = max(8, round(rw * f)), max(8, round(rh * f))
    small = cv2.resize(ref, (nw, nh), interpolation=cv2.INTER_AREA)
    fx, fy = nw / rw, nh / rh
    # cv2.resize maps x_small = (x + 0.5) * fx - 0.5.
    s_mat = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5], [0.0, 0.0, 1.0]])
    return small, h_matrix @ np.linalg.inv(s_mat)


def _warp_into(
    canvas: np.ndarray, ref: np.ndarray, h_matrix: np.ndarray, *, shadow: float = 0.0
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Warp ``ref`` by ``h_matrix`` onto ``canvas`` (in place) with anti-aliased edges and an optional soft
    drop shadow of opacity ``shadow``. Returns the object's coverage (uint8, 0..255) within the returned
    ``(x1, y1, x2, y2)`` region of the canvas."""
    ch, cw = canvas.shape[:2]
    rh, rw = ref.shape[:2]
    quad = project_points(h_matrix, reference_corners(rw, rh))
    pad = 16 if shadow > 0 else 2
    x1, y1, x2, y2 = quad_box(quad, (cw, ch))
    x1, y1, x2, y2 = max(0, x1 - pad), max(0, y1 - pad), min(cw, x2 + pad), min(ch, y2 + pad)
    bw, bh = x2 - x1, y2 - y1
    if bw <= 0 or bh <= 0:
        return np.zeros((0, 0), np.uint8), (x1, y1, x2, y2)
    src, hs = _prepare_source(ref, h_matrix)
    m = _translation(-x1, -y1) @ hs
    warped = cv2.warpPerspective(src, m, (bw, bh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    ones = np.full(src.shape[:2], 255, np.uint8)
    alpha = cv2.warpPerspective(ones, m, (bw, bh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    roi = canvas[y1:y2, x1:x2].astype(np.float32)
    if shadow > 0:
        sh = cv2.warpPerspective(ones, _translation(4, 6) @ m, (bw, bh), borderMode=cv2.BORDER_CONSTANT)
        sh = cv2.GaussianBlur(sh, (0, 0), 5).astype(np.float32) / 255.0
        roi *= 1.0 - shadow * sh[..., None]
    a = alpha.astype(np.float32)[..., None] / 255.0
    roi += (warped.astype(np.float32) - roi) * a
    canvas[y1:y2, x1:x2] = np.clip(roi + 0.5, 0, 255).astype(np.uint8)
    return alpha, (x1, y1, x2, y2)


# --------------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Placement:
    """Where one reference landed in a photo.

    ``quad``: float32 ``(4, 2)`` corners of the reference in the photo, TL, TR, BR, BL (x, y) pixels; exactly
    ``homography`` applied to :func:`reference_corners`. ``box``: ``(x1, y1, x2, y2)`` ints, x2/y2
    exclusive, clipped to the photo. ``visible_fraction``: share of the object's pixels not hidden by
    other objects or occluders (glare does not count). ``homography``: 3x3 float64, reference pixels ->
    photo pixels. (``eq=False``: arrays make field-wise equality ambiguous.)
    """

    ref_index: int
    quad: np.ndarray
    box: tuple[int, int, int, int]
    visible_fraction: float
    homography: np.ndarray

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form: ``{"ref_index", "quad": [[x, y]] * 4, "box", "visible_fraction"}``."""
        return {
            "ref_index": self.ref_index,
            "quad": [[round(float(x), 2), round(float(y), 2)] for x, y in self.quad],
            "box": list(self.box),
            "visible_fraction": round(self.visible_fraction, 4),
        }


@dataclass(frozen=True)
class SceneStyle:
    """How a photo is staged and degraded. Ranges are ``(min, max)`` sampled uniformly per photo/object.

    Geometry: ``perspective`` is the max corner jitter as a fraction of the object's size,
    ``rotation_deg`` the max in-plane rotation, ``scale`` the object's longer side as a fraction of the
    scene's shorter side. Photometry: Gaussian ``blur_sigma`` (px), ``motion_blur`` probability (streak of
    3-11 px), ``glare`` probability per object (soft bright ellipse), ``brightness`` (added grey levels),
    ``contrast`` (gain around mid-grey), ``color_cast`` (max per-channel gain deviation), ``vignette`` (max
    light fall-off), ``noise_sigma`` (grey levels), ``jpeg_quality`` (100 or more skips the JPEG round trip),
    ``occlusion`` probability per object (a shape hiding up to ~25% of it), ``shadow`` (drop-shadow
    opacity under objects), ``allow_overlap`` (objects may cover each other), ``max_attempts`` placement
    tries per object before it is dropped (the object shrinks every 8 failed tries).
    """

    perspective: float = 0.15
    rotation_deg: float = 20.0
    scale: tuple[float, float] = (0.25, 0.6)
    blur_sigma: tuple[float, float] = (0.0, 1.2)
    motion_blur: float = 0.15
    glare: float = 0.2
    brightness: tuple[float, float] = (-25.0, 25.0)
    contrast: tuple[float, float] = (0.8, 1.15)
    color_cast: float = 0.08
    vignette: float = 0.3
    noise_sigma: tuple[float, float] = (0.0, 5.0)
    jpeg_quality: tuple[int, int] = (60, 92)
    occlusion: float = 0.15
    shadow: float = 0.35
    allow_overlap: bool = False
    max_attempts: int = 48

    @classmethod
    def clean(cls, **overrides: Any) -> SceneStyle:
        """Same geometry, no photometric degradation at all (for exact-pixel tests)."""
        base = cls(
            blur_sigma=(0.0, 0.0), motion_blur=0.0, glare=0.0, brightness=(0.0, 0.0), contrast=(1.0, 1.0),
            color_cast=0.0, vignette=0.0, noise_sigma=(0.0, 0.0), jpeg_quality=(100, 100), occlusion=0.0,
            shadow=0.0,
        )  # fmt: skip
        return replace(base, **overrides)


@dataclass(frozen=True, eq=False)
class RenderedScene:
    """A photo before photometric degradation.

    ``image``: BGR uint8 ``(H, W, 3)``. ``owner``: int16 ``(H, W)``, index into ``placements`` of the
    topmost object covering each pixel (coverage >= 50%), -1 for background. ``areas``: full pixel count
    of each object (as if nothing covered it), used for ``visible_fraction``.
    """

    image: np.ndarray
    placements: list[Placement]
    owner: np.ndarray
    areas: np.ndarray


def _visible_fractions(owner: np.ndarray, areas: np.ndarray) -> np.ndarray:
    counts = np.bincount(owner.ravel().astype(np.int64) + 1, minlength=len(areas) + 1)[1:]
    return counts / np.maximum(areas, 1)


def place_references(
    refs: Sequence[np.ndarray],
    rng: np.random.Generator,
    *,
    size: tuple[int, int] = (1024, 768),
    style: SceneStyle = SceneStyle(),
    background: np.ndarray | None = None,
) -> RenderedScene:
    """Warp every reference into a background with a random homography (no photometric degradation).

    Objects stay fully inside the photo. Without ``style.allow_overlap`` their quads (plus a small gap) do
    not intersect; a reference that does not fit after ``style.max_attempts`` tries (shrinking as it
    goes) is left out, so ``len(placements) <= len(refs)`` and ``Placement.ref_index`` says which is which.
    """
    w, h = size
    if background is None:
        scene = draw_background(rng, size)
    else:
        scene = background if background.ndim == 3 else cv2.cvtColor(background, cv2.COLOR_GRAY2BGR)
        scene = cv2.resize(scene, (w, h), interpolation=cv2.INTER_AREA) if scene.shape[:2] != (h, w) else scene.copy()
    owner = np.full((h, w), -1, np.int16)
    occupied = np.zeros((h, w), np.uint8)
    short = min(w, h)
    margin, gap = 4, 6
    placements: list[Placement] = []
    areas: list[int] = []
    for ref_index, ref in enumerate(refs):
        rh, rw = ref.shape[:2]
        target = rng.uniform(*style.scale) * short
        chosen: np.ndarray | None = None
        for attempt in range(style.max_attempts):
            if attempt and attempt % 8 == 0:
                target *= 0.85
            h0 = random_homography((rw, rh), rng, longer_side=target, rotation_deg=style.rotation_deg,
                                   perspective=style.perspective)  # fmt: skip
            q0 = project_points(h0, reference_corners(rw, rh))
            lo, hi = q0.min(axis=0), q0.max(axis=0)
            span = hi - lo
            fit = min((w - 2 * margin) / span[0], (h - 2 * margin) / span[1])
            if fit < 1.0:  # larger than the photo: shrink and try again
                target *= fit * 0.95
                continue
            cx = rng.uniform(margin - lo[0], w - margin - hi[0])
            cy = rng.uniform(margin - lo[1], h - margin - hi[1])
            hm = _translation(cx, cy) @ h0
            quad = project_points(hm, reference_corners(rw, rh))
            if not style.allow_overlap:
                m = np.zeros((h, w), np.uint8)
                poly = quad.round().astype(np.int32)
                cv2.fillConvexPoly(m, poly, 255)
                cv2.polylines(m, [poly], True, 255, 2 * gap)
                if cv2.countNonZero(cv2.bitwise_and(m, occupied)) > 0:
                    continue
                occupied |= m
            chosen = hm
            break
        if chosen is None:
            continue
        alpha, (x1, y1, x2, y2) = _warp_into(scene, ref, chosen, shadow=style.shadow)
        k = len(placements)
        owner[y1:y2, x1:x2][alpha >= 128] = k
        areas.append(int(np.count_nonzero(alpha >= 128)))
        quad = project_points(chosen, reference_corners(rw, rh))
        placements.append(Placement(ref_index, quad, quad_box(quad, size), 1.0, chosen))
    area_arr = np.array(areas, np.int64)
    vis = _visible_fractions(owner, area_arr)
    placements = [replace(p, visible_fraction=float(v)) for p, v in zip(placements, vis, strict=True)]
    return RenderedScene(scene, placements, owner, area_arr)


def _occlude(img: np.ndarray, owner: np.ndarray, k: int, p: Placement, area: int, rng: np.random.Generator) -> None:
    """Cover ~5-25% of object ``k`` with a random opaque shape entering from one of its edges (a thumb, a
    sticker, another item). Sets ``owner`` to -1 under the shape (in place)."""
    h, w = owner.shape
    e = int(rng.integers(4))
    t = rng.uniform(0.2, 0.8)
    edge_pt = p.quad[e] * (1 - t) + p.quad[(e + 1) % 4] * t
    c = (round(float(edge_pt[0])), round(float(edge_pt[1])))
    aspect = rng.uniform(0.5, 2.0)
    ang = rng.uniform(0, 180)
    col = _random_color(rng) if rng.random() < 0.6 else _hsv(rng.uniform(10, 30), rng.uniform(0.3, 0.6), 0.75)
    radius = math.sqrt(2 * rng.uniform(0.05, 0.25) * area / math.pi)  # half an ellipse lies inside
    polygon = rng.random() < 0.5  # an irregular item instead of a round one (thumb, cup)
    n = int(rng.integers(4, 9))
    a = np.sort(rng.uniform(0, 2 * np.pi, n))
    unit = np.stack([np.cos(a), np.sin(a)], 1) * rng.uniform(0.6, 1.2, (n, 1))
    ca, sa = math.cos(math.radians(ang)), math.sin(math.radians(ang))
    x1, y1, x2, y2 = p.box
    for _ in range(10):
        m = np.zeros((h, w), np.uint8)
        axes = (max(3, round(radius * math.sqrt(aspect))), max(3, round(radius / math.sqrt(aspect))))
        if polygon:
            verts = (unit * np.array(axes)) @ np.array([[ca, sa], [-sa, ca]]) + np.array(c)
            cv2.fillPoly(m, [verts.round().astype(np.int32)], 255, cv2.LINE_AA)
        else:
            cv2.ellipse(m, c, axes, ang, 0, 360, 255, -1, cv2.LINE_AA)
        hidden = np.count_nonzero((m[y1:y2, x1:x2] >= 128) & (owner[y1:y2, x1:x2] == k))
        if hidden <= 0.25 * area:
            break
        radius *= 0.85
    dark = (int(col[0] * 0.55), int(col[1] * 0.55), int(col[2] * 0.55))
    tex = _ramp(_noise(rng, h, w, cells=8, octaves=3), [dark, col])
    _paint(img, cv2.GaussianBlur(m, (0, 0), 6), (0, 0, 0), alpha=0.35)
    _paint(img, m, tex)
    owner[m >= 128] = -1


def _glare(img: np.ndarray, p: Placement, rng: np.random.Generator) -> None:
    """A soft bright elliptical highlight over part of an object (a lamp reflecting on glossy print)."""
    h, w = img.shape[:2]
    wts = rng.dirichlet(np.ones(4))
    c = wts @ p.quad
    obj = max(float(np.ptp(p.quad[:, 0])), float(np.ptp(p.quad[:, 1])))
    f = 4  # draw at quarter resolution, blur, upsample: cheap and smooth
    small = np.zeros((h // f + 1, w // f + 1), np.float32)
    axes = (max(2, round(obj * rng.uniform(0.12, 0.35) / f)), max(2, round(obj * rng.uniform(0.05, 0.2) / f)))
    cv2.ellipse(small, (round(float(c[0]) / f), round(float(c[1]) / f)), axes, rng.uniform(0, 180), 0, 360,
                1.0, -1, cv2.LINE_AA)  # fmt: skip
    small = cv2.GaussianBlur(small, (0, 0), max(axes) * 0.5)
    a = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)[..., None] * rng.uniform(0.5, 0.9)
    f32 = img.astype(np.float32)
    img[...] = np.clip(f32 + (255.0 - f32) * a, 0, 255).astype(np.uint8)


def degrade_image(img: np.ndarray, rng: np.random.Generator, style: SceneStyle = SceneStyle()) -> np.ndarray:
    """Global camera effects on a BGR uint8 image: lighting (contrast, brightness, colour cast, vignette),
    Gaussian and motion blur, sensor noise, then a JPEG encode/decode round trip. Returns a new image."""
    h, w = img.shape[:2]
    out: np.ndarray = img.astype(np.float32)
    contrast = rng.uniform(*style.contrast)
    bright = rng.uniform(*style.brightness)
    gains = 1.0 + rng.uniform(-style.color_cast, style.color_cast, 3)
    out = ((out - 128.0) * contrast + 128.0 + bright) * gains.astype(np.float32)
    if style.vignette > 0:
        light = 1.0 - style.vignette * rng.uniform(0.3, 1.0) * _noise(rng, h, w, cells=1.5, octaves=2)
        out *= light[..., None]
    sigma = rng.uniform(*style.blur_sigma)
    if sigma > 0.25:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    if rng.random() < style.motion_blur:
        ln = int(rng.integers(3, 12))
        k = np.zeros((ln, ln), np.float32)
        a = rng.uniform(0, np.pi)
        c = (ln - 1) / 2
        d = c * np.array([math.cos(a), math.sin(a)])
        cv2.line(k, (round(c - d[0]), round(c - d[1])), (round(c + d[0]), round(c + d[1])), 1.0, 1, cv2.LINE_AA)
        out = cv2.filter2D(out, -1, k / k.sum())
    noise = rng.uniform(*style.noise_sigma)
    if noise > 0:
        out += rng.normal(0.0, noise, out.shape).astype(np.float32)
    result = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    quality = int(rng.integers(style.jpeg_quality[0], style.jpeg_quality[1] + 1))
    if quality < 100:
        ok, buf = cv2.imencode(".jpg", result, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            result = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return result


def degrade_scene(
    rendered: RenderedScene, rng: np.random.Generator, style: SceneStyle = SceneStyle()
) -> tuple[np.ndarray, list[Placement]]:
    """Occlusions and glare on individual objects, then :func:`degrade_image`. Returns the photo and the
    placements with ``visible_fraction`` updated for the occluders (quads/boxes do not change)."""
    img = rendered.image.copy()
    owner = rendered.owner.copy()
    for k, p in enumerate(rendered.placements):
        if rng.random() < style.occlusion:
            _occlude(img, owner, k, p, int(rendered.areas[k]), rng)
    for p in rendered.placements:
        if rng.random() < style.glare:
            _glare(img, p, rng)
    vis = _visible_fractions(owner, rendered.areas)
    placements = [replace(p, visible_fraction=float(v)) for p, v in zip(rendered.placements, vis, strict=True)]
    return degrade_image(img, rng, style), placements


def compose_scene(
    refs: Sequence[np.ndarray],
    rng: np.random.Generator,
    *,
    size: tuple[int, int] = (1024, 768),
    style: SceneStyle = SceneStyle(),
    background: np.ndarray | None = None,
) -> tuple[np.ndarray, list[Placement]]:
    """A realistic phone photo of the references: :func:`place_references` then :func:`degrade_scene`.

    Returns the BGR uint8 photo ``(size[1], size[0], 3)`` and one :class:`Placement` per reference that
    fitted. With no refs it is a pure distractor photo (background only).
    """
    rendered = place_references(refs, rng, size=size, style=style, background=background)
    return degrade_scene(rendered, rng, style)


def warp_reference(
    ref: np.ndarray,
    rng: np.random.Generator,
    style: SceneStyle = SceneStyle(),
    *,
    scale: float = 1.0,
    margin: float = 0.1,
    fill: Color = (127, 127, 127),
) -> tuple[np.ndarray, np.ndarray]:
    """Warp one reference with a random homography (``style.rotation_deg``/``style.perspective``) onto a
    plain ``fill`` canvas just large enough, plus ``margin`` x its longer side on each side.

    ``scale`` sets the output longer side relative to the reference's. Returns ``(image, H)`` where ``H``
    (3x3 float64) maps reference pixels to image pixels. No photometric degradation; chain
    :func:`degrade_image` for that.
    """
    rh, rw = ref.shape[:2]
    longer = scale * max(rw - 1, rh - 1)
    h0 = random_homography((rw, rh), rng, longer_side=longer, rotation_deg=style.rotation_deg,
                           perspective=style.perspective)  # fmt: skip
    q = project_points(h0, reference_corners(rw, rh))
    pad = margin * longer
    lo, hi = q.min(axis=0) - pad, q.max(axis=0) + pad
    hm = _translation(-float(lo[0]), -float(lo[1])) @ h0
    out_w, out_h = math.ceil(float(hi[0] - lo[0])) + 1, math.ceil(float(hi[1] - lo[1])) + 1
    canvas = np.empty((out_h, out_w, 3), np.uint8)
    canvas[...] = fill
    _warp_into(canvas, ref, hm)
    return canvas, hm


# --------------------------------------------------------------------------------------------------------
# Merch: a logo printed on a shirt, a patch, a poster or a sticker, in either polarity
# --------------------------------------------------------------------------------------------------------

#: Where a print is photographed. A shirt and a patch are fabric (they fold); a poster and a sticker are
#: paper and vinyl (flat, a sticker with a glossy die-cut border).
MERCH_MEDIA = ("shirt", "patch", "poster", "sticker")


@dataclass(frozen=True)
class MerchStyle:
    """How one merch photo is made (see :func:`draw_merch_photo`).

    ``inverted``: the print's luminance is the reference's inverted (a black-on-white logo printed in
    white ink on a black shirt). ``folds``: how strongly the fabric is folded and wrinkled (0 = flat;
    1 = a shirt worn or lying crumpled), displacing the print and shading it. ``medium``: one of
    :data:`MERCH_MEDIA`. ``print_scale``: the print's longer side as a fraction of the photo's shorter
    side. ``size``: the photo, (width, height). Geometry and camera effects follow ``scene``.
    """

    inverted: bool = False
    folds: float = 0.0
    medium: str = "shirt"
    print_scale: tuple[float, float] = (0.35, 0.6)
    size: tuple[int, int] = (1024, 768)
    scene: SceneStyle = SceneStyle(perspective=0.12, rotation_deg=15.0, occlusion=0.0, glare=0.0, shadow=0.25)

    def __post_init__(self) -> None:
        if self.medium not in MERCH_MEDIA:
            raise ValueError(f"medium must be one of {MERCH_MEDIA}, not {self.medium!r}")


def _print_levels(reference: np.ndarray, inverted: bool) -> tuple[np.ndarray, float]:
    """The reference's luminance as a print's levels in [0, 1] (0 = the darker colour), inverted when
    asked, and the level of its background (its border's median): the colour of the fabric around it."""
    gray = cv2.cvtColor(reference, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    levels = 1.0 - gray if inverted else gray
    border = np.concatenate([levels[0], levels[-1], levels[:, 0], levels[:, -1]])
    return levels, float(np.median(border))


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark and a light colour (garment and ink, whichever way round), float32 BGR."""
    hue = rng.uniform(0, 360)
    dark = _hsv(hue, rng.uniform(0.0, 0.7), rng.uniform(0.04, 0.22))
    light = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.35), rng.uniform(0.78, 0.97))
    return np.array(dark, np.float32), np.array(light, np.float32)


def _fold_field(rng: np.random.Generator, h: int, w: int, strength: float) -> np.ndarray:
    """A height field of folds and wrinkles, float32 (h, w) in pixels: a few long ridges (where cloth
    buckles) on soft undulation; ``strength`` scales their height."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    height = (_noise(rng, h, w, cells=2.5, octaves=3) - 0.5) * 18.0
    for _ in range(int(rng.integers(3, 8))):
        angle = rng.uniform(0, np.pi)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        across = (xs - cx) * math.sin(angle) - (ys - cy) * math.cos(angle)
        along = (xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)
        bend = rng.normal(0, 0.0015) * along**2  # ridges are not straight
        width = rng.uniform(0.02, 0.07) * max(h, w)
        reach = rng.uniform(0.25, 0.7) * max(h, w)
        height += rng.uniform(8, 26) * np.exp(-(((across - bend) / width) ** 2) - (along / reach) ** 2)
    return height * np.float32(strength)


def _fold(image: np.ndarray, height: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` as printed on cloth with ``height``: the print slides with the folds (their slope) and
    is shaded by a light from one side, darker in the creases."""
    h, w = height.shape
    gy, gx = np.gradient(height)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    shift = 3.0
    warped = cv2.remap(image, xs + shift * gx * height / 10.0, ys + shift * gy * height / 10.0,
                       cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)  # fmt: skip
    light = rng.uniform(0, 2 * np.pi)
    slope = gx * math.cos(light) + gy * math.sin(light)
    crease = cv2.GaussianBlur(height, (0, 0), 6) - cv2.GaussianBlur(height, (0, 0), 30)
    shade = np.clip(1.0 + 0.9 * slope + 0.012 * crease, 0.35, 1.35)
    return np.clip(warped.astype(np.float32) * shade[..., None], 0, 255).astype(np.uint8)


def _weave(rng: np.random.Generator, h: int, w: int, amount: float) -> np.ndarray:
    """Multiplicative thread texture around 1, float32 (h, w)."""
    threads = rng.random((h, w), dtype=np.float32)
    threads = 0.5 * cv2.blur(threads, (7, 1)) + 0.5 * cv2.blur(threads, (1, 7))
    return 1.0 + amount * (threads - 0.5)


def draw_merch(
    reference: np.ndarray, rng: np.random.Generator, style: MerchStyle = MerchStyle()
) -> tuple[np.ndarray, np.ndarray]:
    """The reference printed on ``style.medium``: the item's image (BGR uint8) and the print's corners
    in it (float32 (4, 2), TL TR BR BL), before it is photographed.

    A print reproduces the reference's luminance between two colours (a dark garment and light ink or
    the other way round; with ``style.inverted`` the levels are flipped), and the medium around the
    print takes the colour of the reference's background, as ink on cloth does.
    """
    levels, background = _print_levels(reference, style.inverted)
    rh, rw = levels.shape
    dark, light = _two_colours(rng)
    margin = {"shirt": 0.45, "patch": 0.1, "poster": 0.12, "sticker": 0.07}[style.medium]
    pad_x, pad_y = round(margin * rw) + 4, round(margin * rh * (2.2 if style.medium == "shirt" else 1.0)) + 4
    h, w = rh + 2 * pad_y, rw + 2 * pad_x
    canvas_levels = np.full((h, w), background, np.float32)
    canvas_levels[pad_y : pad_y + rh, pad_x : pad_x + rw] = levels
    item = dark[None, None, :] + (light - dark)[None, None, :] * canvas_levels[..., None]
    if style.medium in ("shirt", "patch"):
        item *= _weave(rng, h, w, 0.12 if style.medium == "shirt" else 0.2)[..., None]
    else:
        item *= (0.96 + 0.08 * _noise(rng, h, w, cells=6, octaves=3))[..., None]
    item = np.clip(item, 0, 255).astype(np.uint8)
    if style.medium == "patch":  # a stitched border
        colour = tuple(int(v) for v in (light if background < 0.5 else dark))
        cv2.rectangle(item, (3, 3), (w - 4, h - 4), colour, max(3, round(0.03 * min(h, w))), cv2.LINE_AA)
    elif style.medium == "sticker":  # a white die-cut border
        cv2.rectangle(item, (0, 0), (w - 1, h - 1), (245, 245, 245), max(4, round(0.05 * min(h, w))))
    if style.folds > 0 and style.medium in ("shirt", "patch"):
        strength = style.folds * (1.0 if style.medium == "shirt" else 0.35)
        item = _fold(item, _fold_field(rng, h, w, strength), rng)
    corners = reference_corners(rw, rh) + np.array([pad_x, pad_y], np.float32)
    return item, corners


def draw_merch_photo(
    reference: np.ndarray | None,
    rng: np.random.Generator,
    style: MerchStyle = MerchStyle(),
    *,
    background: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A phone photo of ``reference`` printed as ``style`` says, in a cluttered scene (``background``,
    else a drawn one): BGR uint8 and the print's quad in the photo (float32 (4, 2), TL TR BR BL).

    With ``reference`` None it is the same kind of photo of a blank item (no print): a photo that holds
    no logo, for false accepts.
    """
    if reference is None:
        blank = np.full((240, 480, 3), 200 if rng.random() < 0.5 else 40, np.uint8)
        item, corners = draw_merch(blank, rng, style)
    else:
        item, corners = draw_merch(reference, rng, style)
    w, h = style.size
    if background is None:
        scene = draw_background(rng, (w, h))
    else:
        scene = cv2.resize(background, (w, h), interpolation=cv2.INTER_AREA)
    ih, iw = item.shape[:2]
    print_side = float(max(np.ptp(corners[:, 0]), np.ptp(corners[:, 1])))
    item_side = rng.uniform(*style.print_scale) * min(w, h) * max(iw, ih) / max(print_side, 1.0)
    item_side = min(item_side, 0.97 * math.hypot(w, h))
    for _ in range(40):
        hm = random_homography((iw, ih), rng, longer_side=item_side, rotation_deg=style.scene.rotation_deg,
                               perspective=style.scene.perspective, center=(w / 2, h / 2))  # fmt: skip
        quad = project_points(hm, corners)
        lo, hi = quad.min(axis=0), quad.max(axis=0)
        if hi[0] - lo[0] < w - 8 and hi[1] - lo[1] < h - 8:  # the print fits; the item may run off the edges
            dx = rng.uniform(4 - lo[0], w - 4 - hi[0])
            dy = rng.uniform(4 - lo[1], h - 4 - hi[1])
            hm = _translation(dx, dy) @ hm
            break
        item_side *= 0.9
    _warp_into(scene, item, hm, shadow=style.scene.shadow)
    photo = degrade_image(scene, rng, style.scene)
    return photo, None if reference is None else project_points(hm, corners)


# --------------------------------------------------------------------------------------------------------
# Demo set
# --------------------------------------------------------------------------------------------------------


def write_demo_set(
    out_dir: Path,
    *,
    n_bands: int = 8,
    n_photos: int = 6,
    seed: int = 0,
    objects_per_photo: tuple[int, int] = (1, 3),
    n_no_match_photos: int = 1,
    n_merch_photos: int = 1,
) -> Path:
    """Write a complete sample data set to ``out_dir`` and return it.

    Layout: ``references/<band_id>_logo.jpg`` and ``references/<album_id>.jpg`` (JPEG quality 95),
    ``photos/p000.jpg``... (1-3 references each, ``objects_per_photo`` inclusive) and
    ``photos/nomatch_000.jpg``... (background only), ``photos/shirt_000.jpg``... (a band's logo printed
    inverted on a folded shirt, as merch mostly shows a logo: :func:`draw_merch_photo`), ``catalog.json``
    (bands, albums, references) and ``gt.json`` (the project's evaluation format: database, labels,
    queries with positives and exact object quads/boxes, distractor queries). All paths in the JSON
    files are relative to ``out_dir``. Each image gets its own seeded generator, so the files are
    reproducible byte for byte.
    """
    out_dir = Path(out_dir)
    (out_dir / "references").mkdir(parents=True, exist_ok=True)
    (out_dir / "photos").mkdir(parents=True, exist_ok=True)
    bands = make_bands(n_bands, seed=seed)

    ref_paths: list[str] = []
    ref_images: list[np.ndarray] = []
    references: list[dict[str, object]] = []
    labels: dict[str, str] = {}
    albums: list[dict[str, object]] = []
    jpeg95 = [cv2.IMWRITE_JPEG_QUALITY, 95]
    for bi, band in enumerate(bands):
        items: list[tuple[str, str, SampleAlbum | None]] = [(f"{band.band_id}_logo", "logo", None)]
        items += [(album.album_id, "album_cover", album) for album in band.albums]
        for ai, (stem, kind, album) in enumerate(items):
            item_rng = np.random.default_rng([seed, 1, bi, ai])
            if album is None:
                img = draw_logo(band.name, item_rng)
            else:
                img = draw_album_cover(album.title, band.name, item_rng)
                albums.append({"album_id": album.album_id, "band_id": band.band_id, "title": album.title,
                               "year": album.year})  # fmt: skip
            rel = f"references/{stem}.jpg"
            cv2.imwrite(str(out_dir / rel), img, jpeg95)
            ref_paths.append(rel)
            ref_images.append(img)
            references.append({"image": rel, "kind": kind, "band_id": band.band_id,
                               "album_id": None if album is None else album.album_id})  # fmt: skip
            labels[rel] = f"{band.name} — {'logo' if album is None else album.title}"

    queries: list[dict[str, object]] = []
    lo, hi = objects_per_photo
    n_logos = len(bands)
    n_covers = len(ref_images) - n_logos
    for pi in range(n_photos):
        photo_rng = np.random.default_rng([seed, 2, pi])
        k = min(len(ref_images), int(photo_rng.integers(lo, hi + 1)))
        # Logos and covers equally likely, although there are more covers than logos.
        weights = np.array([0.5 / n_logos if r["kind"] == "logo" else 0.5 / max(1, n_covers) for r in references])
        weights /= weights.sum()
        picks = [int(i) for i in photo_rng.choice(len(ref_images), size=k, replace=False, p=weights)] if k else []
        photo, placements = compose_scene([ref_images[i] for i in picks], photo_rng)
        rel = f"photos/p{pi:03d}.jpg"
        cv2.imwrite(str(out_dir / rel), photo, jpeg95)
        objects = []
        positives: list[str] = []
        for p in placements:
            ref_rel = ref_paths[picks[p.ref_index]]
            positives.append(ref_rel)
            objects.append({"reference": ref_rel, **{k2: v for k2, v in p.to_dict().items() if k2 != "ref_index"}})
        queries.append({"query": rel, "positives": positives, "objects": objects})

    for mi in range(n_merch_photos):
        merch_rng = np.random.default_rng([seed, 4, mi])
        band = bands[int(merch_rng.integers(len(bands)))]
        ref_rel = f"references/{band.band_id}_logo.jpg"
        style = MerchStyle(inverted=True, folds=0.8, medium="shirt", print_scale=(0.35, 0.5))
        photo, quad = draw_merch_photo(ref_images[ref_paths.index(ref_rel)], merch_rng, style)
        rel = f"photos/shirt_{mi:03d}.jpg"
        cv2.imwrite(str(out_dir / rel), photo, jpeg95)
        assert quad is not None
        objects = [{"reference": ref_rel, "quad": [[round(float(x), 2), round(float(y), 2)] for x, y in quad],
                    "box": list(quad_box(quad, style.size)), "inverted": True}]  # fmt: skip
        queries.append({"query": rel, "positives": [ref_rel], "objects": objects})

    distractors: list[str] = []
    for ni in range(n_no_match_photos):
        photo_rng = np.random.default_rng([seed, 3, ni])
        photo, _ = compose_scene([], photo_rng)
        rel = f"photos/nomatch_{ni:03d}.jpg"
        cv2.imwrite(str(out_dir / rel), photo, jpeg95)
        distractors.append(rel)

    catalog = {"bands": [b.to_band_dict() for b in bands], "albums": albums, "references": references}
    gt = {"name": "demo", "database": ref_paths, "labels": labels, "queries": queries,
          "distractor_queries": distractors}  # fmt: skip
    (out_dir / "catalog.json").write_text(json.dumps(catalog, indent=2, ensure_ascii=False) + "\n", "utf-8")
    (out_dir / "gt.json").write_text(json.dumps(gt, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return out_dir
