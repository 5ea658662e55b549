"""Identify over gRPC: the embedded answer, partial answers, deadlines, bad input, concurrency."""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from kyb.client import GatewayClient, identify_response_to_dict
from kyb.config import ImageLimits
from kyb.engine import Engine
from kyb.imageio import read_header
from kyb.regions import Detection
from kyb.rpc import box_to_proto, shard_for
from kyb.v1 import detector_pb2, gateway_pb2
from kyb_services.detector.servicer import DetectorServicer
from kyb_services.matcher.servicer import MatcherServicer
from tests.services.conftest import compose_photo, draw_cover, encode


def _essence(answer: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What must agree between embedded and served answers, object by object."""
    return [
        (
            obj["band"]["band_id"],
            obj["inliers"],
            obj["score"],
            obj["outline"],
            obj["box"],
            [(m["reference_id"], m["inliers"], m["outline"]) for m in obj["matches"]],
        )
        for obj in answer["objects"]
    ]


@pytest.mark.parametrize("shards", [1, 2])
def test_identify_matches_embedded_engine(corpus, make_stack, shards):
    _stack, stub = make_stack(shards)
    photo = corpus.photo([0, 3, 5], seed=1)
    embedded = corpus.engine.identify(photo).to_dict()
    served = identify_response_to_dict(stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=10))
    assert sorted(o["band"]["band_id"] for o in embedded["objects"]) == ["band-0", "band-3", "band-5"]
    assert _essence(served) == _essence(embedded)
    assert served["image"] == embedded["image"]
    assert served["features"] == embedded["features"]
    assert not served["partial"] and served["missing_shards"] == []
    assert served["objects"][0]["band"] == corpus.bands[int(served["objects"][0]["band"]["band_id"][-1])].to_dict()
    assert all(obj["shard"].startswith("shard-") for obj in served["objects"])


@pytest.mark.parametrize("shards", [1, 2])
def test_a_photo_with_nothing_known_gets_the_same_second_look_served(corpus, make_stack, shards):
    _stack, stub = make_stack(shards)
    photo = encode(compose_photo([draw_cover(100), draw_cover(101)], seed=4, size=(500, 375)), ".jpg")
    embedded = corpus.engine.identify(photo).to_dict()
    served = identify_response_to_dict(stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=20))
    assert embedded["objects"] == [] and _essence(served) == _essence(embedded)
    # Both looked twice (kyb.regions.second_look): the whole photo, then enlarged as a region of itself.
    config = corpus.engine.config
    with Engine(config.replace(search=dataclasses.replace(config.search, second_look=False))) as once:
        whole = once.identify(photo).features
    assert served["features"] == embedded["features"] > whole


def test_killed_shard_gives_partial_answer_naming_it(corpus, make_stack):
    stack, stub = make_stack(2)
    photo = corpus.photo([0, 1, 2, 3], seed=2, size=(960, 480))
    stack.detector.stop(0).wait(5)  # the detector only narrows the search: down = whole photo
    complete = stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=10)
    assert not complete.partial and len(complete.objects) == 4
    stack.matchers[1].stop(0).wait(5)
    partial = stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=10)
    assert partial.partial
    assert list(partial.missing_shards) == ["shard-1"]
    expected = [o.band.band_id for o in complete.objects if shard_for(o.matches[0].reference_id, 2) == 0]
    assert sorted(o.band.band_id for o in partial.objects) == sorted(expected)
    assert all(o.shard == "shard-0" for o in partial.objects)
    stack.matchers[0].stop(0).wait(5)
    with pytest.raises(grpc.RpcError) as failure:
        stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=10)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shard-0" in failure.value.details() and "shard-1" in failure.value.details()
    assert "127.0.0.1" not in failure.value.details() and "error id" in failure.value.details()


@pytest.mark.parametrize("slow_call", [1, 2])
def test_deadline_exceeded_mid_fan_out_leaves_nothing_running(corpus, make_stack, monkeypatch, slow_call):
    original = MatcherServicer.Shortlist
    calls = [0]

    def slow_on_shard_1(self, request, context):
        if self.name == "shard-1":
            calls[0] += 1
            until = time.monotonic() + 5
            while calls[0] == slow_call and context.is_active() and time.monotonic() < until:
                time.sleep(0.01)
        return original(self, request, context)

    # Across 2 shards the gateway shortlists on every shard (each verifying its first candidates with
    # it, which answers these 6 references), then, once objects are found, shortlists what is left of
    # the photo: the deadline runs out in the first call, or in the second, after the shards kept the
    # photo's query.
    monkeypatch.setattr(MatcherServicer, "Shortlist", slow_on_shard_1)
    stack, stub = make_stack(2)
    gateway = stack.gateway
    photo = corpus.photo([0], seed=3)  # one cover: the second shortlist looks for more
    threads_before = threading.active_count()
    with pytest.raises(grpc.RpcError) as failure:
        stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=1.0)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The gateway gave up too: its handler ended with DEADLINE_EXCEEDED and no fan-out call is left.
    fanout = stack.gateway_servicer
    until = time.monotonic() + 3
    while (fanout.busy or not _deadline_counted(gateway)) and time.monotonic() < until:
        time.sleep(0.02)
    assert fanout.busy == 0
    assert _deadline_counted(gateway)
    assert threading.active_count() <= threads_before + 8  # at most the bounded fan-out pool
    # The shards kept the photo's query for the calls that never came; it goes once it expires.
    for server in stack.matchers:
        queries = server.servicers["kyb.v1.Matcher"].queries
        assert len(queries) <= 1
        later = time.monotonic() + queries.keep_s
        monkeypatch.setattr(queries, "_clock", lambda later=later: later)
        assert len(queries) == 0 and queries.nbytes == 0


def _deadline_counted(server) -> bool:
    return (
        server.metrics.count("kyb_rpc_handled_total", service="Gateway", method="Identify", code="DEADLINE_EXCEEDED")
        >= 1
    )


@pytest.mark.parametrize(
    ("image", "words"),
    [(b"", "empty"), (b"GIF89a not really", "not an image"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "")],
)
def test_bad_image_is_invalid_argument(make_stack, image, words):
    _stack, stub = make_stack(1, ingest=False)
    with pytest.raises(grpc.RpcError) as failure:
        stub.Identify(gateway_pb2.IdentifyRequest(image=image), timeout=5)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in failure.value.details()
    assert "\n" not in failure.value.details()


def test_fifty_concurrent_identify_calls_are_all_answered(corpus, make_stack):
    _stack, stub = make_stack(2)
    # One small cover per photo keeps the 50 calls' CPU cost small on a shared 2-core machine.
    photos = [corpus.photo([i % 6], seed=10 + i, size=(400, 300)) for i in range(50)]

    def identify(photo: bytes) -> list[str]:
        reply = stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=60)
        return sorted(o.band.band_id for o in reply.objects)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(identify, photos))
    elapsed = time.monotonic() - started
    for i, bands in enumerate(answers):
        assert bands == [f"band-{i % 6}"]
    print(f"50 concurrent Identify calls: {elapsed:.2f} s")


def test_identify_batch_answers_in_order_and_fails_items_alone(corpus, make_stack):
    stack, _stub = make_stack(2)
    photos = [corpus.photo([1], seed=20), b"not an image", corpus.photo([4, 0], seed=21)]
    with GatewayClient(f"127.0.0.1:{stack.gateway_port}", timeout=20) as client:
        answers = list(client.identify_many(photos))
    assert [a["index"] for a in answers] == [0, 1, 2]
    assert [o["band"]["band_id"] for o in answers[0]["objects"]] == ["band-1"]
    assert answers[1]["error"]["code"] == "INVALID_ARGUMENT"
    assert sorted(o["band"]["band_id"] for o in answers[2]["objects"]) == ["band-0", "band-4"]


def test_crop_box_limits_the_search_like_the_embedded_engine(corpus, make_stack):
    _stack, stub = make_stack(2)
    photo = corpus.photo([0, 3], seed=8)  # 720 px wide: cover 0 on the left half, cover 3 on the right
    crop = (360.0, 0.0, 720.0, 480.0)
    embedded = corpus.engine.identify(photo, box=crop).to_dict()
    request = gateway_pb2.IdentifyRequest(image=photo, crop=box_to_proto(crop))
    served = identify_response_to_dict(stub.Identify(request, timeout=10))
    assert [o["band"]["band_id"] for o in served["objects"]] == ["band-3"]
    assert _essence(served) == _essence(embedded)


def _size_of(request: detector_pb2.DetectRequest) -> tuple[int, int]:
    """The photo's upright size, from the compressed bytes the gateway forwards (it decodes nothing)."""
    assert request.WhichOneof("source") == "image"
    header = read_header(request.image, ImageLimits())
    return header.original_width, header.original_height


class HalvesDetector:
    """A detector that reports each photo's left and right halves and the whole photo (boxes a model
    could answer for two side-by-side covers), counting the images it is shown."""

    version = "halves-1"

    def __init__(self) -> None:
        self.images = 0

    def detect(self, images):
        self.images += len(images)
        out = []
        for image in images:
            height, width = image.shape[:2]
            halves = [(0, 0, width / 2, height), (width / 2, 0, width, height), (0, 0, width, height)]
            out.append([Detection(box, "album_cover", 0.9 - 0.1 * i) for i, box in enumerate(halves)])
        return out


@pytest.mark.parametrize("shards", [1, 2])
def test_detector_first_answers_equal_embedded_object_by_object(corpus, make_stack, shards):
    detector = HalvesDetector()
    _stack, stub = make_stack(shards, detector=detector)
    engine = corpus.engine
    for seed, covers in [(8, [0, 3]), (9, [1, 4, 5]), (10, [2])]:
        photo = corpus.photo(covers, seed=seed)
        whole = engine.identify(photo).to_dict()
        shown = detector.images
        served = identify_response_to_dict(stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=20))
        assert detector.images == shown + 1  # the gateway asked the detector
        engine.detector = detector
        try:
            embedded = engine.identify(photo).to_dict()
        finally:
            engine.detector = None
        assert _essence(served) == _essence(embedded)
        assert served["features"] == embedded["features"]
        # The regions were searched: three crops and the whole photo hold more features than the photo.
        assert embedded["features"] > whole["features"]
        assert sorted(o["band"]["band_id"] for o in served["objects"]) == [f"band-{c}" for c in covers]
        assert "detect" in served["timings_ms"] and "detect" in embedded["timings_ms"]


