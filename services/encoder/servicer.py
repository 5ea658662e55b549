"""The Encoder servicer: image (or one box of it) -> :class:`~kyb.encoder.Encoding` over kyb.v1.Encoder.

It wraps :class:`kyb.encoder.Encoder` with the codebook of an index folder (``encoder.index_dir``, by
default the engine's ``index_dir``), loaded in the background: health is NOT_SERVING until it is. The
encoder and every matcher shard must use the same codebook; matchers refuse other versions.
Photos and references are encoded exactly as the embedded engine does (same decode size, same
region scaling, references need 8 keypoints), so served and embedded encodings are identical.

Photo (non-reference) encodings go through the descriptor cache ``engine.cache`` names, keyed exactly
as :meth:`kyb.engine.Engine.identify` keys them, so the encoder and an embedded engine sharing one
Redis reuse each other's encodings. The cache is an optimisation only: a Redis that is down is a miss.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc

from kyb.cache import EncodingCache, encode_photo, open_cache
from kyb.encoder import Box, Encoder, Encoding, extract_reference, scaled_box
from kyb.errors import InvalidRequest, KybError, Unavailable
from kyb.imageio import DecodedImage, decode_image
from kyb.index import load_codebook
from kyb.rpc import ServiceConfig, box_from_proto, decoded_from_proto, encoding_to_proto
from kyb.v1 import encoder_pb2, encoder_pb2_grpc

__all__ = ["EncoderServicer"]

log = logging.getLogger(__name__)


class EncoderServicer(encoder_pb2_grpc.EncoderServicer):
    """Encode: decode (unless the gateway sent pixels), then RootSIFT + codebook of one region."""

    def __init__(self, config: ServiceConfig) -> None:
        self._config = config
        self.index_dir = config.encoder_index_dir()
        self._encoder: Encoder | None = None
        self._stop = threading.Event()
        self._loader: threading.Thread | None = None
        settings = config.engine.cache
        self.cache: EncodingCache | None = open_cache(settings.url, ttl_s=settings.ttl_s, max_mb=settings.max_mb)

    def cache_stats(self) -> dict[str, Any]:
        """The descriptor cache's counters (hits, misses, errors, ...); empty when there is no cache."""
        return self.cache.stats() if self.cache is not None else {}

    def start(self, on_ready: Callable[[bool], None]) -> None:
        """Loads the codebook in the background; ``on_ready(True)`` once it is loaded."""

        def load() -> None:
            logged = False
            while not self._stop.is_set():
                try:
                    codebook = load_codebook(self.index_dir)
                    encoder = Encoder(codebook, self._config.engine.features)
                    encoder.warm_up()  # NOT_SERVING until the assignment graphs exist, not on the first Encode
                    self._encoder = encoder
                except KybError as exc:
                    if not logged:
                        log.warning("encoder: %s; retrying every %g s", exc, self._config.encoder.reload_s)
                        logged = True
                else:
                    log.info("encoder: codebook %s from %s", codebook.version, self.index_dir)
                    on_ready(True)
                    return
                self._stop.wait(self._config.encoder.reload_s)

        self._loader = threading.Thread(target=load, name="kyb-encoder-load", daemon=True)
        self._loader.start()

    def close(self) -> None:
        self._stop.set()
        if self._loader is not None:
            self._loader.join(timeout=5)
        if self.cache is not None:
            self.cache.close()

    @property
    def ready(self) -> bool:
        return self._encoder is not None

    def _image(self, request: encoder_pb2.EncodeRequest) -> DecodedImage:
        limits = self._config.engine.limits
        source = request.WhichOneof("source")
        if source == "image":
            side = limits.reference_max_side if request.is_reference else limits.search_max_side
            return decode_image(request.image, limits, max_side=side)
        if source == "decoded":
            return decoded_from_proto(request.decoded)
        raise InvalidRequest("send the image as bytes (image) or pixels (decoded)")

    def Encode(self, request: encoder_pb2.EncodeRequest, context: grpc.ServicerContext) -> Any:
        encoder = self._encoder
        if encoder is None:
            raise Unavailable(f"encoder: codebook from {self.index_dir} is not loaded yet")
        image = self._image(request)
        box = None
        if request.HasField("box"):
            box = scaled_box(box_from_proto(request.box), image.scale)
        if request.is_reference:
            features, region = extract_reference(image, box, encoder.features)
            encoding = encoder.encode_features(features, region, scale=image.scale)
        else:
            encoding = self._encode_photo(encoder, image, box)
        return encoder_pb2.EncodeResponse(
            encoding=encoding_to_proto(encoding),
            image_width=image.width,
            image_height=image.height,
            original_width=image.original_width,
            original_height=image.original_height,
            sha256=image.sha256,
            encoder_version=encoder.version,
            size_bytes=image.size_bytes,
        )

    def _encode_photo(self, encoder: Encoder, image: DecodedImage, box: Box | None) -> Encoding:
        """``encoder.encode`` through the descriptor cache (the key recipe of ``Engine.identify``)."""
        encoding, hit = encode_photo(
            self.cache,
            encoder,
            image,
            box,
            search_max_side=self._config.engine.limits.search_max_side,
        )
        log.debug("encoder: descriptor cache %s", "hit" if hit else "miss")
        return encoding
