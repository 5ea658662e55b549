"""The Gateway servicer: the public kyb.v1.Gateway API over detector, encoder and matcher shards.

Identify, step by step (every downstream call gets the caller's remaining deadline):

1. validate the photo's header (:func:`kyb.imageio.read_header`: type, bytes, pixels) without decoding
   it; the caller's compressed bytes travel on, and the detector and encoder decode them themselves;
2. regions: the crop box when given, else the detector's boxes (each grown by a margin) plus the
   whole photo when a detector is configured and finds some, else the whole photo; the whole photo
   is encoded while the detector runs, so a detector that finds nothing (or has no model) costs no
   latency, and an object outside every box is still found;
3. encode every region, in parallel;
4. search every region on EVERY matcher shard, in parallel (scatter-gather); a shard that fails
   (after retries on UNAVAILABLE) makes the answer ``partial`` and is named in ``missing_shards``;
   when no shard answers the call fails with UNAVAILABLE;
5. merge the regions' objects with the embedded engine's rule (:func:`kyb.regions.merge_regions`) and
   describe them with its describe step (:func:`kyb.answer.describe`: the catalog's band and album
   records), so a served answer is the embedded one.

Downstream calls run on one bounded pool shared by all requests (``gateway.parallel``); pool tasks
never wait on other pool tasks, so a busy gateway queues instead of deadlocking.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from kyb.answer import CatalogLookup, LastSeen, describe
from kyb.bandsearch import (
    BandSearchRefresher,
    SearchFilters,
    band_index_folder,
    check_query,
    parse_country,
    parse_formed,
    parse_status,
)
from kyb.catalog import Catalog, open_catalog
from kyb.encoder import Box
from kyb.errors import (
    DeadlineExceeded,
    InvalidRequest,
    KybError,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from kyb.imageio import ImageHeader, read_header
from kyb.ingest import (
    IngestItem,
    IngestOutcome,
    combined_status,
    decode_reference,
    index_keys,
    record_outcome,
    reference_record,
)
from kyb.regions import Region, merge_regions, search_regions, second_look
from kyb.results import IdentifiedObject, IdentifyResult
from kyb.rpc import (
    Deadline,
    Metrics,
    RetryPolicy,
    ServiceConfig,
    album_from_proto,
    album_to_proto,
    band_from_proto,
    band_to_proto,
    bearer_metadata,
    box_from_proto,
    box_to_proto,
    call_unary,
    caller_message,
    decoded_to_proto,
    encoding_from_proto,
    found_from_proto,
    identify_result_to_proto,
    kind_from_proto,
    one_line,
    open_channel,
    reference_to_proto,
    shard_for,
    shard_name,
    similar_band_to_proto,
    status_for,
)
from kyb.search import FoundObject, round_one_depth, run_search
from kyb.v1 import (
    common_pb2,
    detector_pb2,
    detector_pb2_grpc,
    encoder_pb2,
    encoder_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    matcher_pb2,
    matcher_pb2_grpc,
)
from kyb_services.gateway.sharded import FanOut, ShardedSource

__all__ = ["GatewayServicer"]

log = logging.getLogger(__name__)

#: Page size of ListReferences when the caller gives none, and the largest it may ask for.
_DEFAULT_PAGE, _MAX_PAGE = 100, 1000
#: SearchBands: default number of bands.
_DEFAULT_BANDS = 20
#: Similar bands on every band card (Identify objects, GetBand).
_SIMILAR_BANDS = 5
#: Seconds between two looks at the catalog for new or changed bands (embedded, then indexed).
_BAND_REFRESH_S = 30.0


@dataclass(frozen=True)
class _Shard:
    index: int
    name: str
    address: str
    stub: matcher_pb2_grpc.MatcherStub


@dataclass
class _Region:
    """One encoded region: the message sent to the shards and its features' photo positions."""

    box: Box | None
    encoding: common_pb2.Encoding
    feature_xy: np.ndarray
    scale: float