def test_detector_without_a_model_is_skipped_until_the_recheck(corpus, make_stack, monkeypatch):
    asked: list[str] = []
    model = {"version": ""}
    original = DetectorServicer.Detect

    def counting(self, request, context):
        asked.append(request.WhichOneof("source"))
        if model["version"]:  # a detector that gained a model: boxes of the two halves
            width, height = _size_of(request)
            halves = [(0, 0, width / 2, height), (width / 2, 0, width, height)]
            return detector_pb2.DetectResponse(
                detections=[detector_pb2.Detection(box=box_to_proto(b), kind=2, score=0.9) for b in halves],
                model_version=model["version"],
            )
        return original(self, request, context)

    monkeypatch.setattr(DetectorServicer, "Detect", counting)
    stack, stub = make_stack(2)
    photo = corpus.photo([0, 3], seed=8)
    first = stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=10)
    second = stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=10)
    assert asked == ["image"]  # "no model" was remembered: the second photo was not sent to it
    assert _essence(identify_response_to_dict(first)) == _essence(identify_response_to_dict(second))
    model["version"] = "test-1"
    servicer = stack.gateway_servicer
    version, _when = servicer._detector_model
    servicer._detector_model = (version, time.monotonic() - stack.config.gateway.detector_recheck_s)
    third = stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=10)
    fourth = stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=10)
    assert asked == ["image"] * 3  # asked again after the recheck period, then on every photo
    assert sorted(o.band.band_id for o in third.objects) == ["band-0", "band-3"]
    assert sorted(o.band.band_id for o in fourth.objects) == ["band-0", "band-3"]
