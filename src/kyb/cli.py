"""``kyb``: the embedded command line (ingest, identify, eval, duplicates, demo, codebook, catalog, db, reindex, stats).

Every command works on one index folder and one catalog (``--index-dir``, ``--catalog`` or the config
file / ``KYB_*`` variables). Output is for people, or with ``--json`` for programs (``kyb identify``
writes JSON Lines always: one object per photo as soon as it is done). Exit codes are the table
:data:`kyb.errors.EXIT_CODE_MEANINGS` (``kyb --help`` prints it); every failure prints one line on
stderr, and whatever was already answered stays printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from kyb import __version__
from kyb.errors import (
    EXIT_CODE_MEANINGS,
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_PARTIAL,
    GRPC_STATUS,
    InvalidRequest,
    KybError,
    NotFound,
    NotReady,
    lookup,
)

__all__ = ["main"]

log = logging.getLogger("kyb")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (``error: ...``), exit code 2 like any bad request."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_CODES[InvalidRequest], f"error: {self.prog}: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------- helpers
def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _progress(total: int | None, desc: str, unit: str = "img") -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=True,
                disable=None)  # fmt: skip


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Prints ``data`` as one JSON line with ``--json``, else ``text`` for a person."""
    if getattr(args, "json", False):
        print(json.dumps(data, ensure_ascii=False), flush=True)
    else:
        print(text, flush=True)


def _exit_code(error: BaseException) -> int:
    return int(lookup(EXIT_CODES, error))


def _error_record(error: KybError) -> dict[str, str]:
    return {"code": str(lookup(GRPC_STATUS, error)), "message": str(error)}


def _config(args: argparse.Namespace) -> Any:
    from kyb.config import load_config

    overrides = {
        "index_dir": args.index_dir,
        "catalog_url": args.catalog,
        "detector.weights": getattr(args, "detector", None),
    }
    overrides.update(getattr(args, "overrides", {}) or {})
    return load_config(args.config or os.environ.get("KYB_CONFIG"), env=os.environ, overrides=overrides)


def _engine(args: argparse.Namespace) -> Any:
    from kyb.engine import Engine

    return Engine(_config(args))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "band"


