"""Search across matcher shards in two phases, driven by the embedded engine's own search loop.

:func:`kyb.search.run_search` asks a :class:`~kyb.search.CandidateSource` for shortlists and
verifications; :class:`ShardedSource` answers from every shard:

* **shortlist** (phase 1, cheap): every shard returns its two scored shortlist sources
  (Matcher.Shortlist); they are merged by score and fused exactly as one index fuses its own
  (:func:`kyb.index.merge_ranked`, :func:`kyb.index.fuse_ranked`), giving the global shortlist;
* **verify** (phase 2): the loop reads verifications in shortlist order and stops where one index
  would stop (patience, verify_top); each chunk of the shortlist is sent, split by the shard that
  listed each key, to those shards in parallel (Matcher.Verify). Chunks start at one later-round
  shortlist (``max(8, verify_top // 4)`` keys: a later round needs one round trip) and double, so
  a search verifies at most one chunk more than one index would, spread over the shards.

The answer is the one-index answer whenever the merged shortlist equals one index's (always for the
global-vector list; the word list uses each shard's idf, see :func:`kyb.index.merge_ranked`).
A shard that fails is left out of the rest of the search and named in :attr:`ShardedSource.missing`;
its keys read as "no longer indexed", which the loop skips without counting a miss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from kyb.config import SearchConfig
from kyb.errors import DeadlineExceeded, Unauthenticated, Unavailable
from kyb.index import fuse_ranked, merge_ranked
from kyb.rpc import one_line, pack_array, ranked_from_proto, verification_from_proto
from kyb.search import NOT_INDEXED, NotIndexed
from kyb.v1 import common_pb2, matcher_pb2
from kyb.verify import Verification

__all__ = ["FanOut", "ShardedSource"]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


#: Calls ``(shard, method name, request)`` in parallel; each result or the exception it raised, in order.
FanOut = Callable[[Sequence[tuple[Any, str, Any]]], list[Any]]


class ShardedSource:
    """:class:`kyb.search.CandidateSource` over matcher shards for one photo region."""

    def __init__(
        self,
        shards: Sequence[_Named],
        fan_out: FanOut,
        encoding: common_pb2.Encoding,
        features: int,
        image_size: tuple[int, int],
        config: SearchConfig,
    ) -> None:
        self._shards = list(shards)
        self._fan_out = fan_out
        self._encoding = encoding
        self._features = features
        self._image_size = image_size
        self._config = config
        self.owner: dict[str, Any] = {}  # index key -> the shard that listed it
        self.missing: dict[str, str] = {}  # shard name -> why it did not answer

    def _live(self) -> list[Any]:
        return [shard for shard in self._shards if shard.name not in self.missing]

    def _call_all(self, calls: Sequence[tuple[Any, str, Any]]) -> list[tuple[Any, Any]]:
        """Fans ``calls`` out; the (shard, answer) pairs that came back, failures recorded."""
        answers = []
        for (shard, _method, _request), result in zip(calls, self._fan_out(calls), strict=True):
            if isinstance(result, DeadlineExceeded | Unauthenticated):
                raise result
            if isinstance(result, BaseException):
                self.missing.setdefault(shard.name, one_line(str(result)))
                continue
            answers.append((shard, result))
        if calls and not answers and len(self.missing) == len(self._shards):
            reasons = "; ".join(f"{name}: {why}" for name, why in self.missing.items())
            raise Unavailable(f"no matcher shard answered ({reasons})")
        return answers

    @staticmethod
    def _rows(rows: np.ndarray) -> common_pb2.PackedArray:
        return pack_array(np.asarray(rows, dtype=np.int32))

    def shortlist(self, rows: np.ndarray | None, exclude: set[str], limit: int) -> list[str]:
        request = matcher_pb2.ShortlistRequest(encoding=self._encoding, exclude_reference_ids=sorted(exclude))
        request.limit = limit
        if rows is not None:
            request.rows.CopyFrom(self._rows(rows))
        answers = self._call_all([(shard, "Shortlist", request) for shard in self._live()])
        for shard, answer in reversed(answers):  # the first shard listing a key owns it
            for item in [*answer.global_list, *answer.words]:
                self.owner[item.reference_id] = shard
        merged = merge_ranked([ranked_from_proto(answer) for _, answer in answers], self._config, limit)
        return [key for key, *_scores in fuse_ranked(merged, self._config, limit)]

    def verify(
        self, keys: Sequence[str], rows: np.ndarray, *, sure: int = 0
    ) -> Iterator[Verification | NotIndexed | None]:
        # Each shard verifies its part of a chunk at once, and the first chunk (max(8, verify_top // 4))
        # holds what ``sure`` asks for already (1 + patience in round 1, a later round's short list).
        chunk = max(8, self._config.verify_top // 4)
        start = 0
        while start < len(keys):
            part = keys[start : start + chunk]
            yield from self._verify_chunk(part, rows)
            start += len(part)
            chunk *= 2

    def _verify_chunk(self, keys: Sequence[str], rows: np.ndarray) -> list[Verification | NotIndexed | None]:
        by_shard: dict[str, tuple[Any, list[str]]] = {}
        for key in keys:
            shard = self.owner[key]
            if shard.name not in self.missing:
                by_shard.setdefault(shard.name, (shard, []))[1].append(key)
        packed_rows = self._rows(rows) if len(rows) < self._features else None
        calls = []
        for shard, shard_keys in by_shard.values():
            request = matcher_pb2.VerifyRequest(
                encoding=self._encoding,
                image_width=self._image_size[0],
                image_height=self._image_size[1],
                reference_ids=shard_keys,
            )
            if packed_rows is not None:
                request.rows.CopyFrom(packed_rows)
            calls.append((shard, "Verify", request))
        outcomes: dict[str, Verification | NotIndexed | None] = {}
        for shard, answer in self._call_all(calls):
            for outcome in answer.outcomes:
                if not outcome.indexed:
                    outcomes[outcome.reference_id] = NOT_INDEXED
                elif outcome.HasField("match"):
                    name = f"{shard.name} match {outcome.reference_id}"
                    outcomes[outcome.reference_id] = verification_from_proto(outcome.match, self._features, name=name)
                else:
                    outcomes[outcome.reference_id] = None
        # A key whose shard failed (now or earlier) reads as no longer indexed: skipped, not a miss.
        return [outcomes.get(key, NOT_INDEXED) for key in keys]
