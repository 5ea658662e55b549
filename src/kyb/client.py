"""A small Python client of the Know Your Bands gateway.

::

    with GatewayClient("localhost:50051", token="s3cret", timeout=10) as client:
        answer = client.identify(Path("shelf.jpg").read_bytes())
        for obj in answer["objects"]:
            print(obj["band"]["name"], obj["score"], obj["outline"])

Answers are plain dicts: the embedded :meth:`kyb.results.IdentifyResult.to_dict` of the gateway's
answer (``partial``, ``missing_shards`` and each match's ``shard`` filled in), so code can switch
between embedded and remote. Failures raise the :class:`~kyb.errors.KybError` subclass of the gRPC status
(InvalidImage -> ``InvalidRequest``, UNAVAILABLE -> ``Unavailable``, ...), with ``.code`` set.

The idempotent calls (identify, get_band, search_bands, list_references, get_reference) ride out a
gateway restart: gRPC retries them per :class:`~kyb.rpc.ClientRetry` (backoff, retry throttling,
waiting for a connection) within the call's deadline. Ingest and delete are not retried: a retry
of an ingest stream would resend every photo, and a delete that went through answers NOT_FOUND
the second time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kyb.catalog import Album, Band
from kyb.encoder import Box
from kyb.errors import Unavailable
from kyb.ingest import IngestItem
from kyb.rpc import (
    ClientRetry,
    RpcConfig,
    album_from_proto,
    album_to_proto,
    band_from_proto,
    band_to_proto,
    bearer_metadata,
    box_to_proto,
    error_from_rpc,
    identify_result_from_proto,
    kind_from_proto,
    kind_to_proto,
    open_channel,
    similar_band_from_proto,
)
from kyb.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

__all__ = ["IDEMPOTENT_METHODS", "GatewayClient", "identify_response_to_dict", "reference_info_to_dict"]

#: Gateway methods that change nothing, so a retry can never do something twice.
IDEMPOTENT_METHODS = ("Identify", "GetBand", "SearchBands", "ListReferences", "GetReference")
_GATEWAY_SERVICE = "kyb.v1.Gateway"
#: The health check that tells "down" from "slow" after a deadline: short, it adds to a failed call only.
_PROBE_S = 0.25


def identify_response_to_dict(response: gateway_pb2.IdentifyResponse) -> dict[str, Any]:
    """An IdentifyResponse in the shape of the embedded engine's ``IdentifyResult.to_dict()``."""
    return identify_result_from_proto(response).to_dict()


def reference_info_to_dict(ref: common_pb2.ReferenceInfo) -> dict[str, Any]:
    """A ReferenceInfo as plain JSON types (boxes as ``[x1, y1, x2, y2]``)."""
    return {
        "reference_id": ref.reference_id,
        "sha256": ref.sha256,
        "kind": kind_from_proto(ref.kind),
        "band_id": ref.band_id or None,
        "album_id": ref.album_id or None,
        "source": ref.source,
        "width": ref.width,
        "height": ref.height,
        "size_bytes": ref.size_bytes,
        "regions": [[box.x1, box.y1, box.x2, box.y2] for box in ref.regions],
        "created_at": ref.created_at,
        "shard": ref.shard,
    }


