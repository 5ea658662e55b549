"""The web front's handlers: HTTP/JSON over the gateway, and the page people use.

Endpoints (``GET /openapi.json`` describes them, ``/docs`` and ``/redoc`` show it):

* ``POST /api/v1/identify[?crop=x1,y1,x2,y2]``, body = the photo bytes (JPEG, PNG or WebP, any
  ``Content-Type``): what ``Gateway.Identify`` answers, as :class:`~kyb_services.web.schema.IdentifyAnswer`;
* ``POST /api/v1/identify/batch``, a multipart form of ``photos`` files: ``Gateway.IdentifyBatch``,
  one result per photo in order (a bad photo fails only its own result);
* ``GET /api/v1/bands?q=NAME[&limit=N]``: ``Gateway.SearchBands``; ``GET /api/v1/bands/{band_id}``:
  ``Gateway.GetBand``;
* ``POST /api/v1/references`` (a multipart form: the ``image`` with ``kind``, ``band_id``, ``album_id``,
  ``regions`` and optional ``band`` / ``album`` records as JSON): ``Gateway.Ingest`` of one image;
  ``GET /api/v1/references[?band_id=&kind=&page_size=&page_token=]``: ``Gateway.ListReferences``;
  ``GET`` / ``DELETE /api/v1/references/{reference_id}``: ``Gateway.GetReference`` / ``DeleteReference``;
* ``GET /healthz``: the front itself is up (the gateway is not asked: a gateway that is down makes
  the API answer 503, it does not take the front out of its load balancer);
* ``GET /`` and ``/static/...``: the page (plain files from ``static/``, no build step).

Every call to the gateway goes through :class:`kyb.client.GatewayClient` with ``web.deadline_s`` as
its deadline, so this is never a second implementation of anything. Errors are RFC 9457 problem
details (``application/problem+json``) with the HTTP status of :data:`kyb.errors.HTTP_STATUS` and the
gRPC status name in ``code``: 400 bad image, crop or field, 401 missing/wrong token, 404 unknown id,
411 a batch without Content-Length, 413 over ``limits.max_bytes`` (refused before anything is
forwarded; the rest of such a body is read first, up to a bound, so a client that sends it whole
reads the answer), 503 gateway down (with ``Retry-After``), 504 deadline. Every answer carries an
``X-Request-Id`` (problems also in ``request_id``); details name the failing stage and the remedy,
never an address, DSN, path or exception text: the full text is logged under that id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TypeVar

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match, Route

from kyb import __version__
from kyb.bandsearch import parse_formed
from kyb.catalog import Album, Band
from kyb.client import GatewayClient
from kyb.encoder import Box, parse_box
from kyb.errors import (
    GRPC_STATUS,
    HTTP_STATUS,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    KybError,
    Unauthenticated,
    Unavailable,
    error_id,
    lookup,
)
from kyb.imageio import over_byte_limit
from kyb.ingest import IngestItem
from kyb.rpc import Metrics, ServiceConfig, TokenCheck, caller_message
from kyb_services.web.schema import (
    BandAnswer,
    BandList,
    BatchAnswer,
    DeleteAnswer,
    IdentifyAnswer,
    IngestAnswer,
    Problem,
    ReferenceInfo,
    ReferencePage,
)

__all__ = ["MAX_BATCH", "RETRY_AFTER_S", "STATIC_DIR", "WebServicer", "create_app"]

log = logging.getLogger(__name__)

#: The page's files (package data: they ship with the wheel).
STATIC_DIR = Path(__file__).with_name("static")
#: Most photos in one batch request: a batch is answered whole, so its size bounds the wait.
MAX_BATCH = 16
#: Seconds a client is asked to wait after a 503 (or 429): about what a gateway restart takes.
RETRY_AFTER_S = 5
#: Room for a multipart form's boundaries and text fields next to its files.
_FORM_OVERHEAD = 64 * 1024

_PROBLEM = "application/problem+json"
_PHOTO_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")
_KINDS = ("logo", "album_cover")
_Record = TypeVar("_Record", Band, Album)


def _responses(*statuses: int, **texts: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI error answers: problem details for each status (``texts``: ``s404="..."`` overrides)."""
    common = {
        400: "a bad image, crop or field",
        401: "missing or wrong bearer token",
        404: "no such id",
        411: "a batch needs a Content-Length",
        413: "over the size limit",
        503: "the gateway (or what it needs) is down; see Retry-After",
        504: "the gateway did not answer within the deadline",
    }
    chosen = sorted({401, 503, 504, *statuses})
    return {
        status: {
            "description": texts.get(f"s{status}", common[status]),
            "content": {_PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in chosen
    }


#: Declares the bearer scheme in the OpenAPI description; the check itself is WebServicer.authorize.
_BEARER = HTTPBearer(auto_error=False, description="one of rpc.tokens, when the server has any")


async def _authorized(
    request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
) -> None:
    request.app.state.servicer.authorize(request.headers.get("authorization"))


class WebServicer:
    """What the endpoints do; owns the gateway client.

    Incoming calls must carry one of ``rpc.tokens`` (none = open, like the gRPC services); the
    gateway is called with ``rpc.outgoing_token``.
    """

    def __init__(
        self, config: ServiceConfig, *, client: GatewayClient | None = None, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        #: Latency and outcome per endpoint (service "Web", methods named after the gateway RPC each
        #: one calls), code "OK" or ``HTTP_<status>``; exposed on ``rpc.metrics_port`` like the gRPC
        #: services' metrics.
        self.metrics = metrics if metrics is not None else Metrics()
        self._owns_metrics = metrics is None
        self.max_bytes = config.engine.limits.max_bytes
        self._tokens = TokenCheck(config.rpc.tokens)
        self.client = client or GatewayClient(
            config.web.gateway_address,
            config.rpc.outgoing_token,
            timeout=config.web.deadline_s,
            tls_ca=config.rpc.tls_ca,
            max_message_bytes=config.rpc.max_message_bytes,
        )

    @property
    def open(self) -> bool:
        return not self._tokens.enabled

    def authorize(self, header: str | None) -> None:
        """Unauthenticated unless ``header`` (the Authorization value) carries an accepted token."""
        problem = self._tokens.problem([("authorization", header)] if header is not None else None)
        if problem:
            raise Unauthenticated(problem)

    def _forward(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except Unauthenticated as exc:
            # The caller's token was fine (checked above): the gateway refused OURS, a server fault.
            raise Unavailable(f"the gateway refused this web front's token (rpc.client_token): {exc}") from None

    def identify(self, image: bytes, crop: Box | None = None) -> dict[str, Any]:
        return self._forward(self.client.identify, image, crop=crop)

    def identify_batch(self, photos: list[tuple[str, bytes]]) -> dict[str, Any]:
        answers = self._forward(lambda: list(self.client.identify_many(data for _name, data in photos)))
        results = []
        for item in answers:
            index = item.pop("index")
            filename = photos[index][0]
            if "error" in item:
                error = _problem_from_code(item["error"]["code"], item["error"]["message"], instance=filename)
                results.append({"index": index, "filename": filename, "answer": None, "error": error})
            else:
                results.append({"index": index, "filename": filename, "answer": item, "error": None})
        return {"results": results}

    def search_bands(
        self,
        query: str,
        limit: int,
        *,
        country: str | None = None,
        status: str | None = None,
        formed: str | None = None,
    ) -> dict[str, Any]:
        years = parse_formed(formed) if formed else None
        return self._forward(self.client.find_bands, query, limit=limit, country=country, status=status, formed=years)

    def get_band(self, band_id: str) -> dict[str, Any]:
        return self._forward(self.client.get_band, band_id)

    def add_reference(self, item: IngestItem, bands: list[Band], albums: list[Album]) -> dict[str, Any]:
        [result] = self._forward(self.client.ingest, [item], bands=bands, albums=albums)
        if result["status"] == "failed":
            raise InvalidImage(result["message"] or "the image could not be stored")
        return result

    def list_references(self, band_id: str | None, kind: str | None, page_size: int, page_token: str) -> dict:
        references, token = self._forward(
            self.client.references_page, band_id=band_id, kind=kind, page_size=page_size, page_token=page_token
        )
        return {"references": references, "next_page_token": token}

    def get_reference(self, reference_id: str) -> dict[str, Any]:
        return self._forward(self.client.get_reference, reference_id)

    def delete_reference(self, reference_id: str) -> dict[str, Any]:
        return self._forward(self.client.delete_reference, reference_id)

    def close(self) -> None:
        self.client.close()
        if self._owns_metrics:
            self.metrics.close()


# ---------------------------------------------------------------------------- errors
#: The request id of the call being answered (set by _RequestIds; run_in_threadpool copies it).
_REQUEST_ID: ContextVar[str] = ContextVar("kyb_web_request_id", default="")
#: What a client may pass as its own X-Request-Id (a proxy's id); anything else gets a fresh one.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
#: The stages an error can name, in the words the services use (shard-N are the matcher's shards).
_STAGE = re.compile(r"\b(detector|encoder|matcher|shard-\d+|catalog|cache)\b")
#: What callers read for server-side failures, by status: the failing stage and the remedy. The
#: real message names internal hosts, DSNs or exception text, so it goes to the log only.
_PUBLIC_DETAILS = {
    503: "{stage} is unavailable (down or restarting); try again in {retry} s",
    504: "{stage} did not answer within the deadline; try again",
    500: "internal error in {stage}; report the request id to the operator",
}
#: HTTP status of each gRPC status name, from the one table in kyb.errors.
_HTTP_OF_CODE = {str(code): HTTP_STATUS[cls] for cls, code in reversed(GRPC_STATUS.items())}


def _failing_stage(message: str) -> str:
    """The stage a server-side error names ("gateway: encoder: ..." -> the encoder); the gateway when none."""
    found = _STAGE.search(message)
    stage = found.group(1) if found else "gateway"
    return f"matcher {stage}" if stage.startswith("shard-") else f"the {stage}"


def _problem(status: int, code: str, detail: str, instance: str | None, *, scrub: bool = True) -> dict[str, Any]:
    """Problem details for a caller: no address, DSN, path or exception text (those are logged under
    the request id the answer carries); ``scrub=False`` for the front's own texts about the request."""
    request_id = _REQUEST_ID.get() or error_id()
    public = caller_message(detail) if scrub else detail
    if status >= 500:
        public = _PUBLIC_DETAILS.get(status, _PUBLIC_DETAILS[500]).format(
            stage=_failing_stage(detail), retry=RETRY_AFTER_S
        )
    if public != detail:
        log.warning("%s %s (request id %s): %s", instance or "-", code, request_id, detail)
    title = HTTPStatus(status).phrase
    return {"type": "about:blank", "title": title, "status": status, "detail": public, "instance": instance,
            "code": code, "request_id": request_id}  # fmt: skip


def _problem_from_code(code: str, message: str, *, instance: str | None) -> dict[str, Any]:
    return _problem(_HTTP_OF_CODE.get(code, 500), code, message, instance)


def _problem_response(problem: dict[str, Any], headers: Mapping[str, str] | None = None) -> JSONResponse:
    status = problem["status"]
    headers = dict(headers or {})
    headers["X-Request-Id"] = problem["request_id"]
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status in (429, 503):
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return JSONResponse(problem, status_code=status, headers=headers, media_type=_PROBLEM)


def _error(exc: KybError, request: Request) -> JSONResponse:
    status = int(lookup(HTTP_STATUS, exc))
    code = str(lookup(GRPC_STATUS, exc))
    return _problem_response(_problem(status, code, str(exc), request.url.path))


class _RequestIds:
    """Gives every request an id (the client's X-Request-Id when it is a plain token, else a fresh
    one in the scheme of the gateway's error ids) and returns it in the answer's X-Request-Id."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _CLIENT_ID.fullmatch(given) else error_id()
        _REQUEST_ID.set(request_id)

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


# ---------------------------------------------------------------------------- request bodies
#: Most bytes of an oversize body read and dropped before its 413 is sent. A client that sends its
#: whole body before reading (urllib, requests) would otherwise meet a closed connection (a reset)
#: instead of the answer; past this, or after _DRAIN_S, the front answers and closes. A client that
#: sends ``Expect: 100-continue`` (curl does for big bodies) is answered before it sends anything.
_DRAIN_BYTES = 64 * 1024 * 1024
_DRAIN_S = 10.0


async def _refuse(
    request: Request,
    error: ImageTooLarge,
    *,
    declared: int | None = None,
    read: int = 0,
    rest: AsyncIterator[bytes] | None = None,
) -> NoReturn:
    """Raises ``error`` after reading the rest of the body (``rest``: the stream being read, when it
    was begun; see _DRAIN_BYTES) unless the client waits for 100-continue or announced more than can
    be drained."""
    waiting = request.headers.get("expect", "").lower() == "100-continue" and read == 0
    if not waiting and (declared is None or declared - read <= _DRAIN_BYTES):
        drained = 0
        try:
            async with asyncio.timeout(_DRAIN_S):
                async for chunk in rest if rest is not None else request.stream():
                    drained += len(chunk)
                    if drained > _DRAIN_BYTES:
                        break
        except (TimeoutError, ClientDisconnect):
            pass
    raise error


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else None


async def _read_photo(request: Request, max_bytes: int) -> bytes:
    """The body, refused with ImageTooLarge as soon as it passes ``max_bytes`` (never buffered whole)."""
    declared = _declared_length(request)
    if declared is not None and declared > max_bytes:
        await _refuse(request, over_byte_limit(declared, max_bytes), declared=declared)
    chunks: list[bytes] = []
    size = 0
    stream = request.stream()
    async for chunk in stream:
        size += len(chunk)
        if size > max_bytes:
            await _refuse(request, over_byte_limit(None, max_bytes), declared=declared, read=size, rest=stream)
        chunks.append(chunk)
    if not size:
        raise InvalidImage("empty body: send the photo's bytes (JPEG, PNG or WebP) as the request body")
    return b"".join(chunks)


class _LengthRequired(KybError):
    """A multipart upload without a Content-Length (its size must be known before it is read)."""


async def _read_form(request: Request, max_body: int, max_files: int) -> FormData:
    """A multipart form whose declared size is at most ``max_body`` bytes (checked before reading)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("send a multipart/form-data body")
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        raise _LengthRequired("a multipart upload needs a Content-Length header")
    if int(declared) > max_body:
        await _refuse(request, over_byte_limit(int(declared), max_body), declared=int(declared))
    try:
        return await request.form(max_files=max_files, max_fields=16)
    except StarletteHTTPException as exc:  # the parser's own limits (too many files or fields)
        raise InvalidRequest(f"bad form: {exc.detail}") from None


async def _file_bytes(upload: UploadFile, max_bytes: int) -> bytes:
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        error = over_byte_limit(None, max_bytes)
        raise ImageTooLarge(f"{upload.filename or 'file'}: {error}")
    if not data:
        raise InvalidImage(f"{upload.filename or 'file'} is empty")
    return data


def _json_record(form: FormData, field: str, record: type[_Record]) -> _Record | None:
    text = form.get(field)
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise InvalidRequest(f"{field} must be a JSON object, not a file")
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return record.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"{field}: {exc}") from None


def _regions(text: str | None) -> tuple[Box, ...]:
    if not text:
        return ()
    try:
        boxes = json.loads(text)
        if not isinstance(boxes, list):
            raise ValueError("not a list")
        return tuple(parse_box(",".join(str(v) for v in box)) for box in boxes)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"regions must be a JSON list of [x1, y1, x2, y2] boxes: {exc}") from None


def _text(form: FormData, field: str) -> str | None:
    value = form.get(field)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{field} must be text, not a file")
    return value.strip() or None if value is not None else None


def _multipart(
    description: str, properties: dict[str, Any], required: list[str], *, one_of_these: tuple[str, ...] = ()
) -> dict[str, Any]:
    """An OpenAPI multipart body; ``one_of_these``: fields of which at least one must be sent."""
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    if one_of_these:
        schema["anyOf"] = [{"required": [name]} for name in one_of_these]
    return {"requestBody": {"required": True, "description": description,
                            "content": {"multipart/form-data": {"schema": schema}}}}  # fmt: skip


_BINARY = {"type": "string", "format": "binary"}
_REFERENCE_FORM = _multipart(
    "the reference image and what it shows",
    {
        "image": {**_BINARY, "description": "JPEG, PNG or WebP bytes"},
        "kind": {"type": "string", "enum": list(_KINDS)},
        "band_id": {"type": "string", "description": "the band it belongs to (required unless album_id is set)"},
        "album_id": {"type": "string", "description": "the album it belongs to (album covers)"},
        "source": {"type": "string", "description": "where it came from (default: the file's name)"},
        "regions": {"type": "string", "description": "JSON list of [x1, y1, x2, y2] boxes holding the reference"},
        "band": {"type": "string", "description": "JSON Band record to create or update first"},
        "album": {"type": "string", "description": "JSON Album record to create or update first"},
    },
    ["image", "kind"],
    one_of_these=("band_id", "album_id", "band", "album"),  # the record names the band or album then
)
_BATCH_FORM = _multipart(
    f"up to {MAX_BATCH} photos",
    {"photos": {"type": "array", "items": _BINARY, "minItems": 1, "maxItems": MAX_BATCH}},
    ["photos"],
)

#: Endpoint (HTTP method, route path) -> the gateway method it calls, for the metrics' method label.
_METHODS = {
    ("POST", "/api/v1/identify"): "Identify",
    ("POST", "/api/v1/identify/batch"): "IdentifyBatch",
    ("GET", "/api/v1/bands"): "SearchBands",
    ("GET", "/api/v1/bands/{band_id}"): "GetBand",
    ("POST", "/api/v1/references"): "Ingest",
    ("GET", "/api/v1/references"): "ListReferences",
    ("GET", "/api/v1/references/{reference_id}"): "GetReference",
    ("DELETE", "/api/v1/references/{reference_id}"): "DeleteReference",
}


def create_app(servicer: WebServicer) -> FastAPI:
    """The FastAPI application of the front: the API, its OpenAPI description, /docs, /redoc and the page."""
    # Swagger UI and ReDoc from fastapi-offline's own copies: the docs pages load nothing from a CDN.
    app = FastAPIOffline(
        title="Know Your Bands",
        version=__version__,
        summary="Find every band logo and album cover in a photo; search the band catalog; manage references.",
        static_url="/static-docs",
        favicon_url="/static-docs/favicon.png",
    )
    app.state.servicer = servicer
    app.add_middleware(GZipMiddleware, minimum_size=1024)
    app.add_middleware(_RequestIds)

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Any:
        method = _endpoint_method(request)
        if method is None:
            return await call_next(request)
        with servicer.metrics.track("Web", method) as outcome:
            response = await call_next(request)
            if response.status_code >= 400:
                outcome["code"] = f"HTTP_{response.status_code}"
            return response

    @app.exception_handler(KybError)
    async def kyb_error(request: Request, exc: KybError) -> JSONResponse:
        if isinstance(exc, _LengthRequired):
            return _problem_response(_problem(411, "INVALID_ARGUMENT", str(exc), request.url.path))
        return _error(exc, request)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback by uvicorn too; the caller gets the request id, not the text.
        return _problem_response(_problem(500, "INTERNAL", f"{type(exc).__name__}: {exc}", request.url.path))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(InvalidRequest(f"bad request: {where}: {first.get('msg', 'invalid')}"), request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "UNIMPLEMENTED"}.get(exc.status_code, "INVALID_ARGUMENT")
        detail = str(exc.detail) if exc.status_code != 404 else f"no such endpoint: {request.url.path}"
        problem = _problem(exc.status_code, code, detail, request.url.path, scrub=False)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only those of the first route matched
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return _problem_response(problem, headers)

    # ------------------------------------------------------------------ identify
    @app.post(
        "/api/v1/identify",
        response_model=IdentifyAnswer,
        dependencies=[Depends(_authorized)],
        responses=_responses(400, 413),
        summary="Every known band logo and album cover in one photo",
        tags=["identify"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "the photo's bytes",
                "content": {kind: {"schema": _BINARY} for kind in _PHOTO_TYPES},
            }
        },
    )
    async def identify(
        request: Request,
        crop: Annotated[
            str | None,
            Query(description="search only this box: x1,y1,x2,y2 in original photo pixels", examples=["10,20,300,400"]),
        ] = None,
    ) -> dict[str, Any]:
        box = parse_box(crop) if crop else None
        image = await _read_photo(request, servicer.max_bytes)
        return await run_in_threadpool(servicer.identify, image, box)

    @app.post(
        "/api/v1/identify/batch",
        response_model=BatchAnswer,
        dependencies=[Depends(_authorized)],
        responses=_responses(400, 411, 413),
        summary=f"Several photos (up to {MAX_BATCH}) in one call, one result each",
        tags=["identify"],
        openapi_extra=_BATCH_FORM,
    )
    async def identify_batch(request: Request) -> dict[str, Any]:
        form = await _read_form(request, servicer.max_bytes * MAX_BATCH + _FORM_OVERHEAD, MAX_BATCH)
        try:
            uploads = form.getlist("photos")
            if not uploads or not all(isinstance(u, UploadFile) for u in uploads):
                raise InvalidRequest(f"send 1..{MAX_BATCH} photos as files in the form field 'photos'")
            photos = []
            for i, upload in enumerate(uploads):
                assert isinstance(upload, UploadFile)
                photos.append((upload.filename or f"photo-{i}", await _file_bytes(upload, servicer.max_bytes)))
        finally:
            await form.close()
        return await run_in_threadpool(servicer.identify_batch, photos)

    # ------------------------------------------------------------------ bands
    @app.get(
        "/api/v1/bands",
        response_model=BandList,
        dependencies=[Depends(_authorized)],
        responses=_responses(400),
        summary="Bands by what they are (genre, themes, country) and by name, within filters, best first",
        tags=["bands"],
    )
    async def search_bands(
        q: Annotated[
            str, Query(min_length=1, max_length=200, description="a band's name, part of one, or words about it")
        ],
        limit: Annotated[int, Query(ge=1, le=100, description="most bands to return")] = 20,
        country: Annotated[str | None, Query(description="ISO code or name", examples=["SE"])] = None,
        status: Annotated[str | None, Query(description="active, split-up, on-hold, ...", examples=["active"])] = None,
        formed: Annotated[str | None, Query(description="years formed: FIRST..LAST", examples=["1990..1999"])] = None,
    ) -> dict[str, Any]:
        return await run_in_threadpool(
            partial(servicer.search_bands, country=country, status=status, formed=formed), q, limit
        )

    @app.get(
        "/api/v1/bands/{band_id}",
        response_model=BandAnswer,
        dependencies=[Depends(_authorized)],
        responses=_responses(400, 404, s404="unknown band id"),
        summary="A band with its albums",
        tags=["bands"],
    )
    async def get_band(band_id: str) -> dict[str, Any]:
        return await run_in_threadpool(servicer.get_band, band_id)

    # ------------------------------------------------------------------ references
    @app.post(
        "/api/v1/references",
        response_model=IngestAnswer,
        status_code=201,
        dependencies=[Depends(_authorized)],
        responses={
            200: {
                "description": "the same image and regions were stored already (status unchanged)",
                "model": IngestAnswer,
            },
            **_responses(400, 411, 413),
        },
        summary="Store a reference image (a logo or an album cover) with its band/album metadata",
        tags=["references"],
        openapi_extra=_REFERENCE_FORM,
    )
    async def add_reference(request: Request) -> Response:
        form = await _read_form(request, servicer.max_bytes + _FORM_OVERHEAD, 1)
        try:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise InvalidRequest("send the image as a file in the form field 'image'")
            kind = _text(form, "kind")
            if kind not in _KINDS:
                raise InvalidRequest(f"kind must be one of {', '.join(_KINDS)}")
            band = _json_record(form, "band", Band)
            album = _json_record(form, "album", Album)
            item = IngestItem(
                source=_text(form, "source") or upload.filename or "upload",
                kind=kind,
                band_id=_text(form, "band_id") or (band.band_id if band else None),
                album_id=_text(form, "album_id") or (album.album_id if album else None),
                regions=_regions(_text(form, "regions")),
                data=await _file_bytes(upload, servicer.max_bytes),
            )
        finally:
            await form.close()
        bands = [band] if band is not None else []
        albums = [album] if album is not None else []
        result = await run_in_threadpool(servicer.add_reference, item, bands, albums)
        created = result["status"] in ("added", "replaced")
        headers = {"Location": f"/api/v1/references/{result['reference_id']}"}
        return JSONResponse(result, status_code=201 if created else 200, headers=headers)

    @app.get(
        "/api/v1/references",
        response_model=ReferencePage,
        dependencies=[Depends(_authorized)],
        responses=_responses(400),
        summary="Reference images in ingestion order, one page at a time",
        tags=["references"],
    )
    async def list_references(
        band_id: Annotated[str | None, Query(description="only this band's references")] = None,
        kind: Annotated[Literal["logo", "album_cover"] | None, Query(description="only this kind")] = None,
        page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
        page_token: Annotated[str, Query(description="next_page_token of the previous page")] = "",
    ) -> dict[str, Any]:
        return await run_in_threadpool(servicer.list_references, band_id, kind, page_size, page_token)

    @app.get(
        "/api/v1/references/{reference_id}",
        response_model=ReferenceInfo,
        dependencies=[Depends(_authorized)],
        responses=_responses(400, 404, s404="unknown reference id"),
        summary="One reference image's record",
        tags=["references"],
    )
    async def get_reference(reference_id: str) -> dict[str, Any]:
        return await run_in_threadpool(servicer.get_reference, reference_id)

    @app.delete(
        "/api/v1/references/{reference_id}",
        response_model=DeleteAnswer,
        dependencies=[Depends(_authorized)],
        responses=_responses(400, 404, s404="unknown reference id"),
        summary="Remove a reference from its shard and the catalog",
        tags=["references"],
    )
    async def delete_reference(reference_id: str) -> dict[str, Any]:
        return await run_in_threadpool(servicer.delete_reference, reference_id)

    # ------------------------------------------------------------------ the front itself
    @app.get("/healthz", summary="The web front is up", tags=["health"])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "auth": "open" if servicer.open else "bearer"}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _publish_problem_schema(app)
    return app


def _allowed_methods(request: Request) -> list[str]:
    """The documented methods of every route whose path matches the request's (HEAD goes with GET)."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route.methods or ()) - {"HEAD"}
    return sorted(methods)


def _endpoint_method(request: Request) -> str | None:
    """The gateway method an API request calls (matched on the route templates), None for the rest."""
    path = request.url.path
    for (verb, template), method in _METHODS.items():
        if verb != request.method:
            continue
        head, _, parameter = template.partition("{")
        if (path == template) if not parameter else (path.startswith(head) and "/" not in path[len(head) :]):
            return method
    return None


def _publish_problem_schema(app: FastAPI) -> None:
    """Adds the Problem schema (named by the error answers' $ref) to the generated description."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            spec.setdefault("components", {}).setdefault("schemas", {})["Problem"] = Problem.model_json_schema()
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
