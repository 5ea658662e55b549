"""Train the logo / album-cover detector (torchvision references/detection/train.py habits).

    python -m kyb_training.detector --train scenes/train --val scenes/val --out runs/det   # or: kyb detector train ...

Data: ``--train`` / ``--val`` take any source :func:`kyb.detection.read_annotations` reads (a generated
scene folder, COCO JSON, a VOC folder, a kyb gt.json), each optionally suffixed ``@train`` or ``@test``
to keep one part of a stable hash split (``../shared/datasets/logos/gt.json@train``). Every epoch ends
with a checkpoint (``OUT/checkpoint.pt``: model, optimiser, schedule, epoch; ``--resume`` continues from
it) and, with ``--val``, a COCO evaluation; the final weights are exported with their manifest
(``OUT/detector.pt`` + ``.json``: sha256, categories, arch, this command as the recipe, metrics).
Seeds are fixed (``--seed``); CUDA is used when present and mixed precision on it (``--no-amp`` to
turn off). Serving never imports this module.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["get_args_parser", "main", "parse_source", "recipe_of"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train the logo / album-cover detector.", add_help=add_help)
    p.add_argument(
        "--train", action="append", required=True, metavar="SOURCE[@train|@test]", help="training data (repeatable)"
    )
    p.add_argument(
        "--val",
        action="append",
        default=[],
        metavar="SOURCE[@train|@test]",
        help="evaluated after every epoch (repeatable)",
    )
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint, log, final weights")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--iters-per-epoch", type=int, default=0, help="cap steps per epoch (0 = whole data set)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    p.add_argument("--backbone", default="mobilenet_v3_large", choices=["mobilenet_v3_large", "mobilenet_v3_small",
                                                                       "resnet18"])  # fmt: skip
    p.add_argument("--min-size", type=int, default=320, help="shorter side at inference (px)")
    p.add_argument("--max-size", type=int, default=427, help="longer-side cap at inference (px)")
    p.add_argument("--fpn-channels", type=int, default=64)
    p.add_argument("--box-head-width", type=int, default=256)
    p.add_argument(
        "--backbone-weights",
        type=Path,
        default=None,
        help="local torchvision ImageNet state dict for the backbone (else random init)",
    )
    p.add_argument("--backbone-sha256", default="", help="expected sha256 of --backbone-weights")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of a source that @test selects")
    p.add_argument("--max-image-side", type=int, default=640, help="images are shrunk to this before training")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--time-limit", type=float, default=0.0,
                   help="stop (checkpointed) after this many minutes of training, resumed runs included")  # fmt: skip
    return p


def parse_source(spec: str) -> tuple[Path, str | None]:
    """``PATH`` or ``PATH@train`` / ``PATH@test``."""
    path, sep, split = spec.rpartition("@")
    if sep and split in ("train", "test"):
        return Path(path), split
    return Path(spec), None


def recipe_of(args: argparse.Namespace) -> str:
    """The command that reproduces ``args``: every option that differs from its default (resume included)."""
    words = ["python", "-m", "kyb_training.detector"]
    for action in get_args_parser(add_help=False)._actions:
        if not action.option_strings or not hasattr(args, action.dest):
            continue
        value, flag = getattr(args, action.dest), action.option_strings[0]
        if value == action.default:
            continue
        if isinstance(value, bool):
            words.append(flag)
        elif isinstance(value, list):
            for v in value:
                words += [flag, str(v)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def _load(specs: list[str], test_fraction: float) -> list[Any]:
    from kyb.detection import read_annotations

    samples = []
    for spec in specs:
        path, split = parse_source(spec)
        samples += read_annotations(path, split=split, test_fraction=test_fraction)
    return samples


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the training described by ``args``; returns the last epoch's losses and metrics."""
    import numpy as np
    import torch

    from kyb.detection import CATEGORIES, DetectorArch, WeightsFile, build_detector, save_weights
    from kyb_training.detector_engine import DetectionDataset, collate, evaluate, train_one_epoch

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    train_samples = _load(args.train, args.test_fraction)
    val_sets = {spec: _load([spec], args.test_fraction) for spec in args.val}
    if not train_samples:
        raise SystemExit("no training images in " + ", ".join(args.train))
    arch = DetectorArch(backbone=args.backbone, min_size=args.min_size, max_size=args.max_size,
                        fpn_channels=args.fpn_channels, box_head_width=args.box_head_width)  # fmt: skip
    backbone = WeightsFile(args.backbone_weights, args.backbone_sha256) if args.backbone_weights else None
    # Multi-scale training: torchvision's transform picks one shorter side per batch from this tuple.
    scales = tuple(int(args.min_size * f) for f in (0.8, 0.9, 1.0, 1.1, 1.2))
    model = build_detector(arch=arch, backbone_weights=backbone, min_size=scales,
                           max_size=int(args.max_size * 1.2)).to(device)  # fmt: skip
    train_set = DetectionDataset(train_samples, CATEGORIES, max_side=args.max_image_side, augment=True, seed=args.seed)
    val_sets = {spec: DetectionDataset(samples, CATEGORIES, max_side=args.max_image_side, augment=False)
                for spec, samples in val_sets.items()}  # fmt: skip
    gen = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True, generator=gen,
                                         collate_fn=collate, num_workers=args.workers,
                                         persistent_workers=False)  # fmt: skip
    steps_per_epoch = len(loader) if not args.iters_per_epoch else min(len(loader), args.iters_per_epoch)
    total_steps = max(1, steps_per_epoch * args.epochs)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)

    budget_s = args.time_limit * 60 if args.time_limit else 0.0
    t0 = time.monotonic()
    spent_before = 0.0  # training seconds of the runs this one resumes (read from the checkpoint)

    def used_s() -> float:
        return spent_before + time.monotonic() - t0

    def lr_at(step: int) -> float:
        """Linear warm-up, then cosine down to 5% of the peak. Progress is the larger of steps done and,
        with --time-limit, time used (resumed runs included), so a run cut short by its time limit
        still ends annealed, and a resumed one goes on down the same curve instead of restarting it."""
        if step < args.warmup:
            return (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, total_steps - args.warmup)
        if budget_s:
            t = max(t, used_s() / budget_s)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and not args.no_amp else None
    start_epoch, history = 0, []
    ckpt_path = out / "checkpoint.pt"
    if args.resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, history = ckpt["epoch"] + 1, ckpt["history"]
        spent_before = float(ckpt.get("seconds", sum(h.get("seconds", 0.0) for h in history)))
        if ckpt.get("partial"):  # stopped mid-epoch by --time-limit: redo that epoch's remainder as a whole one
            start_epoch -= 1
        print(f"resumed from {ckpt_path} at epoch {start_epoch}", file=sys.stderr)
    recipe = recipe_of(args)
    deadline = t0 + budget_s - spent_before if budget_s else None
    last: dict[str, Any] = {}
    log = open(out / "log.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - kept open across epochs
    try:
        for epoch in range(start_epoch, args.epochs):
            train_set.epoch = epoch
            te = time.monotonic()
            losses = train_one_epoch(model, optimizer, scheduler, loader, device, epoch=epoch, scaler=scaler,
                                     max_iters=args.iters_per_epoch or None, deadline=deadline,
                                     clock=time.monotonic)  # fmt: skip
            partial = deadline is not None and time.monotonic() > deadline
            # One evaluation per --val source (first source's keys unprefixed, the others "<source>:AP50...").
            metrics: dict[str, float] = {}
            for k, (spec, vs) in enumerate(val_sets.items()):
                prefix = "" if k == 0 else f"{spec}:"
                metrics |= {prefix + name: round(v, 4) for name, v in evaluate(model, vs, CATEGORIES, device).items()}
            last = {"epoch": epoch, "seconds": round(time.monotonic() - te, 1), **losses, **metrics}
            history.append(last)
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history,
                        "partial": partial, "seconds": used_s(), "args": vars(args) | {"out": str(out)}},
                       ckpt_path.with_suffix(".tmp"))  # fmt: skip
            ckpt_path.with_suffix(".tmp").replace(ckpt_path)
            log.write(json.dumps(last) + "\n")
            log.flush()
            print(json.dumps(last), file=sys.stderr, flush=True)
            if partial:
                print(f"time limit reached ({ckpt_path}): raise --time-limit and --resume to go on", file=sys.stderr)
                break
    finally:
        log.close()
    elapsed = sum(h.get("seconds", 0.0) for h in history)
    final = {k: v for k, v in last.items() if "AP" in k}
    weights = save_weights(out / "detector.pt", model, arch=arch, categories=CATEGORIES, recipe=recipe,
                           metrics={**final, "train_seconds": round(elapsed, 1), "epochs": len(history),
                                    "device": str(device)})  # fmt: skip
    print(f"weights: {weights.path} sha256 {weights.sha256}", file=sys.stderr)
    return last


if __name__ == "__main__":
    main(get_args_parser().parse_args())
