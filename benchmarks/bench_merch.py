"""Logos the way merch shows them: top-1 per print variant, and false accepts on photos with no logo.

Usage::

    python benchmarks/bench_merch.py [--logos 40] [--crops ../shared/datasets/logos --max-crops 100]
        [--backgrounds ../shared/datasets/landmarks] [--seed 0] [--json merch.json]
        [--compare LABEL:SECTION.FIELD=VALUE[,...]]...

The references are drawn metal-style logos (``kyb.synth.draw_logo``) and, with ``--crops``, the logo
boxes of a gt.json set cut out of its reference photos (each box its own band). Every reference is
printed once per variant (``kyb.synth.draw_merch_photo``) on a shirt, patch, poster or sticker, in a
cluttered scene (drawn, or a photo of ``--backgrounds``), photographed with perspective, blur, noise,
lighting and JPEG:

* plain: the print as the reference is, flat;
* inverted: the reference's luminance inverted (a black-on-white logo in white ink on a black shirt);
* folded / inverted + folded: the same on a folded, wrinkled shirt or patch;
* small: plain, the print 8-14% of the photo's shorter side in a 1600 x 1200 photo.

No-logo photos are the same items blank, or printed (either polarity) with other bands' drawn album art
(not in the catalog). Each photo is identified with the engine's settings and again with
``features.query_inverted_features`` 0 (the photo as photographed only), same index, same photos, same
run: the table compares the two. With ``--compare`` the columns are the defaults and each setting given
instead (e.g. ``off:search.guided_neighbours=0``), every photo identified by each in turn. A photo is
right when its first object names the reference's band; "outline IoU" is the median overlap of that
object's outline with the print's true quad.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from kyb import synth
from kyb.catalog import Band
from kyb.config import ConfigError, EngineConfig, load_config
from kyb.engine import Engine, IngestItem
from kyb.groundtruth import load_ground_truth

#: (name, inverted, folds, media, print scale, photo size)
VARIANTS: tuple[tuple[str, bool, float, tuple[str, ...], tuple[float, float], tuple[int, int]], ...] = (
    ("plain", False, 0.0, synth.MERCH_MEDIA, (0.3, 0.55), (1024, 768)),
    ("inverted", True, 0.0, synth.MERCH_MEDIA, (0.3, 0.55), (1024, 768)),
    ("folded", False, 1.0, ("shirt", "patch"), (0.3, 0.55), (1024, 768)),
    ("inverted + folded", True, 1.0, ("shirt", "patch"), (0.3, 0.55), (1024, 768)),
    ("small", False, 0.0, synth.MERCH_MEDIA, (0.08, 0.14), (1600, 1200)),
)


def _encode(image: np.ndarray, quality: int = 92) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buffer.tobytes()


def _crops(dataset: Path, limit: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Logo boxes of a gt.json set as (band label, BGR crop), at most ``limit``, one per reference photo."""
    gt = load_ground_truth(dataset)
    out: list[tuple[str, np.ndarray]] = []
    paths = [p for p in gt.database if gt.boxes.get(p)]
    for index in rng.permutation(len(paths)):
        path = paths[int(index)]
        image = cv2.imread(str(gt.root / path), cv2.IMREAD_COLOR)
        if image is None:
            continue
        x1, y1, x2, y2 = (round(v) for v in gt.boxes[path][0])
        crop = image[max(0, y1) : y2, max(0, x1) : x2]
        if min(crop.shape[:2]) < 48:
            continue
        out.append((f"crop-{gt.labels.get(path, 'x')}-{Path(path).stem}", crop))
        if len(out) >= limit:
            break
    return out


def _backgrounds(folder: Path | None) -> list[np.ndarray]:
    if folder is None:
        return []
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in files[:200]]
    return [im for im in images if im is not None]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    inter = cv2.intersectConvexConvex(a, b)[0]
    union = cv2.contourArea(a) + cv2.contourArea(b) - inter
    return float(inter / union) if union > 0 else 0.0