def _slice(text: str) -> tuple[int, int]:
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a slice is K/N (e.g. 3/8), not {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"slice {text}: needs 0 <= K < N")
    return k, n


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _parse_box(text: str) -> tuple[float, float, float, float]:
    from kyb.encoder import parse_box

    try:
        return parse_box(text)
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _drawing(text: str) -> Path:
    """A --draw target: a file name whose suffix says the image type (OpenCV picks its writer by it)."""
    path = Path(text)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise argparse.ArgumentTypeError(f"{text!r} needs an image suffix ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return path


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {value:g}")
    return value


# ---------------------------------------------------------------------------- ingest
def _folder_items(folder: Path, kind: str | None) -> tuple[list[Any], list[Any]]:
    """Images under ``folder``: the band is the first sub-folder's name (or the file name at top level);
    ``*logo*`` files are logos, the rest album covers (or ``--kind``)."""
    from kyb.catalog import Album, Band
    from kyb.ingest import IngestItem

    items: list[IngestItem] = []
    bands: dict[str, Band] = {}
    albums: dict[str, Album] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if path.suffix.lower() not in IMAGE_SUFFIXES or any(part.startswith(".") for part in relative.parts):
            continue
        band_name = relative.parts[0] if len(relative.parts) > 1 else path.stem
        band_id = _slug(band_name)
        bands.setdefault(band_id, Band(band_id=band_id, name=band_name))
        item_kind = kind or ("logo" if "logo" in path.stem.lower() else "album_cover")
        album_id = None
        if item_kind == "album_cover" and len(relative.parts) > 1:
            album_id = f"{band_id}/{_slug(path.stem)}"
            albums.setdefault(album_id, Album(album_id=album_id, band_id=band_id, title=path.stem))
        items.append(IngestItem(source=str(path), kind=item_kind, band_id=band_id, album_id=album_id))
    return items, [*bands.values(), *albums.values()]


def _collect(engine: Any, paths: Sequence[Path], kind: str | None) -> tuple[list[Any], int]:
    """Ingest items from folders and catalog files; catalog metadata is upserted on the way."""
    from kyb.catalog import Album, Band, import_catalog
    from kyb.ingest import IngestItem

    items: list[Any] = []
    row_errors = 0
    for path in paths:
        if path.is_dir():
            catalog_file = next((path / n for n in ("catalog.json", "catalog.csv") if (path / n).exists()), None)
            if catalog_file is None:
                found, metadata = _folder_items(path, kind)
                engine.catalog.upsert_bands([m for m in metadata if isinstance(m, Band)])
                engine.catalog.upsert_albums([m for m in metadata if isinstance(m, Album)])
                items.extend(found)
                continue
            path = catalog_file
        if not path.exists():
            raise InvalidRequest(f"{path}: no such file or folder")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            band_id = _slug(path.stem)
            engine.catalog.upsert_band(Band(band_id=band_id, name=path.stem))
            items.append(IngestItem(str(path), kind or "album_cover", band_id))
            continue
        report = import_catalog(engine.catalog, path)
        for error in report.errors:
            print(f"warning: {error}", file=sys.stderr)
        row_errors += len(report.errors)
        log.info("%s: %d bands, %d albums, %d references", path, report.bands_upserted,
                 report.albums_upserted, len(report.references))  # fmt: skip
        items.extend(
            IngestItem(e.image_path, e.kind, e.band_id, e.album_id, tuple(e.regions)) for e in report.references
        )
    return items, row_errors


def cmd_ingest(args: argparse.Namespace) -> int:
    engine = _engine(args)
    bands_before = engine.catalog.band_stamp()
    items, row_errors = _collect(engine, [Path(p) for p in args.paths], args.kind)
    if args.slice is not None:  # one pod's share of a cluster build: every n-th item from the k-th
        k, n = args.slice
        items = items[k::n]
    # A catalog that is searched by meaning keeps every band embedded; one that is not stays as it was.
    if engine.catalog.band_stamp() != bands_before and engine.catalog.band_vector_models():
        _embed_bands(engine)
    if not items:
        print("error: nothing to ingest (no images found)", file=sys.stderr)
        return EXIT_PARTIAL if row_errors else EXIT_CODES[InvalidRequest]
    counts: dict[str, int] = {}
    failures: list[dict[str, str]] = []
    started = time.perf_counter()
    with _progress(len(items), "ingest") as bar:

        def tick(outcome: Any) -> None:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
            if outcome.status == "failed":
                failures.append({"source": outcome.source, "message": outcome.message})
                bar.write(f"failed: {outcome.source}: {outcome.message}", file=sys.stderr)
            bar.update(1)

        engine.ingest(items, progress=tick, processes=args.workers, save_every=args.save_every)
    elapsed = time.perf_counter() - started
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    stats = engine.index.stats()
    report = {
        "items": len(items),
        **{status: counts.get(status, 0) for status in ("added", "replaced", "unchanged", "failed")},
        "failures": failures,
        "bad_catalog_rows": row_errors,
        "elapsed_s": round(elapsed, 3),
        "workers": args.workers,
        "references_per_s": round(len(items) / elapsed, 2) if elapsed > 0 else None,
        "index_references": stats["references"],
        "bytes_per_reference": round(stats["bytes_per_reference"]),
    }
    _emit(args, report, f"ingested {len(items)} images in {elapsed:.1f} s: {summary}; index holds "
          f"{stats['references']} references ({stats['bytes_per_reference']:.0f} bytes each)")  # fmt: skip
    if counts.get("failed", 0) == len(items):
        return EXIT_CODES[InvalidRequest]
    return EXIT_PARTIAL if counts.get("failed") or row_errors else 0


def cmd_merge_index(args: argparse.Namespace) -> int:
    from kyb.index import ReferenceIndex, has_index, writer_lock

    config = _config(args)
    into = Path(args.into)
    counts = {"added": 0, "replaced": 0, "unchanged": 0}
    started = time.perf_counter()
    with writer_lock(into):
        index = ReferenceIndex.load(into, config.search) if has_index(into) else None
        for source in args.sources:
            other = ReferenceIndex.load(Path(source), config.search)
            if index is None:
                index = ReferenceIndex.empty_like(other, config.search, into)
            for outcome in index.merge(other):
                counts[outcome] += 1
        assert index is not None
        index.save(into)
    report = {"into": str(into), "sources": len(args.sources), **counts, "references": len(index),
              "elapsed_s": round(time.perf_counter() - started, 3)}  # fmt: skip
    _emit(args, report, f"merged {len(args.sources)} index folder(s) into {into}: {counts['added']} added, "
          f"{counts['replaced']} replaced, {counts['unchanged']} unchanged; {len(index)} references")  # fmt: skip
    return 0


# ---------------------------------------------------------------------------- identify
def _draw(photo: Path, answer: dict[str, Any], out: Path) -> None:
    """Writes ``photo`` with each object's outline and name (``answer`` as ``IdentifyResult.to_dict()``)."""
    import cv2
    import numpy as np

    from kyb.config import ImageLimits
    from kyb.imageio import decode_image

    decoded = decode_image(photo.read_bytes(), ImageLimits())
    canvas = cv2.cvtColor(decoded.rgb, cv2.COLOR_RGB2BGR)
    thickness = max(2, round(max(canvas.shape[:2]) / 300))
    for number, obj in enumerate(answer.get("objects", []), start=1):
        outline = np.array(obj["outline"], dtype=np.float32).round().astype(np.int32)
        cv2.polylines(canvas, [outline], True, (0, 230, 0), thickness, cv2.LINE_AA)
        name = (obj.get("band") or {}).get("name") or obj["matches"][0]["reference_id"]
        title = (obj.get("album") or {}).get("title")
        label = f"{number}. {name}" + (f" - {title}" if title else "") + f" ({obj['inliers']})"
        x, y = int(outline[:, 0].min()), max(20, int(outline[:, 1].min()) - 8)
        scale = max(0.5, max(canvas.shape[:2]) / 1600)
        cv2.putText(canvas, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(canvas, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        written = cv2.imwrite(str(out), canvas)
    except (OSError, cv2.error) as exc:
        raise InvalidRequest(f"cannot write {out}: {getattr(exc, 'strerror', None) or exc}") from None
    if not written:
        raise InvalidRequest(f"cannot write {out}")


def _identifier(args: argparse.Namespace) -> Any:
    """A function bytes -> answer dict: the embedded engine, or a gateway with ``--gateway``."""
    if args.gateway:
        from kyb.client import GatewayClient

        client = GatewayClient(args.gateway, args.token or os.environ.get("KYB_TOKEN"), timeout=args.timeout)
        return lambda data: client.identify(data, crop=args.box)
    engine = _engine(args)
    engine.detector = _embedded_detector(engine.config.detector, args)

    def identify(data: bytes) -> dict[str, Any]:
        result = engine.identify(data, box=args.box)
        band_ids = [obj.best.band.band_id for obj in result.objects if obj.best.band is not None]
        if band_ids:
            search = _band_search_without_model(engine)
            similar = search.similar_many(band_ids) if search is not None else {}
            for obj in result.objects:
                if obj.best.band is not None:
                    obj.similar_bands = similar.get(obj.best.band.band_id, [])
        answer: dict[str, Any] = result.to_dict()
        return answer

    return identify


def _embedded_detector(config: Any, args: argparse.Namespace) -> Any:
    """The detector ``[detector] weights`` / ``KYB_DETECTOR__WEIGHTS`` / ``--detector`` name (checked by
    sha256), or None: the whole photo is one region."""
    if config.weights is None:
        return None
    from kyb.detection import Detector

    sha256 = "" if getattr(args, "detector", None) else config.sha256  # a path on the command line pins itself
    return Detector.from_config(config, sha256=sha256)


def _identify_one(identify: Any, photo: Path) -> dict[str, Any]:
    """``{"photo", ...answer}``; a KybError for this photo's failure (an unreadable file included)."""
    try:
        data = photo.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"{photo}: {exc.strerror or exc}") from None
    return {"photo": str(photo), **identify(data)}


def cmd_identify(args: argparse.Namespace) -> int:
    """One JSON line per photo, written (and flushed) as soon as that photo is done, so a long run
    can be read as it goes and an error that ends it keeps every answer before it; ``--json-array``
    prints one array at the end instead (also when the run ends early)."""
    identify = _identifier(args)
    collected: list[dict[str, Any]] = []
    failed: dict[str, int] = {}  # photo -> exit code of its failure

    def write(record: dict[str, Any]) -> None:
        if args.json_array:
            collected.append(record)
        else:
            print(json.dumps(record, ensure_ascii=False), flush=True)

    def fail(photo: Path, exc: KybError) -> None:
        failed[str(photo)] = _exit_code(exc)
        message = str(exc) if str(exc).startswith(str(photo)) else f"{photo}: {exc}"
        print(f"error: {_one_line(message)}", file=sys.stderr, flush=True)

    try:
        for i, name in enumerate(args.photos):
            photo = Path(name)
            try:
                answer = _identify_one(identify, photo)
            except KybError as exc:
                fail(photo, exc)
                write({"photo": str(photo), "error": _error_record(exc)})
                continue
            write(answer)
            if args.draw is not None:
                target = args.draw
                if len(args.photos) > 1:
                    target = target.with_name(f"{target.stem}-{i}{target.suffix}")
                try:
                    _draw(photo, answer, target)
                except KybError as exc:
                    fail(photo, exc)
                else:
                    log.info("drew %s", target)
    finally:
        if args.json_array:
            print(json.dumps(collected, indent=2, ensure_ascii=False), flush=True)
    if failed and len(failed) == len(args.photos):
        return list(failed.values())[-1]  # nothing identified: the reason's own code
    return EXIT_PARTIAL if failed else 0


# ---------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from kyb.evaluation import evaluate, index_dataset, lookalike_references
    from kyb.groundtruth import load_ground_truth, split_ground_truth

    config = _config(args)
    gt = load_ground_truth(Path(args.dataset))
    cache = Path(args.cache or os.environ.get("KYB_EVAL_CACHE") or Path.home() / ".cache" / "kyb" / "eval")
    with _progress(len(gt.database), f"index {gt.name}") as bar:
        engine, mapping = index_dataset(gt, config, cache, progress=lambda _o: bar.update(1))
    engine.detector = _embedded_detector(config.detector, args)
    with _progress(len(engine.index), f"look-alikes {gt.name}", unit="ref") as bar:
        lookalikes = lookalike_references(engine, mapping, progress=bar.update)
    asked = split_ground_truth(gt, args.split)
    n_queries = min(len(asked.queries), args.limit or len(asked.queries))
    n_distractors = min(len(asked.distractors), args.limit or len(asked.distractors))
    with _progress(n_queries + n_distractors, f"eval {gt.name} ({args.split})", unit="photo") as bar:
        report = evaluate(engine, asked, mapping, limit=args.limit, progress=bar.update, lookalikes=lookalikes)
    report.split = args.split
    if args.json:
        print(json.dumps(report.to_dict(with_queries=args.per_query), indent=2))
    else:
        print(report.table())
    return 0


# ---------------------------------------------------------------------------- duplicates
def cmd_duplicates(args: argparse.Namespace) -> int:
    from kyb.duplicates import find_duplicates
    from kyb.index import base_reference_id

    engine = _engine(args)
    if not engine.has_index():
        raise NotFound(f"no index at {engine.config.index_dir}: run `kyb ingest` first")
    index = engine.index
    with _progress(len(index), "duplicates", unit="ref") as bar:
        pairs = find_duplicates(index, engine.config.search, min_share=args.min_share, progress=bar.update)

    def describe(key: str) -> dict[str, Any]:
        reference = engine.catalog.get_reference(base_reference_id(key))
        band = engine.catalog.get_band(reference.band_id) if reference and reference.band_id else None
        return {
            "reference_id": key,
            "band": band.name if band else (reference.band_id if reference else None),
            "album_id": reference.album_id if reference else None,
            "source": reference.source if reference else None,
        }

    answer: list[dict[str, Any]] = [
        {"first": describe(p.first), "second": describe(p.second), "inliers": p.inliers, "share": p.share}
        for p in pairs
    ]
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        for item in answer:
            first, second = item["first"], item["second"]
            print(
                f"{first['reference_id']} ({first['band']}, {first['source']})  ~  "
                f"{second['reference_id']} ({second['band']}, {second['source']}): "
                f"{item['inliers']} inliers, {item['share']:.0%} of the features"
            )
        print(f"{len(pairs)} pair(s) of look-alike references among {len(index):,}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from kyb import synth
    from kyb.evaluation import evaluate, index_dataset
    from kyb.groundtruth import load_ground_truth

    folder = Path(args.dir)
    if not (folder / "gt.json").exists() or args.regenerate:
        started = time.perf_counter()
        synth.write_demo_set(folder, n_bands=args.bands, n_photos=args.photos, seed=args.seed)
        print(f"generated a sample catalog of {args.bands} fictional bands and {args.photos} photos in {folder} "
              f"({time.perf_counter() - started:.1f} s)")  # fmt: skip
    config = _config(args)
    if args.index_dir is None:
        config = config.replace(index_dir=folder / "index", catalog_url=str(folder / "catalog.db"))
    from kyb.engine import Engine

    engine = Engine(config)
    items, _ = _collect(engine, [folder / "catalog.json"], None)
    with _progress(len(items), "ingest") as bar:
        engine.ingest(items, progress=lambda _o: bar.update(1))
    gt = load_ground_truth(folder)
    names = json.loads((folder / "gt.json").read_text())["labels"]
    print()
    for query in [q["query"] for q in gt.queries] + gt.distractors:
        result = engine.identify((folder / query).read_bytes())
        found = ", ".join(
            f"{o.best.band.name if o.best.band else o.best.band_id}"
            + (f" / {o.best.album.title}" if o.best.album else " (logo)")
            + (" printed inverted" if o.best.inverted else "")
            + f" [{o.best.inliers} inliers]"
            for o in result.objects
        )
        expected = [names.get(p, p) for q in gt.queries if q["query"] == query for p in q["positives"]]
        print(f"{query}: {found or 'no band found'}")
        print(f"    expected: {'; '.join(expected) if expected else 'nothing (a photo with no band)'}")
        if args.draw:
            _draw(folder / query, result.to_dict(), folder / "drawn" / Path(query).name)
    cache = folder / "eval-cache"
    engine_eval, mapping = index_dataset(gt, config, cache)
    report = evaluate(engine_eval, gt, mapping)
    print()
    print(report.table())
    print(f"\nTry it yourself: kyb identify {folder / gt.queries[0]['query']} --index-dir {config.index_dir} "
          f"--catalog {config.catalog_url} --draw /tmp/kyb-drawn.jpg")  # fmt: skip
    engine.close()
    engine_eval.close()
    if not args.serve:
        print("In a browser: kyb demo --serve  (serves this catalog with the web page on http://localhost:8080/)")
        return 0
    _embed_bands(Engine(config))  # the page's band search finds the sample bands by meaning too
    return _serve_demo(config, args, folder)


def _serve_demo(config: Any, args: argparse.Namespace, folder: Path) -> int:
    """The sample catalog behind a gateway and the web page, in this process, until Ctrl-C."""
    from kyb.rpc import GatewayConfig, RpcConfig, ServiceConfig, WebConfig
    from kyb.rpc.cli import service_entry_point

    service = ServiceConfig(
        rpc=RpcConfig(host=args.host, grace_s=1.0),
        gateway=GatewayConfig(port=0),
        web=WebConfig(port=args.port),
        engine=config,
    )

    def announce(url: str) -> None:
        print(f"\nThe page is ready: {url}  (try the photos in {folder / 'photos'}; Ctrl-C stops it)", flush=True)

    serve_local = service_entry_point("kyb.stack", "in_process")
    return int(serve_local(service, shards=1, web=True, announce=announce))


# ---------------------------------------------------------------------------- codebook / catalog / misc
def cmd_codebook_train(args: argparse.Namespace) -> int:
    engine = _engine(args)
    items, _ = _collect(engine, [Path(p) for p in args.sources], args.kind)
    if len(items) < 2:
        print("error: a codebook needs at least 2 reference images", file=sys.stderr)
        return EXIT_CODES[InvalidRequest]
    started = time.perf_counter()
    bars: dict[str, Any] = {}

    def advance(stage: str, done: int, total: int) -> None:
        # One bar per stage (reading, each k-means, whitening, re-encoding), closed when the next starts.
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = _progress(total, stage, unit="step")
        bar = bars[stage]
        bar.total = total
        bar.update(done - bar.n)

    try:
        codebook = engine.retrain_codebook(items, progress=advance)
    finally:
        for bar in bars.values():
            bar.close()
    elapsed = time.perf_counter() - started
    report = {"codebook_version": codebook.version, "elapsed_s": round(elapsed, 3), "params": codebook.params}
    _emit(args, report, f"trained codebook {codebook.version} in {elapsed:.1f} s: {json.dumps(codebook.params)}")
    return 0


def cmd_catalog_import(args: argparse.Namespace) -> int:
    from kyb.catalog import import_catalog

    engine = _engine(args)
    report = import_catalog(engine.catalog, Path(args.file))
    for error in report.errors:
        print(f"warning: {error}", file=sys.stderr)
    data = {
        "file": args.file,
        "bands": report.bands_upserted,
        "albums": report.albums_upserted,
        "bad_rows": [str(error) for error in report.errors],
        "references_to_ingest": len(report.references),
        "elapsed_s": round(report.elapsed_s, 3),
    }
    _emit(args, data, f"{args.file}: {report.bands_upserted} bands, {report.albums_upserted} albums, "
          f"{len(report.errors)} bad rows, {len(report.references)} references to ingest "
          f"({report.elapsed_s:.2f} s)")  # fmt: skip
    if report.bands_upserted and not args.no_embed:
        _embed_bands(engine)
    return EXIT_PARTIAL if report.errors else 0


# ---------------------------------------------------------------------------- band search
def _band_folder(engine: Any) -> Path:
    from kyb.bandsearch import band_index_folder

    return band_index_folder(engine.config)


def _embed_bands(engine: Any, *, rebuild: bool = False, required: bool = False) -> bool:
    """Embed the catalog's new or changed bands and bring the band index up to date (progress bars).

    Without the model prints the one-line notice (an error when ``required``) and returns False.
    """
    from kyb.bandsearch import load_embedder, refresh_band_vectors, sync_band_index

    embedder, notice = load_embedder()
    if embedder is None:
        if required:
            raise NotReady(notice)
        print(f"notice: {notice}", file=sys.stderr)
        return False
    catalog = engine.catalog
    with _progress(catalog.count_bands(), "embed bands", unit="band") as bar:
        refreshed = refresh_band_vectors(catalog, embedder, rebuild=rebuild, progress=bar.update)
    print(refreshed.line(), file=sys.stderr)
    count, _ = catalog.band_vector_stamp(embedder.model)
    with _progress(count, "band index", unit="band") as bar:
        _index, synced = sync_band_index(catalog, _band_folder(engine), embedder.model, rebuild=rebuild,
                                         progress=bar.update)  # fmt: skip
    print(synced.line(), file=sys.stderr)
    return True


def _filters(args: argparse.Namespace) -> Any:
    from kyb.bandsearch import SearchFilters, parse_country, parse_formed, parse_status

    return SearchFilters(
        country=parse_country(args.country) if args.country else None,
        status=parse_status(args.status) if args.status else None,
        formed=parse_formed(args.formed) if args.formed else None,
    )


def cmd_catalog_embed(args: argparse.Namespace) -> int:
    _embed_bands(_engine(args), rebuild=args.rebuild, required=True)
    return 0


def cmd_catalog_search(args: argparse.Namespace) -> int:
    from kyb.bandsearch import BandSearch, check_query

    check_query(args.query, args.limit)  # bad input fails before the model loads
    filters = _filters(args)
    engine = _engine(args)
    search = BandSearch.open(engine.catalog, _band_folder(engine))
    answer = search.search(args.query, filters=filters, limit=args.limit)
    if answer.notice:
        print(f"notice: {answer.notice}", file=sys.stderr)
    elif search.missing_vectors():
        print(f"notice: {search.missing_vectors()} bands have no vector yet and are found by name only "
              "(run `kyb catalog embed`)", file=sys.stderr)  # fmt: skip
    data = answer.to_dict()
    if args.similar:
        similar = search.similar_many([hit.band.band_id for hit in answer.hits], args.similar)
        for band in data["bands"]:
            band["similar_bands"] = [s.to_dict() for s in similar.get(band["band_id"], [])]
    _print_json(args, data)
    return 0 if answer.hits else EXIT_CODES[NotFound]


def _band_search_without_model(engine: Any) -> Any:
    """The band search over the stored vectors (similar bands need no model); None when it cannot open."""
    from kyb.bandsearch import BandSearch

    try:
        return BandSearch.open(engine.catalog, _band_folder(engine), embedder=None)
    except KybError as exc:
        log.warning("no similar bands: %s", exc)
        return None


def _similar_bands(engine: Any, band_ids: list[str], limit: int = 5) -> dict[str, list[dict[str, Any]]]:
    """Similar bands as JSON from the stored vectors; {} when there is no band index."""
    search = _band_search_without_model(engine)
    if search is None:
        return {}
    return {band_id: [s.to_dict() for s in found] for band_id, found in search.similar_many(band_ids, limit).items()}


def cmd_band(args: argparse.Namespace) -> int:
    engine = _engine(args)
    band = engine.catalog.get_band(args.band_id)
    if band is None:
        matches = engine.catalog.find_bands(args.band_id, limit=10)
        if not matches:
            print(f"error: no band {args.band_id!r}", file=sys.stderr)
            return EXIT_CODES[NotFound]
        _print_json(args, [b.to_dict() for b in matches])
        return 0
    data = band.to_dict()
    data["albums"] = [a.to_dict() for a in engine.catalog.list_albums(band.band_id)]
    data["similar_bands"] = _similar_bands(engine, [band.band_id]).get(band.band_id, [])
    _print_json(args, data)
    return 0


def _print_json(args: argparse.Namespace, data: Any) -> None:
    """JSON either way: indented for a person, one line with ``--json``."""
    print(json.dumps(data, ensure_ascii=False, indent=None if args.json else 2), flush=True)


def cmd_delete(args: argparse.Namespace) -> int:
    """Deletes every id it can; an unknown id is reported and the others still go."""
    engine = _engine(args)
    results: list[dict[str, Any]] = []
    codes: list[int] = []
    for reference_id in args.reference_ids:
        try:
            engine.delete_reference(reference_id)
        except NotFound as exc:
            codes.append(_exit_code(exc))
            print(f"error: {exc}", file=sys.stderr, flush=True)
            results.append({"reference_id": reference_id, "deleted": False, "error": _error_record(exc)})
            continue
        results.append({"reference_id": reference_id, "deleted": True})
        if not args.json:
            print(f"deleted {reference_id}", flush=True)
    if args.json:
        print(json.dumps({"results": results}, ensure_ascii=False), flush=True)
    if codes and len(codes) == len(args.reference_ids):
        return codes[-1]
    return EXIT_PARTIAL if codes else 0


def cmd_stats(args: argparse.Namespace) -> int:
    engine = _engine(args)
    stats = engine.index.stats()
    stats["catalog_bands"] = engine.catalog.count_bands()
    stats["catalog_references"] = engine.catalog.count_references()
    stats.update(engine.consistency())  # an ingest that stopped half-way shows here
    if stats["catalog_without_index"] or stats["index_without_catalog"]:
        log.warning("catalog and index disagree: %d catalog rows not indexed (run the same ingest again or "
                    "kyb reindex), %d index entries without a catalog row",
                    stats["catalog_without_index"], stats["index_without_catalog"])  # fmt: skip
    _print_json(args, stats)
    return 0


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from kyb.catalog import open_catalog

    config = _config(args)
    url = config.catalog_url
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
    with open_catalog(url, migrate=False) as catalog:
        version = catalog.migrate()
    _emit(args, {"schema_version": version}, f"catalog schema version {version}")
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    engine = _engine(args)
    total = engine.catalog.count_references()
    with _progress(total, "reindex") as bar:

        def tick(outcome: Any) -> None:
            if outcome.message:
                bar.write(f"{outcome.status}: {outcome.reference_id} ({outcome.source}): {outcome.message}",
                          file=sys.stderr)  # fmt: skip
            bar.update(1)

        report = engine.reindex(progress=tick)
    where = f"generation {report['generation']}" if report["switched"] else "nothing rebuilt: the current index stays"
    if args.json:
        _emit(args, report, "")
        return EXIT_PARTIAL if report["failed"] or report["kept"] else 0
    print(f"reindexed {report['references']} catalog references in {report['elapsed_s']:.1f} s: "
          f"{report['rebuilt']} rebuilt, {report['kept']} kept from the previous generation, "
          f"{report['failed']} failed, {report['dropped']} index entries without a catalog row dropped; "
          f"{where} (codebook {report['codebook_version']})")  # fmt: skip
    return EXIT_PARTIAL if report["failed"] or report["kept"] else 0


# ---------------------------------------------------------------------------- parser
def _json_flag(
    parser: argparse.ArgumentParser, text: str = "print one JSON object instead of lines for people"
) -> None:
    parser.add_argument("--json", action="store_true", help=text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kyb",
        description="Know Your Bands: identify band logos and album covers.",
        epilog="exit codes (every error is one line on stderr):\n"
        + "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODE_MEANINGS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kyb {__version__}")
    common = _Parser(add_help=False)
    common.add_argument("--config", help="TOML config file (also KYB_CONFIG)")
    common.add_argument("--index-dir", help="index folder (default .kyb/index)")
    common.add_argument(
        "--catalog", help="catalog: SQLite path, sqlite:///... or postgresql://... (default .kyb/catalog.db)"
    )
    common.add_argument("--log-level", default=os.environ.get("KYB_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", parents=[common], help="add reference images (folders, catalog files, images)")
    p.add_argument("paths", nargs="+", help="folder, catalog.json/.csv, or image files")
    p.add_argument("--kind", choices=["logo", "album_cover"], help="kind for images without one")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="processes encoding the references; this one commits them (default: the cores)",
    )
    p.add_argument(
        "--save-every",
        type=_positive_int,
        default=5000,
        help="save the index after each this many references, so a killed ingest keeps its work (default 5000)",
    )
    p.add_argument(
        "--slice",
        type=_slice,
        help="K/N: ingest only every N-th item from the K-th (one pod of a cluster build; see merge-index)",
    )
    _json_flag(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "merge-index",
        parents=[common],
        help="merge index folders built apart (slices of one catalog) into one",
        description="Adds every reference of each SOURCE index folder to INTO (made from the first "
        "source's codebook when it does not exist) and saves it once. Slices that started from one seed "
        "index merge into exactly what one build of them all holds. Safe to run again.",
    )
    p.add_argument("into", help="the merged index folder")
    p.add_argument("sources", nargs="+", help="index folders to merge in, in order")
    _json_flag(p)
    p.set_defaults(func=cmd_merge_index)

    p = sub.add_parser("identify", parents=[common], help="find every known logo and cover in photos")
    p.add_argument("photos", nargs="+")
    p.add_argument("--box", type=_parse_box, help="search only this crop: x1,y1,x2,y2 in photo pixels")
    p.add_argument(
        "--draw", type=_drawing, help="write the photo with outlines and names to this file (.jpg, .png, .webp)"
    )
    p.add_argument(
        "--json-array", action="store_true", help="one JSON array at the end instead of a JSON line per photo"
    )
    p.add_argument("--gateway", help="ask a running gateway (HOST:PORT) instead of the embedded engine")
    p.add_argument("--token", help="bearer token for --gateway (also KYB_TOKEN)")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds for --gateway calls")
    p.add_argument("--detector", help="detector weights: search each detected region first (or KYB_DETECTOR__WEIGHTS)")
    p.set_defaults(func=cmd_identify)

    p = sub.add_parser("eval", parents=[common], help="accuracy and speed on a gt.json data set")
    p.add_argument("dataset", help="folder with gt.json (e.g. ../shared/datasets/covers)")
    p.add_argument("--limit", type=int, help="first N queries (and N distractors)")
    p.add_argument(
        "--split",
        choices=("tune", "test", "all"),
        default="all",
        help="a fixed half of the queries and distractors: choose settings on tune, report test (default all)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--per-query", action="store_true", help="with --json: every query's outcome")
    p.add_argument("--cache", help="index cache folder (default ~/.cache/kyb/eval or KYB_EVAL_CACHE)")
    p.add_argument("--detector", help="detector weights: detector-first identification (else KYB_DETECTOR__WEIGHTS)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "duplicates", parents=[common], help="references that are one picture: each verifies in the other"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.add_argument(
        "--min-share",
        type=_share,
        default=0.25,
        help="share of each reference's features the other must re-find as inliers (default 0.25)",
    )
    p.set_defaults(func=cmd_duplicates)

    p = sub.add_parser("demo", parents=[common], help="generate a sample catalog and photos, ingest, identify")
    p.add_argument("--dir", default=".kyb/demo", help="where the sample set goes (default .kyb/demo)")
    p.add_argument("--bands", type=int, default=8)
    p.add_argument("--photos", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--regenerate", action="store_true", help="draw the sample set again")
    p.add_argument("--draw", action="store_true", help="also write annotated photos to DIR/drawn/")
    p.add_argument("--serve", action="store_true", help="then serve the catalog with the web page until Ctrl-C")
    p.add_argument("--port", type=int, default=8080, help="web page port with --serve (default 8080, 0 = any)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to serve on with --serve (0.0.0.0: phones on this network)"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("codebook", help="visual codebook")
    codebook_sub = p.add_subparsers(dest="codebook_command", required=True, metavar="ACTION")
    t = codebook_sub.add_parser("train", parents=[common], help="train a codebook and re-encode the index")
    t.add_argument("sources", nargs="+", help="folders / catalog files of reference images to learn from")
    t.add_argument("--kind", choices=["logo", "album_cover"])
    _json_flag(t)
    t.set_defaults(func=cmd_codebook_train)

    p = sub.add_parser("catalog", help="band catalog")
    catalog_sub = p.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    c = catalog_sub.add_parser("import", parents=[common], help="import bands/albums from a JSON or CSV file")
    c.add_argument("file")
    _json_flag(c)
    c.set_defaults(func=cmd_catalog_import)
    c.add_argument("--no-embed", action="store_true", help="do not embed the bands for the search by meaning")
    c = catalog_sub.add_parser("band", parents=[common], help="show a band by id, or search by name")
    c.add_argument("band_id")
    _json_flag(c, "print one JSON line instead of indented JSON")
    c.set_defaults(func=cmd_band)
    c = catalog_sub.add_parser(
        "search", parents=[common], help="find bands by meaning and name, with filters (JSON, best first)"
    )
    c.add_argument("query", help='what you remember: "Swedish melodic death metal about war", a name, a typo')
    c.add_argument("--country", help="only bands from this country: ISO code (SE) or name (Sweden, Schweden)")
    c.add_argument("--status", help="only bands with this status: active, split-up, on-hold, changed-name, ...")
    c.add_argument("--formed", help="only bands formed in these years: 1990..1999, 1990.., ..1999 or 1995")
    c.add_argument("--limit", type=int, default=10, help="most bands to show (1..100, default 10)")
    c.add_argument("--similar", type=int, default=0, metavar="N", help="add the N most similar bands to each band")
    _json_flag(c, "print one JSON line instead of indented JSON")
    c.set_defaults(func=cmd_catalog_search)
    c = catalog_sub.add_parser(
        "embed", parents=[common], help="embed new or changed bands and update the band index (incremental)"
    )
    c.add_argument("--rebuild", action="store_true", help="embed every band again and rebuild the band index")
    c.set_defaults(func=cmd_catalog_embed)

    p = sub.add_parser("delete", parents=[common], help="remove references by id")
    p.add_argument("reference_ids", nargs="+")
    _json_flag(p)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("stats", parents=[common], help="index and catalog sizes")
    _json_flag(p, "print one JSON line instead of indented JSON")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("db", help="catalog database")
    db_sub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    d = db_sub.add_parser("migrate", parents=[common], help="bring the catalog schema up to date (idempotent)")
    _json_flag(d)
    d.set_defaults(func=cmd_db_migrate)

    p = sub.add_parser("reindex", parents=[common], help="rebuild the index from the catalog's reference images")
    _json_flag(p)
    p.set_defaults(func=cmd_reindex)

    for extension in entry_points(group="kyb.commands"):  # e.g. `kyb detector ...` from training/
        extension.load()(sub, common)

    try:  # the gRPC services add `kyb serve ...` (issue 4)
        from kyb.rpc.cli import add_reshard_command, add_serve_commands
    except ImportError:
        pass
    else:
        add_serve_commands(sub)
        add_reshard_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "log_level", "INFO"))
    try:
        return int(args.func(args) or 0)
    except KybError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return _exit_code(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`kyb identify ... | head -1`): nothing left to tell anyone.
        sys.stderr.close()
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: still one line and a documented code; the traceback goes to the log
        log.debug("internal error", exc_info=True)
        print(f"error: internal error: {type(exc).__name__}: {_one_line(str(exc))} (--log-level DEBUG shows where)",
              file=sys.stderr)  # fmt: skip
        return EXIT_INTERNAL


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "no message"


if __name__ == "__main__":
    sys.exit(main())
