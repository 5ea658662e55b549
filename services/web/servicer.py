"""The web front's handlers: HTTP/JSON over the gateway, and the page people use.

Endpoints (``GET /openapi.json`` describes them):

* ``POST /api/v1/identify[?crop=x1,y1,x2,y2]``, body = the photo bytes (JPEG, PNG or WebP, any
  ``Content-Type``): what ``Gateway.Identify`` answers, as :class:`~services.web.schema.IdentifyAnswer`;
* ``GET /api/v1/bands/{band_id}``: what ``Gateway.GetBand`` answers;
* ``GET /healthz``: the front itself is up (the gateway is not asked: a gateway that is down makes
  identify answer 503, it does not take the front out of its load balancer);
* ``GET /`` and ``/static/...``: the page (plain files from ``static/``, no build step).

Every call to the gateway goes through :class:`kyb.client.GatewayClient` with ``web.deadline_s`` as
its deadline, so this is never a second implementation of identify. Errors are
``{"error": {"code", "message"}}`` with the HTTP status of :data:`kyb.errors.HTTP_STATUS`: 400 bad
image or crop, 401 missing/wrong token, 404 unknown band, 413 over ``limits.max_bytes`` (refused
before anything is forwarded), 503 gateway down, 504 deadline. Messages of 5xx answers are fixed
texts (the real one, which names internal hosts, is logged).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from kyb import __version__
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
    lookup,
)
from kyb.rpc import Metrics, ServiceConfig, TokenCheck
from services.web.schema import BandAnswer, ErrorAnswer, IdentifyAnswer

__all__ = ["STATIC_DIR", "WebServicer", "create_app"]

log = logging.getLogger(__name__)

#: The page's files (package data: they ship with the wheel).
STATIC_DIR = Path(__file__).with_name("static")

_PHOTO_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorAnswer, "description": text}
    for status, text in {
        400: "not an image this service can read, or a bad crop",
        401: "missing or wrong bearer token",
        413: "photo over the size limit",
        503: "the gateway (or what it needs) is down",
        504: "the gateway did not answer within the deadline",
    }.items()
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
        #: Latency and outcome per endpoint (service "Web", methods Identify / GetBand), code "OK" or
        #: ``HTTP_<status>``; exposed on ``rpc.metrics_port`` like the gRPC services' metrics.
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

    def _forward(self, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return call(*args, **kwargs)
        except Unauthenticated as exc:
            # The caller's token was fine (checked above): the gateway refused OURS, a server fault.
            raise Unavailable(f"the gateway refused this web front's token (rpc.client_token): {exc}") from None

    def identify(self, image: bytes, crop: Box | None = None) -> dict[str, Any]:
        return self._forward(self.client.identify, image, crop=crop)

    def get_band(self, band_id: str) -> dict[str, Any]:
        return self._forward(self.client.get_band, band_id)

    def close(self) -> None:
        self.client.close()
        if self._owns_metrics:
            self.metrics.close()


async def _read_photo(request: Request, max_bytes: int) -> bytes:
    """The body, refused with ImageTooLarge as soon as it passes ``max_bytes`` (never buffered whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ImageTooLarge(f"photo is {int(declared)} bytes, over the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ImageTooLarge(f"photo is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    if not size:
        raise InvalidImage("empty body: send the photo's bytes (JPEG, PNG or WebP) as the request body")
    return b"".join(chunks)


#: What callers read for server-side failures: the real message names internal hosts, so it goes
#: to the log only.
_PUBLIC_MESSAGES = {
    503: "the search service is unavailable (the gateway or a service behind it is down); try again later",
    504: "the gateway did not answer within the deadline; try again",
    500: "internal error; see the web front's log",
}


def _error(exc: KybError) -> JSONResponse:
    status = int(lookup(HTTP_STATUS, exc))
    code = str(lookup(GRPC_STATUS, exc))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    message = str(exc)
    if status >= 500:
        log.warning("%s: %s", code, message)
        message = _PUBLIC_MESSAGES.get(status, _PUBLIC_MESSAGES[500])
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def create_app(servicer: WebServicer) -> FastAPI:
    """The FastAPI application of the front: the API, its OpenAPI description and the page."""
    app = FastAPI(
        title="Know Your Bands",
        version=__version__,
        summary="Find every band logo and album cover in a photo.",
        # The interactive docs pages load scripts from a CDN; the description itself is /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.state.servicer = servicer
    app.add_middleware(GZipMiddleware, minimum_size=1024)
    methods = {"/api/v1/identify": "Identify", "/api/v1/bands/": "GetBand"}

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Any:
        method = next((name for prefix, name in methods.items() if request.url.path.startswith(prefix)), None)
        if method is None:
            return await call_next(request)
        with servicer.metrics.track("Web", method) as outcome:
            response = await call_next(request)
            if response.status_code >= 400:
                outcome["code"] = f"HTTP_{response.status_code}"
            return response

    @app.exception_handler(KybError)
    async def kyb_error(_request: Request, exc: KybError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(InvalidRequest(f"bad request: {where}: {first.get('msg', 'invalid')}"))

    @app.post(
        "/api/v1/identify",
        response_model=IdentifyAnswer,
        dependencies=[Depends(_authorized)],
        responses=_ERRORS,
        summary="Every known band logo and album cover in one photo",
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "the photo's bytes",
                "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in _PHOTO_TYPES},
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

    @app.get(
        "/api/v1/bands/{band_id}",
        response_model=BandAnswer,
        dependencies=[Depends(_authorized)],
        responses={404: {"model": ErrorAnswer, "description": "unknown band id"}, **_ERRORS},
        summary="A band with its albums",
    )
    async def get_band(band_id: str) -> dict[str, Any]:
        return await run_in_threadpool(servicer.get_band, band_id)

    @app.get("/healthz", summary="The web front is up", include_in_schema=True)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "auth": "open" if servicer.open else "bearer"}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