def build_photos(
    references: list[tuple[str, np.ndarray]], strangers: list[np.ndarray], backgrounds: list[np.ndarray], seed: int
) -> list[dict[str, Any]]:
    """Every (reference, variant) photo and the no-logo photos, each with its truth."""
    photos: list[dict[str, Any]] = []
    for v, (variant, inverted, folds, media, scale, size) in enumerate(VARIANTS):
        for r, (band, image) in enumerate(references):
            rng = np.random.default_rng([seed, 1, v, r])
            style = synth.MerchStyle(inverted=inverted, folds=folds, medium=str(rng.choice(media)),
                                     print_scale=scale, size=size)  # fmt: skip
            background = backgrounds[int(rng.integers(len(backgrounds)))] if backgrounds else None
            photo, quad = synth.draw_merch_photo(image, rng, style, background=background)
            photos.append({"variant": variant, "band": band, "medium": style.medium, "quad": quad,
                           "bytes": _encode(photo)})  # fmt: skip
    for n in range(len(references)):
        rng = np.random.default_rng([seed, 2, n])
        stranger = strangers[n % len(strangers)] if n % 2 == 0 and strangers else None
        style = synth.MerchStyle(inverted=bool(rng.random() < 0.5), folds=float(rng.uniform(0, 1)),
                                 medium=str(rng.choice(synth.MERCH_MEDIA)))  # fmt: skip
        background = backgrounds[int(rng.integers(len(backgrounds)))] if backgrounds else None
        photo, _ = synth.draw_merch_photo(stranger, rng, style, background=background)
        photos.append({"variant": "no logo", "band": None, "medium": style.medium, "quad": None,
                       "bytes": _encode(photo)})  # fmt: skip
    return photos


def identify_all(
    engine: Engine, photos: list[dict[str, Any]], label: str, *, quiet: bool = False
) -> list[dict[str, Any]]:
    outcomes = []
    for photo in tqdm(photos, desc=f"identify ({label})", file=sys.stderr, unit="photo", disable=quiet):
        started = time.perf_counter()
        result = engine.identify(photo["bytes"])
        seconds = time.perf_counter() - started
        best = result.objects[0].best if result.objects else None
        iou = None
        if best is not None and photo["quad"] is not None:  # both in the photo's own pixels
            iou = _iou(np.array(best.outline, np.float32), photo["quad"])
        outcomes.append(
            {
                "variant": photo["variant"],
                "found": best is not None,
                "correct": best is not None and best.band_id == photo["band"],
                "inverted": bool(best.inverted) if best is not None else False,
                "iou": iou,
                "seconds": seconds,
            }
        )
    return outcomes