@dataclass
class _PendingIngest:
    """An ingested image encoded and in the catalog, waiting for its shard's Add."""

    index: int
    source: str
    reference_id: str
    sha256: str
    keys: list[str]
    encodings: list[common_pb2.Encoding]
    shard: int


def _search_filters(request: gateway_pb2.SearchBandsRequest) -> SearchFilters:
    """The request's filters; InvalidRequest naming the bad one."""
    formed = None
    if request.HasField("formed_from") or request.HasField("formed_to"):
        first = str(request.formed_from) if request.HasField("formed_from") else ""
        last = str(request.formed_to) if request.HasField("formed_to") else ""
        formed = parse_formed(f"{first}..{last}")
    return SearchFilters(
        country=parse_country(request.country) if request.country.strip() else None,
        status=parse_status(request.status) if request.status.strip() else None,
        formed=formed,
    )


def _detected_regions(response: Any, header: ImageHeader, limit: int) -> list[Box | None]:
    """The regions to search for the detector's answer: the whole photo, then the best boxes grown by a
    margin (:func:`kyb.regions.search_regions`, as the embedded engine does), in original pixels."""
    detected = [(box_from_proto(d.box, name="detector box"), d.score) for d in response.detections]
    return search_regions(detected, header.original_width, header.original_height, limit)


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    """Identify, IdentifyBatch, Ingest, GetBand, SearchBands, ListReferences, GetReference and DeleteReference."""

    def __init__(
        self, config: ServiceConfig, *, metrics: Metrics | None = None, catalog: Catalog | None = None
    ) -> None:
        self._config = config
        gateway, rpc = config.gateway, config.rpc
        self._metrics = metrics
        #: Catalog rows answers used last: what an answer names while the catalog is down.
        self._last_seen = LastSeen()
        self._metadata = bearer_metadata(rpc.outgoing_token)
        self._policy = RetryPolicy.from_config(rpc)
        self._channels: list[grpc.Channel] = []
        self._encoder = encoder_pb2_grpc.EncoderStub(self._open(gateway.encoder_address))
        self._detector = (
            detector_pb2_grpc.DetectorStub(self._open(gateway.detector_address)) if gateway.detector_address else None
        )
        self._shards = [
            _Shard(k, shard_name(k), address, matcher_pb2_grpc.MatcherStub(self._open(address)))
            for k, address in enumerate(gateway.shard_addresses())
        ]
        self._pool = ThreadPoolExecutor(max_workers=gateway.parallel, thread_name_prefix="kyb-fanout")
        self._batch_pool = ThreadPoolExecutor(max_workers=gateway.batch_parallel, thread_name_prefix="kyb-batch")
        self._region_pool = ThreadPoolExecutor(max_workers=gateway.parallel, thread_name_prefix="kyb-region")
        self._busy = 0
        self._busy_lock = threading.Lock()
        # (model_version, when) of the detector's last answer; "" = no model (-inf: never asked).
        self._detector_model: tuple[str, float] = ("", -math.inf)
        self._owns_catalog = catalog is None
        if catalog is None:
            url = config.engine.catalog_url
            if "://" not in url:
                Path(url).parent.mkdir(parents=True, exist_ok=True)
            catalog = open_catalog(url)
        self._catalog = catalog
        #: Band search by meaning and name; opened (and kept current) in the background.
        self.band_search = BandSearchRefresher(
            catalog, band_index_folder(config.engine), interval_s=_BAND_REFRESH_S
        ).start()
        log.info(
            "gateway: encoder %s, detector %s, %d matcher shard(s): %s",
            gateway.encoder_address,
            gateway.detector_address or "none (whole photo = one region)",
            len(self._shards),
            ", ".join(f"{s.name}={s.address}" for s in self._shards),
        )

    # ------------------------------------------------------------------ plumbing
    def _open(self, address: str) -> grpc.Channel:
        channel = open_channel(address, self._config.rpc)
        self._channels.append(channel)
        return channel

    def close(self) -> None:
        """Stops the pools, closes the channels and the catalog (the server's on_stop hook)."""
        self.band_search.stop()
        self._batch_pool.shutdown(wait=False, cancel_futures=True)
        self._region_pool.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for channel in self._channels:
            channel.close()
        if self._owns_catalog:
            self._catalog.close()

    @property
    def busy(self) -> int:
        """Downstream calls running now (0 when idle: nothing is left behind after a deadline)."""
        return self._busy

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        def run() -> Any:
            with self._busy_lock:
                self._busy += 1
            try:
                return fn(*args)
            finally:
                with self._busy_lock:
                    self._busy -= 1

        return self._pool.submit(run)

    @staticmethod
    def _gather(futures: Sequence[Future[Any]], deadline: Deadline, what: str) -> list[Any]:
        """Results (or the exceptions raised) of ``futures`` in order; DeadlineExceeded if late."""
        _done, pending = wait(futures, timeout=deadline.remaining())
        if pending:
            for future in pending:
                future.cancel()
            raise DeadlineExceeded(f"deadline exceeded while waiting for {what}")
        return [f.exception() or f.result() for f in futures]

    def _call(self, method: Callable[..., Any], request: Any, deadline: Deadline, target: str, name: str) -> Any:
        return call_unary(
            method,
            request,
            deadline=deadline,
            metadata=self._metadata,
            policy=self._policy,
            target=target,
            name=name,
            metrics=self._metrics,
        )

    def _encode(
        self, image: bytes | common_pb2.RawImage, box: Box | None, deadline: Deadline, reference: bool
    ) -> encoder_pb2.EncodeResponse:
        """Encodes ``image`` (the caller's bytes, or pixels decoded here) or its ``box`` (original pixels)."""
        request = encoder_pb2.EncodeRequest(is_reference=reference)
        if isinstance(image, bytes):
            request.image = image
        else:
            request.decoded.CopyFrom(image)
        if box is not None:
            request.box.CopyFrom(box_to_proto(box))
        return self._call(self._encoder.Encode, request, deadline, "encoder", "Encode")

    def _search(self, shard: _Shard, request: matcher_pb2.SearchRequest, deadline: Deadline) -> Any:
        return self._call(shard.stub.Search, request, deadline, shard.name, "Search")

    # ------------------------------------------------------------------ identify
    def Identify(self, request: gateway_pb2.IdentifyRequest, context: grpc.ServicerContext) -> Any:
        return self._identify(request, Deadline.from_context(context, self._config.rpc.deadline_s))

    def _detector_may_find(self) -> bool:
        """False while the detector's last answer (under ``gateway.detector_recheck_s`` ago) said it has
        no model: a model-less detector finds nothing, so the photo need not be decoded and sent."""
        if self._detector is None:
            return False
        version, asked_at = self._detector_model
        return version != "" or time.monotonic() - asked_at >= self._config.gateway.detector_recheck_s

    def _regions(self, image: bytes, header: ImageHeader, deadline: Deadline) -> list[Box | None]:
        """The detector's boxes, best first (or [None]: the whole photo), in original pixels. The detector
        gets the caller's compressed bytes and decodes them itself (on its own node)."""
        assert self._detector is not None
        detector = self._config.detector
        request = detector_pb2.DetectRequest(image=image, min_score=detector.min_score, max_boxes=detector.max_boxes)
        try:
            response = self._call(self._detector.Detect, request, deadline, "detector", "Detect")
        except Unavailable as exc:
            # The detector only narrows the search: without it the whole photo is searched (slower
            # on cluttered photos, never wrong), so a detector outage does not fail the call.
            log.warning("detector unavailable, searching the whole photo: %s", exc)
            return [None]
        # A detector that found boxes has a model whatever version it reports.
        version = response.model_version or ("unnamed" if response.detections else "")
        if (version == "") != (self._detector_model[0] == ""):
            log.info("detector model: %s", version or "none (whole photo = one region)")
        self._detector_model = (version, time.monotonic())
        return _detected_regions(response, header, self._config.detector.max_regions)

    def _identify(self, request: gateway_pb2.IdentifyRequest, deadline: Deadline) -> gateway_pb2.IdentifyResponse:
        started = time.perf_counter()
        limits = self._config.engine.limits
        header = read_header(request.image, limits)  # bad input is refused before anything is sent on
        crop = box_from_proto(request.crop, name="crop") if request.HasField("crop") else None
        # Every stage gets the caller's compressed bytes, ~15x smaller than the pixels, and decodes them
        # itself (the encoder once per region, cropping as the embedded engine does): the gateway never
        # decodes, and no decoded photo crosses the network. The whole photo (or the crop) is encoded
        # while the detector looks for regions: when it finds none (or is down, or has no model) that
        # encoding is the answer's input, and detection adds no latency.
        whole = self._submit(self._encode, request.image, crop, deadline, False)
        boxes: list[Box | None] = [crop]
        checked_at = time.perf_counter()
        if crop is None and self._detector_may_find():
            boxes = self._regions(request.image, header, deadline)
        detected_at = time.perf_counter()

        # Detected regions, each searched on its own, come after the whole photo (already encoding) so
        # a verified object outside every box is still found; the merge keeps one answer per object.
        futures = [whole, *(self._submit(self._encode, request.image, box, deadline, False) for box in boxes[1:])]
        regions: list[_Region] = []
        encoded: encoder_pb2.EncodeResponse | None = None
        for box, result in zip(boxes, self._gather(futures, deadline, "the encoder"), strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, InvalidRequest) and len(boxes) > 1:
                    log.debug("region %s skipped: %s", box, result)  # a featureless detector box
                    continue
                raise result
            encoded = encoded or result
            encoding = encoding_from_proto(result.encoding)
            regions.append(
                _Region(
                    box,
                    result.encoding,
                    encoding.xy + np.asarray(encoding.origin, np.float32),
                    encoding.scale,
                )
            )
        encoded_at = time.perf_counter()
        if encoded is not None:  # the encoder's decode: search size and scale
            width, height, scale = encoded.image_width, encoded.image_height, regions[0].scale
        else:  # every region was featureless: nothing to search, the sizes only frame the empty answer
            scale = max(1.0, max(header.original_width, header.original_height) / limits.search_max_side)
            width, height = round(header.original_width / scale), round(header.original_height / scale)

        objects, shard_of, candidates, missing = self._search_regions(regions, width, height, deadline)
        size = (header.original_width, header.original_height)
        again = second_look(boxes, objects, *size, enabled=self._config.engine.search.second_look)
        if again is not None:  # nothing found: the photo once more as a region of itself, enlarged further
            second = self._second_look(request.image, again, width, height, deadline)
            if second is not None:
                region, (objects, owners, more, lacking) = second
                regions.append(region)
                shard_of.update(owners)
                candidates = list(dict.fromkeys([*candidates, *more]))
                missing = [s.name for s in self._shards if s.name in {*missing, *lacking}]
        searched_at = time.perf_counter()
        lookup = CatalogLookup(self._catalog, self._last_seen)
        alternatives = self._config.engine.search.alternatives
        result = IdentifyResult(
            objects=describe(objects, scale, lookup, alternatives=alternatives, shard_of=shard_of),
            width=header.original_width,
            height=header.original_height,
            sha256=header.sha256,
            features=sum(len(r.feature_xy) for r in regions),
            candidates=candidates,
            partial=bool(missing),
            missing_shards=missing,
            request_id=request.request_id,
            catalog_unavailable=bool(lookup.unavailable),
        )
        if lookup.unavailable and self._metrics is not None:
            self._metrics.degraded_answers.labels("catalog_unavailable").inc()
        if not lookup.unavailable:  # the catalog just failed once: do not wait on it a second time
            self._add_similar_bands(result.objects)
        finished = time.perf_counter()
        result.timings_ms = {
            "decode": (checked_at - started) * 1000,  # the header check: the gateway decodes nothing
            "detect": (detected_at - checked_at) * 1000,
            "encode": (encoded_at - detected_at) * 1000,
            "search": (searched_at - encoded_at) * 1000,
            "total": (finished - started) * 1000,
        }
        return identify_result_to_proto(result)

    def _second_look(
        self, image: bytes, box: Box, width: int, height: int, deadline: Deadline
    ) -> tuple[_Region, tuple[list[FoundObject], dict[str, str], list[str], list[str]]] | None:
        """:func:`kyb.regions.second_look`'s region encoded and searched (None: featureless), as the
        embedded engine does."""
        try:
            result = self._encode(image, box, deadline, False)
        except InvalidRequest:
            return None
        encoding = encoding_from_proto(result.encoding)
        region = _Region(box, result.encoding, encoding.xy + np.asarray(encoding.origin, np.float32), encoding.scale)
        depth = self._config.engine.search.second_look_depth
        return region, self._search_regions([region], width, height, deadline, depth=depth)

    def _fan_out(self, deadline: Deadline) -> FanOut:
        """Calls ``(shard, method, request)`` triples in parallel on the fan-out pool, within ``deadline``."""

        def run(calls: Sequence[tuple[_Shard, str, Any]]) -> list[Any]:
            futures = [
                self._submit(self._call, getattr(shard.stub, method), request, deadline, shard.name, method)
                for shard, method, request in calls
            ]
            return self._gather(futures, deadline, "the matcher shards")

        return run

    def _search_region(
        self, region: _Region, width: int, height: int, deadline: Deadline, depth: int | None = None
    ) -> tuple[list[FoundObject], dict[str, str], list[str], dict[str, str]]:
        """One region across the shards: (objects, key -> shard, shortlist order, missing shard -> why);
        ``depth`` caps round 1's candidates (the second look's), as :func:`kyb.search.search` does.

        One shard runs the whole search itself (Matcher.Search: one call, the embedded answer).
        Several shards are searched in two phases by the embedded search loop run here
        (:mod:`kyb_services.gateway.sharded`): merged shortlists, then each shard verifies only its keys
        of the global shortlist, so all shards together verify what one index would.
        """
        search = self._config.engine.search
        if len(self._shards) == 1:
            shard = self._shards[0]
            request = matcher_pb2.SearchRequest(
                encoding=region.encoding, image_width=width, image_height=height, max_candidates=depth or 0
            )
            try:
                answer = self._search(shard, request, deadline)
                found = found_from_proto(answer.objects, len(region.feature_xy), name=shard.name)
            except (DeadlineExceeded, Unauthenticated):
                raise
            except KybError as exc:
                raise Unavailable(f"no matcher shard answered ({shard.name}: {one_line(str(exc))})") from None
            owners = {v.reference_id: shard.name for item in found for v in [item.verification, *item.alternatives]}
            return found, owners, list(answer.candidates), {}
        source = ShardedSource(
            self._shards, self._fan_out(deadline), region.encoding, len(region.feature_xy), (width, height), search
        )
        first_round = round_one_depth(search, max_candidates=depth)
        found, order = run_search(
            source, region.feature_xy, search, first_round=first_round, image_size=(width, height)
        )
        return found, {key: shard.name for key, shard in source.owner.items()}, order, source.missing

    def _search_regions(
        self, regions: list[_Region], width: int, height: int, deadline: Deadline, *, depth: int | None = None
    ) -> tuple[list[FoundObject], dict[str, str], list[str], list[str]]:
        """Every region searched on every shard, merged: (objects, key -> shard, candidates, missing shards);
        ``depth``: see :meth:`_search_region`."""
        search = self._config.engine.search
        if len(regions) <= 1:
            results: list[Any] = [self._search_region(r, width, height, deadline, depth) for r in regions]
        else:  # region searches wait on fan-out tasks, so they run on their own pool
            futures = [
                self._region_pool.submit(self._search_region, r, width, height, deadline, depth) for r in regions
            ]
            results = self._gather(futures, deadline, "the region searches")
        failures: dict[str, str] = {}
        per_region: list[Region] = []
        shard_of: dict[str, str] = {}
        candidates: list[str] = []
        for region, result in zip(regions, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            objects, owners, order, missing = result
            per_region.append(Region(objects, region.feature_xy))
            shard_of.update(owners)
            candidates.extend(order)
            for name, why in missing.items():
                failures.setdefault(name, why)
        for name, why in failures.items():
            log.warning("partial answer: %s did not answer: %s", name, why)
            if self._metrics is not None:
                self._metrics.missing_shards.labels(name).inc()
        objects = merge_regions(per_region, search.max_objects)
        missing = [s.name for s in self._shards if s.name in failures]
        return objects, shard_of, list(dict.fromkeys(candidates)), missing

    # ------------------------------------------------------------------ batch
    def IdentifyBatch(
        self, request_iterator: Iterator[gateway_pb2.IdentifyRequest], context: grpc.ServicerContext
    ) -> Iterator[gateway_pb2.IdentifyBatchResult]:
        """Identifies up to ``gateway.batch_parallel`` photos at once; answers in request order."""
        deadline = Deadline.from_context(context, self._config.rpc.deadline_s)
        window: deque[tuple[int, str, Future[Any]]] = deque()
        for index, request in enumerate(request_iterator):
            window.append((index, request.request_id, self._batch_pool.submit(self._identify, request, deadline)))
            while len(window) >= self._config.gateway.batch_parallel:
                yield self._batch_result(*window.popleft(), deadline)
        while window:
            yield self._batch_result(*window.popleft(), deadline)

    @staticmethod
    def _batch_result(
        index: int, request_id: str, future: Future[Any], deadline: Deadline
    ) -> gateway_pb2.IdentifyBatchResult:
        result = gateway_pb2.IdentifyBatchResult(request_id=request_id, index=index)
        try:
            result.response.CopyFrom(future.result(timeout=deadline.remaining() + 1.0))
        except KybError as exc:
            code, message = status_for(exc)
            if caller_message(message) != message:
                log.warning("IdentifyBatch item %d failed: %s", index, message)  # the operator's copy
            result.code, result.message = code.value[0], caller_message(message)
        except TimeoutError:
            result.code = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
            result.message = "deadline exceeded"
        return result

    # ------------------------------------------------------------------ ingest
    def Ingest(
        self, request_iterator: Iterator[gateway_pb2.IngestRequest], context: grpc.ServicerContext
    ) -> gateway_pb2.IngestResponse:
        """Encodes each image, records it in the catalog, then adds it to its shard in batches."""
        deadline = Deadline.from_context(context, self._config.rpc.deadline_s)
        results: list[gateway_pb2.IngestResult] = []
        pending: dict[int, list[_PendingIngest]] = defaultdict(list)
        for index, request in enumerate(request_iterator):
            source = request.source or f"item-{index}"
            try:
                item = self._prepare_ingest(index, source, request, deadline)
            except (DeadlineExceeded, Unauthenticated):
                raise
            except Unavailable:
                # The catalog (or the encoder) is down: every later item would fail the same way, so
                # the call fails as a whole and the client retries it; items whose shard Add had not
                # been sent have at most an invisible catalog row, which the retry completes.
                raise
            except (KybError, ValueError) as exc:
                results.append(self._ingest_failed(index, source, "", one_line(str(exc))))
                continue
            results.append(
                gateway_pb2.IngestResult(
                    index=index, source=source, reference_id=item.reference_id, shard=shard_name(item.shard)
                )
            )
            pending[item.shard].append(item)
            if len(pending[item.shard]) >= self._config.gateway.ingest_batch:
                self._flush(pending.pop(item.shard), results, deadline)
        for items in pending.values():
            self._flush(items, results, deadline)
        response = gateway_pb2.IngestResponse(results=results)
        for result in results:
            setattr(response, result.status, getattr(response, result.status) + 1)
        return response

    def _ingest_failed(self, index: int, source: str, reference_id: str, message: str) -> gateway_pb2.IngestResult:
        record_outcome(self._catalog, IngestOutcome(source, "failed", reference_id or None, message))
        return gateway_pb2.IngestResult(
            index=index, source=source, status="failed", reference_id=reference_id, message=caller_message(message)
        )

    def _prepare_ingest(
        self, index: int, source: str, request: gateway_pb2.IngestRequest, deadline: Deadline
    ) -> _PendingIngest:
        kind = kind_from_proto(request.kind)
        if kind is None:
            raise InvalidRequest("kind is required: KIND_LOGO or KIND_ALBUM_COVER")
        if request.HasField("band"):
            self._catalog.upsert_band(band_from_proto(request.band))
        if request.HasField("album"):
            self._catalog.upsert_album(album_from_proto(request.album))
        band_id = request.band_id or (request.band.band_id if request.HasField("band") else "")
        album_id = request.album_id or (request.album.album_id if request.HasField("album") else "")
        if not band_id and not album_id:
            raise InvalidRequest("band_id or album_id is required")
        regions = tuple(box_from_proto(box, name=f"regions[{i}]") for i, box in enumerate(request.regions))
        item = IngestItem(source, kind, band_id or None, album_id or None, regions, request.image)
        decoded, reference_id, unique = decode_reference(item, self._config.engine.limits)
        raw = decoded_to_proto(decoded)
        futures = [self._submit(self._encode, raw, box, deadline, True) for box in unique]
        encodings = []
        for result in self._gather(futures, deadline, "the encoder"):
            if isinstance(result, BaseException):
                raise result
            encodings.append(result.encoding)
        self._catalog.add_reference(reference_record(item, reference_id, decoded))
        keys = index_keys(reference_id, len(unique))
        shard = shard_for(reference_id, len(self._shards))
        return _PendingIngest(index, source, reference_id, decoded.sha256, keys, encodings, shard)

    def _flush(self, items: list[_PendingIngest], results: list[gateway_pb2.IngestResult], deadline: Deadline) -> None:
        """One durable Add for a shard's pending items; fills in their results."""
        shard = self._shards[items[0].shard]
        request = matcher_pb2.AddRequest(
            items=[
                matcher_pb2.AddItem(reference_id=key, sha256=item.sha256, encoding=encoding)
                for item in items
                for key, encoding in zip(item.keys, item.encodings, strict=True)
            ],
            expected_shard=f"{shard.index}/{len(self._shards)}",
        )
        try:
            response = self._call(shard.stub.Add, request, deadline, shard.name, "Add")
        except DeadlineExceeded:
            raise
        except KybError as exc:
            for item in items:
                results[item.index] = self._ingest_failed(item.index, item.source, item.reference_id, str(exc))
            return
        outcomes = list(response.outcomes)
        for item in items:
            mine, outcomes = outcomes[: len(item.keys)], outcomes[len(item.keys) :]
            outcome = IngestOutcome(item.source, combined_status(mine), item.reference_id)
            results[item.index].status = outcome.status
            record_outcome(self._catalog, outcome, item.sha256)

    # ------------------------------------------------------------------ catalog reads
    def GetBand(self, request: gateway_pb2.GetBandRequest, context: grpc.ServicerContext) -> Any:
        band_id = request.band_id.strip()
        if not band_id:
            raise InvalidRequest("band_id is empty")
        band = self._catalog.get_band(band_id)
        if band is None:
            raise NotFound(f"no band {band_id}")
        albums = self._catalog.list_albums(band_id)
        similar = self.band_search.current().similar(band_id, _SIMILAR_BANDS)
        return gateway_pb2.GetBandResponse(
            band=band_to_proto(band),
            albums=[album_to_proto(a) for a in albums],
            similar_bands=[similar_band_to_proto(s) for s in similar],
        )

    def SearchBands(self, request: gateway_pb2.SearchBandsRequest, context: grpc.ServicerContext) -> Any:
        limit = request.limit or _DEFAULT_BANDS
        query = check_query(request.query, limit)
        answer = self.band_search.current().search(query, filters=_search_filters(request), limit=limit)
        return gateway_pb2.SearchBandsResponse(
            bands=[band_to_proto(hit.band) for hit in answer.hits],
            scores=[hit.score for hit in answer.hits],
            mode=answer.mode,
            notice=answer.notice,
        )

    def _add_similar_bands(self, objects: Sequence[IdentifiedObject]) -> None:
        """Similar bands on each object's band card (one catalog read for all of them)."""
        band_ids = [obj.best.band.band_id for obj in objects if obj.best.band is not None]
        if not band_ids:
            return
        try:
            similar = self.band_search.current().similar_many(band_ids, _SIMILAR_BANDS)
        except Unavailable as exc:  # the answer stands without them, as it does without fresh metadata
            log.warning("catalog unavailable, answering without similar bands: %s", exc)
            return
        for obj in objects:
            if obj.best.band is not None:
                obj.similar_bands = similar.get(obj.best.band.band_id, [])

    def ListReferences(self, request: gateway_pb2.ListReferencesRequest, context: grpc.ServicerContext) -> Any:
        size = request.page_size or _DEFAULT_PAGE
        if not 0 < size <= _MAX_PAGE:
            raise InvalidRequest(f"page_size must be in 1..{_MAX_PAGE}")
        token = request.page_token or "0"
        if not token.isdigit():
            raise InvalidRequest("page_token is not one this API returned")
        offset = int(token)
        rows = self._catalog.list_references(
            band_id=request.band_id or None, kind=kind_from_proto(request.kind), limit=size + 1, offset=offset
        )
        count = len(self._shards)
        return gateway_pb2.ListReferencesResponse(
            references=[reference_to_proto(r, shard_name(shard_for(r.reference_id, count))) for r in rows[:size]],
            next_page_token=str(offset + size) if len(rows) > size else "",
        )

    def GetReference(self, request: gateway_pb2.GetReferenceRequest, context: grpc.ServicerContext) -> Any:
        reference_id = request.reference_id.strip()
        if not reference_id:
            raise InvalidRequest("reference_id is empty")
        reference = self._catalog.get_reference(reference_id)
        if reference is None:
            raise NotFound(f"no reference {reference_id}")
        return reference_to_proto(reference, shard_name(shard_for(reference_id, len(self._shards))))

    def DeleteReference(self, request: gateway_pb2.DeleteReferenceRequest, context: grpc.ServicerContext) -> Any:
        """Index first, then catalog: a failure leaves the catalog row, and a retry completes it."""
        reference_id = request.reference_id.strip()
        if not reference_id:
            raise InvalidRequest("reference_id is empty")
        deadline = Deadline.from_context(context, self._config.rpc.deadline_s)
        shard = self._shards[shard_for(reference_id, len(self._shards))]
        response = self._call(
            shard.stub.Delete,
            matcher_pb2.DeleteRequest(reference_id=reference_id),
            deadline,
            shard.name,
            "Delete",
        )
        in_catalog = self._catalog.delete_reference(reference_id)
        if not response.deleted and not in_catalog:
            raise NotFound(f"no reference {reference_id}")
        return gateway_pb2.DeleteReferenceResponse(
            deleted_from_index=response.deleted, deleted_from_catalog=in_catalog, shard=shard.name
        )