class GatewayClient:
    """Calls one gateway; every call carries ``timeout`` (seconds) as its deadline.

    ``token`` is sent as ``authorization: Bearer <token>``; ``tls_ca`` (a PEM file) turns on TLS.
    ``retry`` is the policy for the idempotent methods (None: no retries, every attempt fails at
    once while the gateway cannot be reached).
    """

    def __init__(
        self,
        address: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        tls_ca: str | Path | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        retry: ClientRetry | None = ClientRetry(),  # noqa: B008 (frozen: one shared default is safe)
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        rpc = RpcConfig(tls_ca=Path(tls_ca) if tls_ca else None, max_message_bytes=max_message_bytes)
        self.address = address
        self.timeout = timeout
        self.retry = retry
        self._metadata = bearer_metadata(token or "")
        service_config = retry.service_config(_GATEWAY_SERVICE, IDEMPOTENT_METHODS) if retry else None
        self._channel = open_channel(address, rpc, service_config=service_config)
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)

    def _unreachable(self) -> bool:
        """Whether the gateway cannot be reached now: one health check that does not wait for a
        connection (a channel that cannot connect fails it at once with UNAVAILABLE)."""
        try:
            health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(), timeout=_PROBE_S, wait_for_ready=False
            )
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAVAILABLE if hasattr(exc, "code") else False
        return False

    @property
    def channel(self) -> grpc.Channel:
        """The channel to the gateway (to watch its connectivity, or call grpc.health.v1 on it)."""
        return self._channel

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._error(exc, timeout or self.timeout) from None

    def _error(self, exc: grpc.RpcError, timeout: float) -> Exception:
        code = exc.code() if hasattr(exc, "code") else None
        # A call that waited for a connection until its deadline: the gateway is down, not slow.
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and self._unreachable():
            failure = Unavailable(f"gateway: cannot connect to {self.address} (no connection within {timeout:g} s)")
            failure.code = grpc.StatusCode.UNAVAILABLE
            return failure
        return error_from_rpc(exc, target="gateway")

    # ------------------------------------------------------------------ identify
    def identify(self, image: bytes, *, crop: Box | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Every known logo and cover in the photo ``image`` (or in ``crop``, original pixels)."""
        request = gateway_pb2.IdentifyRequest(image=image)
        if crop is not None:
            request.crop.CopyFrom(box_to_proto(crop))
        return identify_response_to_dict(self._call(self._stub.Identify, request, timeout))

    def identify_many(self, images: Iterable[bytes], *, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """One answer per photo, in order, over one stream; a bad photo yields ``{"error": ...}``."""
        requests = (gateway_pb2.IdentifyRequest(image=data, request_id=str(i)) for i, data in enumerate(images))
        try:
            for result in self._stub.IdentifyBatch(requests, timeout=timeout or self.timeout, metadata=self._metadata):
                if result.code:
                    code = next(c for c in grpc.StatusCode if c.value[0] == result.code)
                    yield {"index": result.index, "error": {"code": code.name, "message": result.message}}
                else:
                    yield {"index": result.index, **identify_response_to_dict(result.response)}
        except grpc.RpcError as exc:
            raise self._error(exc, timeout or self.timeout) from None

    # ------------------------------------------------------------------ ingest and catalog
    def ingest(
        self,
        items: Iterable[IngestItem],
        *,
        bands: Sequence[Band] = (),
        albums: Sequence[Album] = (),
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Stores reference images; ``bands``/``albums`` records travel with the first item naming them
        (records no item names are not sent).

        Returns one ``{"source", "status", "reference_id", "message", "shard"}`` per item, in order.
        """
        band_records = {band.band_id: band for band in bands}
        album_records = {album.album_id: album for album in albums}

        def requests() -> Iterator[gateway_pb2.IngestRequest]:
            for item in items:
                request = gateway_pb2.IngestRequest(
                    image=item.read(),
                    kind=kind_to_proto(item.kind),
                    band_id=item.band_id or "",
                    album_id=item.album_id or "",
                    regions=[box_to_proto(box) for box in item.regions],
                    source=item.source,
                )
                band = band_records.pop(item.band_id or "", None)
                if band is not None:
                    request.band.CopyFrom(band_to_proto(band))
                album = album_records.pop(item.album_id or "", None)
                if album is not None:
                    request.album.CopyFrom(album_to_proto(album))
                yield request

        response = self._call(self._stub.Ingest, requests(), timeout)
        return [
            {
                "source": r.source,
                "status": r.status,
                "reference_id": r.reference_id or None,
                "message": r.message,
                "shard": r.shard,
            }
            for r in response.results
        ]

    def get_band(self, band_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """``{"band": {...}, "albums": [...], "similar_bands": [...]}``; NotFound for an unknown id."""
        response = self._call(self._stub.GetBand, gateway_pb2.GetBandRequest(band_id=band_id), timeout)
        return {
            "band": band_from_proto(response.band).to_dict(),
            "albums": [album_from_proto(a).to_dict() for a in response.albums],
            "similar_bands": [similar_band_from_proto(b).to_dict() for b in response.similar_bands],
        }

    def find_bands(
        self,
        query: str,
        *,
        limit: int = 20,
        country: str | None = None,
        status: str | None = None,
        formed: tuple[int | None, int | None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """``{"bands": [... each with "score"], "mode", "notice"}``: bands matching ``query`` by meaning and
        by name, best first, within the filters (``formed`` = first and last year, either may be None)."""
        request = gateway_pb2.SearchBandsRequest(query=query, limit=limit, country=country or "", status=status or "")
        first, last = formed or (None, None)
        if first is not None:
            request.formed_from = first
        if last is not None:
            request.formed_to = last
        response = self._call(self._stub.SearchBands, request, timeout)
        bands = [
            {**band_from_proto(band).to_dict(), "score": round(score, 4)}
            for band, score in zip(response.bands, response.scores, strict=True)
        ]
        return {"bands": bands, "mode": response.mode, "notice": response.notice}

    def search_bands(self, query: str, *, limit: int = 20, timeout: float | None = None) -> list[dict[str, Any]]:
        """The bands of :meth:`find_bands` without filters (each with its ``score``)."""
        return list(self.find_bands(query, limit=limit, timeout=timeout)["bands"])

    def list_references(
        self, *, band_id: str | None = None, kind: str | None = None, page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Every reference (optionally of one band or kind), fetching pages as it goes."""
        token = ""
        while True:
            references, token = self.references_page(band_id=band_id, kind=kind, page_size=page_size, page_token=token)
            yield from references
            if not token:
                return

    def references_page(
        self,
        *,
        band_id: str | None = None,
        kind: str | None = None,
        page_size: int = 100,
        page_token: str = "",
        timeout: float | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """One page of references and the token of the next ("" after the last page)."""
        request = gateway_pb2.ListReferencesRequest(
            page_size=page_size, page_token=page_token, band_id=band_id or "", kind=kind_to_proto(kind)
        )
        response = self._call(self._stub.ListReferences, request, timeout)
        return [reference_info_to_dict(ref) for ref in response.references], response.next_page_token

    def get_reference(self, reference_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """One reference's record; NotFound for an unknown id."""
        request = gateway_pb2.GetReferenceRequest(reference_id=reference_id)
        return reference_info_to_dict(self._call(self._stub.GetReference, request, timeout))

    def delete_reference(self, reference_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        request = gateway_pb2.DeleteReferenceRequest(reference_id=reference_id)
        response = self._call(self._stub.DeleteReference, request, timeout)
        return {
            "deleted_from_index": response.deleted_from_index,
            "deleted_from_catalog": response.deleted_from_catalog,
            "shard": response.shard,
        }