def identify_interleaved(engines: dict[str, Engine], photos: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """:func:`identify_all` for several engines, each photo by every engine in turn."""
    outcomes: dict[str, list[dict[str, Any]]] = {label: [] for label in engines}
    for photo in tqdm(photos, desc=f"identify ({', '.join(engines)})", file=sys.stderr, unit="photo"):
        for label, engine in engines.items():
            outcomes[label] += identify_all(engine, [photo], label, quiet=True)
    return outcomes


def _parse_compare(text: str) -> tuple[str, dict[str, dict[str, str]]]:
    """``LABEL:SECTION.FIELD=VALUE,...`` -> (label, {section: {field: value}})."""
    label, _, settings = text.partition(":")
    changes: dict[str, dict[str, str]] = {}
    for item in filter(None, (part.strip() for part in settings.split(","))):
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not (label and section and name and value):
            raise SystemExit(f"--compare {text!r}: expected LABEL:SECTION.FIELD=VALUE[,...]")
        changes.setdefault(section, {})[name] = value
    return label, changes


def args_compare_text(compared: dict[str, dict[str, dict[str, str]]]) -> dict[str, list[str]]:
    return {label: [f"{s}.{f}={v}" for s, fields in c.items() for f, v in fields.items()]
            for label, c in compared.items()}  # fmt: skip


def summarise(outcomes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for variant in [v[0] for v in VARIANTS] + ["no logo"]:
        mine = [o for o in outcomes if o["variant"] == variant]
        if not mine:
            continue
        ious = [o["iou"] for o in mine if o["correct"] and o["iou"] is not None]
        rows[variant] = {
            "photos": len(mine),
            "top1": sum(o["correct"] for o in mine) / len(mine),
            "false_accepts": sum(o["found"] for o in mine) if variant == "no logo" else None,
            "found_inverted": sum(o["correct"] and o["inverted"] for o in mine),
            "outline_iou": float(np.median(ious)) if ious else None,
            "p50_s": float(np.median([o["seconds"] for o in mine])),
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logos", type=int, default=40, help="drawn logos in the catalog")
    parser.add_argument("--crops", type=Path, help="a gt.json set whose logo boxes are printed too")
    parser.add_argument("--max-crops", type=int, default=100)
    parser.add_argument("--backgrounds", type=Path, help="a folder of photos to stage the items in")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--inverted-features",
        default="",
        help="comma-separated features.query_inverted_features to compare (default: the configured one); 0 is added",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL:SECTION.FIELD=VALUE[,...]",
        help="instead of the inverted-features columns: the defaults and this setting beside them, same "
        "index and photos (repeatable), e.g. guided:search.guided_neighbours=2",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    bands = synth.make_bands(args.logos + 20, seed=args.seed + 100)
    references = [(b.band_id, synth.draw_logo(b.name, np.random.default_rng([args.seed, 0, i])))
                  for i, b in enumerate(bands[: args.logos])]  # fmt: skip
    # Prints that are not in the catalog: other bands' album art (drawn logos share taglines such as
    # "NO MERCY" and sigil shapes by construction, so another drawn logo is not a stranger to them).
    strangers = [
        synth.draw_album_cover(b.albums[0].title, b.name, np.random.default_rng([args.seed, 3, i]), size=480)
        for i, b in enumerate(bands[args.logos :])
    ]
    if args.crops:
        references += _crops(args.crops, args.max_crops, rng)
    backgrounds = _backgrounds(args.backgrounds)
    photos = build_photos(references, strangers, backgrounds, args.seed)
    configured = load_config().features.query_inverted_features
    asked = [int(v) for v in args.inverted_features.split(",") if v.strip()] or [configured]
    settings: list[Any] = list(dict.fromkeys([*asked, 0]))
    compared = dict(_parse_compare(text) for text in args.compare)
    if compared:
        settings = ["defaults", *compared]

    with tempfile.TemporaryDirectory(prefix="bench-merch-") as tmp:
        where = {"index_dir": f"{tmp}/index", "catalog_url": f"{tmp}/catalog.db"}
        config: EngineConfig = load_config(overrides=where)
        engine = Engine(config)
        engine.catalog.upsert_bands(Band(band_id=band, name=band) for band, _ in references)
        items = [IngestItem(f"{band}.png", "logo", band, data=cv2.imencode(".png", image)[1].tobytes())
                 for band, image in references]  # fmt: skip
        with tqdm(total=len(items), desc="ingest", file=sys.stderr) as bar:
            engine.ingest(items, progress=lambda _o: bar.update(1))
        engine.close()
        results: dict[str, Any] = {}
        # Interleaved photo by photo when comparing settings, so that a shared machine's load falls
        # on every column alike.
        if compared:
            # No descriptor cache: each engine encodes each photo itself, so the times compare.
            uncached: dict[str, Any] = {**where, "cache": {"url": ""}}
            engines = {"defaults": Engine(load_config(overrides=uncached))}
            for label, changes in compared.items():  # the configuration's own parsing: typed, checked
                try:
                    engines[label] = Engine(load_config(overrides={**uncached, **changes, "cache": {"url": ""}}))
                except ConfigError as exc:
                    raise SystemExit(f"--compare {label}: {exc}") from None
            try:
                outcomes = identify_interleaved(engines, photos)
            finally:
                for run in engines.values():
                    run.close()
            results = {label: summarise(rows) for label, rows in outcomes.items()}
        for twins in [] if compared else settings:
            features = dataclasses.replace(config.features, query_inverted_features=twins)
            with Engine(config.replace(features=features)) as run:
                results[str(twins)] = summarise(identify_all(run, photos, f"{twins} inverted features"))

    columns = (
        "settings: " + "; ".join(f"{k} = {', '.join(v)}" for k, v in args_compare_text(compared).items())
        if compared
        else "features.query_inverted_features (0 = the photo as photographed only)"
    )
    print(f"merch benchmark: {len(references)} logos ({args.logos} drawn, {len(references) - args.logos} crops), "
          f"backgrounds {'photos of ' + str(args.backgrounds) if backgrounds else 'drawn'}, seed {args.seed}; "
          f"columns by {columns}")  # fmt: skip
    head = ["variant", "photos"]
    head += [f"top-1 @{t}" for t in settings] + [f"p50 s @{t}" for t in settings]
    head += [f"found inverted @{settings[0]}", f"outline IoU @{settings[0]}"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    first = results[str(settings[0])]
    plain = first["plain"]["top1"] or 1.0
    for variant, row in first.items():
        cells = [variant, str(row["photos"])]
        for t in settings:
            other = results[str(t)][variant]
            if variant == "no logo":
                cells.append(f"{other['false_accepts']} false accepts")
            elif t == settings[0] or compared:  # each setting against its own plain prints
                own = (results[str(t)]["plain"]["top1"] or 1.0) if compared else plain
                cells.append(f"{other['top1']:.3f} ({other['top1'] / own:.2f}x plain)")
            else:
                cells.append(f"{other['top1']:.3f}")
        cells += [f"{results[str(t)][variant]['p50_s']:.3f}" for t in settings]
        cells += [str(row["found_inverted"]), "-" if row["outline_iou"] is None else f"{row['outline_iou']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
