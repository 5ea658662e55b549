"""``kyb detector scenes | train | eval``: the detector's training commands, added to ``kyb`` through
the ``kyb.commands`` entry point (serving never imports this package).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kyb.errors import InvalidRequest

__all__ = ["add_detector_commands"]


def _pair(text: str, kind: type = int) -> tuple[Any, Any]:
    a, sep, b = text.partition(",")
    if not sep:
        a, sep, b = text.partition("x")
    try:
        return kind(a), kind(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers like 3,5 or 512x384, not {text!r}") from None


def _images_of(spec: str) -> list[Path]:
    from kyb.detection import split_of
    from kyb_training.detector import parse_source

    folder, split = parse_source(spec)
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    if split is not None:
        files = [p for p in files if split_of(p.name, test_fraction=0.3) == split]
    return files


def cmd_scenes(args: argparse.Namespace) -> int:
    from kyb.detection import crop_references, drawn_references, folder_references, generate_scenes, read_annotations
    from kyb_training.detector import parse_source

    refs = drawn_references(*args.drawn, seed=args.seed) if any(args.drawn) else []
    for path in args.references:
        refs += folder_references(Path(path))
    for spec in args.crops:
        path, split = parse_source(spec)
        refs += crop_references(read_annotations(path, split=split))
    if not refs:
        raise InvalidRequest("no references: give --drawn, --references or --crops")
    backgrounds = [p for spec in args.backgrounds for p in _images_of(spec)]
    samples = generate_scenes(Path(args.out), refs, n=args.n, seed=args.seed, size=args.size, objects=args.objects,
                              backgrounds=backgrounds, fmt=args.format, balance=not args.no_balance)  # fmt: skip
    boxes = sum(len(s.boxes) for s in samples)
    print(json.dumps({"out": args.out, "scenes": len(samples), "boxes": boxes, "references": len(refs),
                      "backgrounds": len(backgrounds)}))  # fmt: skip
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from kyb_training import detector

    detector.main(args)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from kyb.detection import DetectorWeights, build_detector, set_input_size
    from kyb_training.detector import _load
    from kyb_training.detector_engine import DetectionDataset, evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    weights = DetectorWeights.load(args.weights, sha256=args.sha256)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_detector(weights=weights).to(device)
    input_size, _ = set_input_size(model, weights, args.input_size)
    rows = {}
    for spec in args.sources:
        samples = _load([spec], args.test_fraction)
        if not samples:
            raise InvalidRequest(f"{spec}: no images")
        data = DetectionDataset(samples, weights.categories, max_side=args.max_image_side, augment=False)
        rows[spec] = {"images": len(samples), "boxes": sum(len(s.boxes) for s in samples),
                      **evaluate(model, data, weights.categories, device)}  # fmt: skip
    if args.json:
        print(json.dumps({"weights": weights.version, "input_size": input_size, "results": rows}, indent=2))
        return 0
    print(f"detector {weights.version} (input {input_size} px)")
    print(f"{'source':<48} {'images':>6} {'class':<12} {'AP50':>6} {'AP50:95':>8}")
    for spec, r in rows.items():
        for cls in ["", *[c for c in weights.categories[1:] if f"AP50/{c}" in r]]:
            key = f"/{cls}" if cls else ""
            ap50, ap = r["AP50" + key], r["AP50:95" + key]
            print(f"{spec[-48:]:<48} {r['images']:>6} {cls or 'all':<12} {ap50:>6.3f} {ap:>8.3f}")
    return 0


def add_detector_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Adds ``kyb detector ...`` to the ``kyb`` sub-command parser ``sub``."""
    from kyb_training.detector import get_args_parser

    p = sub.add_parser("detector", help="the logo / album-cover detector: make scenes, train, evaluate")
    det = p.add_subparsers(dest="detector_command", required=True, metavar="ACTION")

    s = det.add_parser("scenes", parents=[common], help="generate annotated training scenes (COCO JSON or VOC XML)")
    s.add_argument("out", help="output folder (images/ + annotations.json or annotations/)")
    s.add_argument("--n", type=int, default=1000, help="scenes to write")
    s.add_argument("--seed", type=int, default=0, help="a different seed draws different references and scenes")
    s.add_argument(
        "--drawn",
        type=_pair,
        default=(200, 200),
        metavar="LOGOS,COVERS",
        help="drawn references (kyb.synth), default 200,200; 0,0 for none",
    )
    s.add_argument(
        "--references",
        action="append",
        default=[],
        metavar="PATH",
        help="catalog.json or a folder with logo/ and album_cover/ images (repeatable)",
    )
    s.add_argument(
        "--crops",
        action="append",
        default=[],
        metavar="SOURCE[@train|@test]",
        help="annotated photos whose boxes become references (repeatable)",
    )
    s.add_argument(
        "--backgrounds",
        action="append",
        default=[],
        metavar="DIR[@train|@test]",
        help="folder of photos used (half the time) as backgrounds; @train/@test keeps 70%%/30%%",
    )
    s.add_argument("--size", type=_pair, default=(512, 384), metavar="WxH")
    s.add_argument("--objects", type=_pair, default=(0, 5), metavar="MIN,MAX", help="objects per scene")
    s.add_argument("--format", choices=["coco", "voc"], default="coco")
    s.add_argument("--no-balance", action="store_true",
                   help="pick references uniformly (default: each category equally often)")  # fmt: skip
    s.set_defaults(func=cmd_scenes)

    t = det.add_parser("train", parents=[common, get_args_parser(add_help=False)], help="train the detector")
    t.set_defaults(func=cmd_train)

    e = det.add_parser("eval", parents=[common], help="AP50 and AP50:95 per class (pycocotools)")
    e.add_argument("weights", help="detector.pt (with its .json manifest)")
    e.add_argument("sources", nargs="+", metavar="SOURCE[@train|@test]", help="annotated images")
    e.add_argument("--sha256", default="", help="expected sha256 of the weights")
    e.add_argument("--test-fraction", type=float, default=0.2)
    e.add_argument("--max-image-side", type=int, default=1024)
    e.add_argument("--input-size", type=int, default=0,
                   help="network input (shorter side, px) at inference; 0 = as trained")  # fmt: skip
    e.add_argument("--threads", type=int, default=0)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)
