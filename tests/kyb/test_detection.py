"""The detector package: annotation readers, scene generator, weights as verified data, batching, and a
tiny Faster R-CNN that learns to find a large object in a few dozen steps (CPU, seconds)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from kyb import synth
from kyb.detection import (
    CATEGORIES,
    Detector,
    DetectorArch,
    DetectorWeights,
    DynamicBatcher,
    Sample,
    WeightsError,
    build_detector,
    drawn_references,
    generate_scenes,
    read_annotations,
    read_coco,
    read_gt_boxes,
    read_voc,
    save_weights,
    split_of,
    write_coco,
    write_voc,
)
from kyb.errors import InvalidRequest

#: Small enough to train for a few dozen steps inside a test; same code path as the real model.
TINY = DetectorArch(backbone="mobilenet_v3_small", min_size=96, max_size=128, fpn_channels=32, box_head_width=64,
                    box_batch_size_per_image=32, anchor_sizes=((16, 32), (32, 64), (64, 128)))  # fmt: skip


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One CPU thread: on a shared machine idle-spinning OpenMP threads make torch many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ------------------------------------------------------------------ readers
def test_voc_reader_converts_one_based_corners_and_maps_labels(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text(
        """<annotation><filename>a.jpg</filename><size><width>200</width><height>100</height></size>
        <object><name>Adidas</name><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>60</xmax><ymax>80</ymax></bndbox></object>
        <object><name>cd</name><difficult>1</difficult>
          <bndbox><xmin>100</xmin><ymin>1</ymin><xmax>190</xmax><ymax>90</ymax></bndbox></object>
        <object><name>tree</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>
        </annotation>""",
        "utf-8",
    )
    (s,) = read_voc(tmp_path, label_map={"Adidas": "logo", "cd": "album_cover"})
    assert s.image == tmp_path / "a.jpg" and (s.width, s.height) == (200, 100)
    assert s.boxes == ((10.0, 20.0, 60.0, 80.0), (99.0, 0.0, 190.0, 90.0))
    assert s.labels == ("logo", "album_cover")  # the unmapped "tree" is dropped
    # Round trip through the writer.
    out = write_voc(s, tmp_path / "b.xml")
    (again,) = read_voc(out)
    assert again.boxes == s.boxes and again.labels == s.labels
    (tmp_path / "bad.xml").write_text("<annotation><filename>x", "utf-8")
    with pytest.raises(InvalidRequest, match=r"bad\.xml"):
        read_voc(tmp_path / "bad.xml")


def test_coco_reader_skips_crowd_and_unknown_and_round_trips(tmp_path: Path) -> None:
    data = {
        "images": [{"id": 7, "file_name": "img/p.jpg", "width": 64, "height": 48}, {"id": 8, "file_name": "q.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [4, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 64, 48], "iscrowd": 1},
            {"id": 3, "image_id": 7, "category_id": 9, "bbox": [1, 1, 5, 5]},
            {"id": 4, "image_id": 8, "category_id": 4, "bbox": [10, 10, 30, 30]},
        ],
        "categories": [{"id": 3, "name": "logo"}, {"id": 4, "name": "album_cover"}, {"id": 9, "name": "cat"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data), "utf-8")
    p, q = read_coco(path, label_map={"logo": "logo", "album_cover": "album_cover"})
    assert p.image == tmp_path / "img/p.jpg" and p.boxes == ((4.0, 5.0, 24.0, 15.0),) and p.labels == ("logo",)
    assert q.boxes == ((10.0, 10.0, 40.0, 40.0),) and q.labels == ("album_cover",)
    out = write_coco([p, q], tmp_path / "out.json", categories=CATEGORIES[1:])
    assert [s.boxes for s in read_coco(out)] == [p.boxes, q.boxes]
    path.write_text("{}", "utf-8")
    with pytest.raises(InvalidRequest, match="not a COCO"):
        read_coco(path)


def test_gt_boxes_reader_deduplicates_and_splits_stably(tmp_path: Path) -> None:
    boxes = {f"reference/{i}.jpg": [{"label": "Brand", "box": [1, 2, 30, 40]}] * 3 for i in range(50)}
    (tmp_path / "gt.json").write_text(json.dumps({"boxes": boxes}), "utf-8")
    samples = read_gt_boxes(tmp_path / "gt.json")
    assert len(samples) == 50 and all(s.boxes == ((1.0, 2.0, 30.0, 40.0),) and s.labels == ("logo",) for s in samples)
    train = read_annotations(tmp_path / "gt.json", split="train", test_fraction=0.3)
    test = read_annotations(tmp_path / "gt.json", split="test", test_fraction=0.3)
    assert len(train) + len(test) == 50 and 5 <= len(test) <= 25
    assert not {s.image for s in train} & {s.image for s in test}
    assert split_of("reference/3.jpg", test_fraction=0.3) == split_of("reference/3.jpg", test_fraction=0.3)


def test_scene_generator_writes_boxes_inside_the_photo(tmp_path: Path) -> None:
    refs = drawn_references(2, 2, seed=3)
    samples = generate_scenes(tmp_path / "coco", refs, n=4, seed=3, size=(160, 120), objects=(1, 3))
    assert sum(len(s.boxes) for s in samples) >= 4
    for s in samples:
        assert s.image.is_file() and set(s.labels) <= {"logo", "album_cover"}
        assert all(0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 120 for x1, y1, x2, y2 in s.boxes)
    assert [s.boxes for s in read_annotations(tmp_path / "coco")] == [s.boxes for s in samples]
    voc = generate_scenes(tmp_path / "voc", refs, n=2, seed=3, size=(160, 120), objects=(1, 3), fmt="voc")
    again = read_annotations(tmp_path / "voc")
    assert [s.labels for s in again] == [s.labels for s in voc]
    # VOC stores whole pixels; the generator's boxes are whole pixels already.
    assert [s.boxes for s in again] == [s.boxes for s in voc]


def test_scene_generator_balances_categories(tmp_path: Path) -> None:
    # Six logos to one cover: balanced picking places the cover about as often as all logos together.
    refs = drawn_references(6, 1, seed=4)

    def covers(balance: bool) -> int:
        samples = generate_scenes(tmp_path / str(balance), refs, n=40, seed=4, size=(128, 96), objects=(1, 1),
                                  balance=balance)  # fmt: skip
        return sum(s.labels.count("album_cover") for s in samples)

    assert covers(True) >= 12 > covers(False)


# ------------------------------------------------------------------ model and weights
def test_builder_names_bad_arguments() -> None:
    with pytest.raises(ValueError, match="backbone"):
        DetectorArch(backbone="vgg16")
    with pytest.raises(ValueError, match="num_classes"):
        build_detector(num_classes=1, arch=TINY)
    with pytest.raises(ValueError, match="anchor_sizes"):
        build_detector(arch=DetectorArch(backbone="mobilenet_v3_small", anchor_sizes=((16,), (32,))))


def test_weights_are_verified_on_load(tmp_path: Path) -> None:
    model = build_detector(arch=TINY)
    weights = save_weights(tmp_path / "d.pt", model, arch=TINY, categories=CATEGORIES, recipe="kyb detector train x")
    manifest = json.loads((tmp_path / "d.json").read_text("utf-8"))
    assert manifest["sha256"] == weights.sha256 and manifest["recipe"] == "kyb detector train x"
    assert manifest["categories"] == list(CATEGORIES)
    again = DetectorWeights.load(tmp_path / "d.pt", sha256=weights.sha256)
    assert again.arch == TINY and again.categories == CATEGORIES
    rebuilt = build_detector(weights=again)
    assert all(
        np.array_equal(a.numpy(), b.numpy())
        for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="num_classes=5"):
        build_detector(weights=again, num_classes=5)
    with pytest.raises(WeightsError, match="does not match the config"):
        DetectorWeights.load(tmp_path / "d.pt", sha256="0" * 64)
    with open(tmp_path / "d.pt", "ab") as f:  # one byte changed after the manifest was written
        f.write(b"\0")
    with pytest.raises(WeightsError, match=r"d\.pt: sha256 .* does not match its manifest"):
        DetectorWeights.load(tmp_path / "d.pt")
    with pytest.raises(WeightsError, match="do not exist"):
        DetectorWeights.load(tmp_path / "missing.pt")


def test_tiny_detector_learns_to_find_a_large_object(tmp_path: Path) -> None:
    import torch

    from kyb_training.detector_engine import DetectionDataset, collate

    torch.manual_seed(0)
    refs = drawn_references(0, 2, seed=5)
    style = synth.SceneStyle.clean(scale=(0.55, 0.7), rotation_deg=5, perspective=0.05)
    samples = generate_scenes(tmp_path, refs, n=4, seed=5, size=(128, 96), objects=(1, 1), style=style)
    assert all(len(s.boxes) == 1 for s in samples)
    model = build_detector(arch=TINY, rpn_batch_size_per_image=64)
    images, targets = collate([DetectionDataset(samples, CATEGORIES, max_side=128, augment=False)[i] for i in range(4)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(80):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    model.eval()
    with torch.inference_mode():
        outputs = model(images)
    for out, sample in zip(outputs, samples, strict=True):
        assert len(out["boxes"]) > 0
        best = out["boxes"][0].tolist()
        assert _iou(best, sample.boxes[0]) > 0.5, (best, sample.boxes[0])
        assert CATEGORIES[int(out["labels"][0])] == "album_cover"


def test_training_main_checkpoints_resumes_and_exports(tmp_path: Path) -> None:
    import torch

    from kyb_training.detector import get_args_parser, main

    refs = drawn_references(1, 1, seed=8)
    generate_scenes(tmp_path / "scenes", refs, n=4, seed=8, size=(128, 96), objects=(1, 2))
    argv = ["--train", str(tmp_path / "scenes"), "--val", str(tmp_path / "scenes"), "--out", str(tmp_path / "run"),
            "--backbone", "mobilenet_v3_small", "--min-size", "96", "--max-size", "128", "--fpn-channels", "16",
            "--box-head-width", "32", "--batch-size", "2", "--iters-per-epoch", "1", "--workers", "0",
            "--warmup", "1"]  # fmt: skip
    first = main(get_args_parser().parse_args([*argv, "--epochs", "1"]))
    assert (first["epoch"] == 0 and "AP50/logo" in first) or "AP50/album_cover" in first
    spent = torch.load(tmp_path / "run/checkpoint.pt", weights_only=False)["seconds"]
    second = main(get_args_parser().parse_args([*argv, "--epochs", "2", "--resume"]))
    assert second["epoch"] == 1  # continued, not restarted
    # The training time carries over, so a --time-limit counts the resumed run's time too.
    assert torch.load(tmp_path / "run/checkpoint.pt", weights_only=False)["seconds"] > spent > 0
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text("utf-8").splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    weights = DetectorWeights.load(tmp_path / "run/detector.pt")
    assert weights.metrics["epochs"] == 2 and "--resume" in weights.recipe
    # detector.input_size: the same weights run at another input size, boxes still in the caller's pixels.
    photo = np.full((300, 400, 3), 90, np.uint8)
    for size in (0, 112):
        detector = Detector(weights, device="cpu", score_threshold=0.0, input_size=size)
        assert detector.model.transform.min_size == ((size or 96),)
        assert (detector.min_size, detector.max_size) == ((112, 149) if size else (96, 128))
        for found in detector.detect([photo])[0]:
            x1, y1, x2, y2 = found.box
            assert 0 <= x1 < x2 <= 400 and 0 <= y1 < y2 <= 300
    with pytest.raises(ValueError, match="input_size"):
        Detector(weights, device="cpu", input_size=10)


# ------------------------------------------------------------------ batching
def test_batcher_gives_each_caller_its_own_result_and_batches() -> None:
    seen: list[int] = []

    def double(items):
        seen.append(len(items))
        return [x * 2 for x in items]

    batcher = DynamicBatcher(double, max_batch=8, max_wait_ms=30)
    results: dict[int, int] = {}
    start = threading.Barrier(24)

    def call(i: int) -> None:
        start.wait()
        results[i] = batcher(i, timeout=10)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    batcher.close()
    assert results == {i: 2 * i for i in range(24)}
    assert max(seen) > 1 and max(seen) <= 8 and sum(seen) == 24


def test_batcher_reports_the_batch_error_to_every_caller() -> None:
    def broken(items):
        raise RuntimeError("model fell over")

    batcher = DynamicBatcher(broken, max_batch=4, max_wait_ms=1)
    with pytest.raises(RuntimeError, match="fell over"):
        batcher(1, timeout=5)
    batcher.close()
    with pytest.raises(Exception, match="closed"):
        batcher.submit(2)


def test_sample_is_plain_data() -> None:
    s = Sample(Path("x.jpg"), ((0.0, 0.0, 1.0, 1.0),), ("logo",))
    assert s.width == 0 and s.labels == ("logo",)
