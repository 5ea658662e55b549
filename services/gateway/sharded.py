"""Search across matcher shards in two phases, driven by the embedded engine's own search loop.

:func:`kyb.search.run_search` asks a :class:`~kyb.search.CandidateSource` for shortlists and
verifications; :class:`ShardedSource` answers from every shard:

* **shortlist** (phase 1, cheap): every shard returns its two scored shortlist sources
  (Matcher.Shortlist); they are merged by score and fused exactly as one index fuses its own
  (:func:`kyb.index.merge_ranked`, :func:`kyb.index.fuse_ranked`), giving the global shortlist. Each
  shard also verifies its own first few candidates with the same rows (``verify_first``: its share
  of what the loop is sure to look at, plus VERIFY_FIRST_MARGIN), so the common photo needs no
  phase 2 at all;
* **verify** (phase 2): the loop reads verifications in shortlist order and stops where one index
  would stop (patience, verify_top); what the shortlists verified is read as it is, and from the
  first key they did not, each chunk of the shortlist is sent, split by the shard that listed each
  key, to those shards in parallel (Matcher.Verify). Chunks start at one later-round shortlist
  (``max(8, verify_top // 4)`` keys: a later round needs one round trip) and double, so a search
  verifies at most one chunk more than one index would (plus what the shortlists verified ahead).

The photo's encoding crosses to each shard once: the first call carries it with this search's query
id, later calls the id alone (the shard keeps the query, bounded and expiring); a shard that answers
FAILED_PRECONDITION to an id alone (it restarted, or the query expired) gets that call once more
with the encoding.

The answer is the one-index answer whenever the merged shortlist equals one index's (always for the
global-vector list; the word list uses each shard's idf, see :func:`kyb.index.merge_ranked`).
A shard that fails is left out of the rest of the search and named in :attr:`ShardedSource.missing`;
its keys read as "no longer indexed", which the loop skips without counting a miss.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from kyb.config import SearchConfig
from kyb.errors import DeadlineExceeded, NotReady, Unauthenticated, Unavailable
from kyb.index import fuse_ranked, merge_ranked
from kyb.rpc import one_line, pack_array, ranked_from_proto, verification_from_proto
from kyb.search import NOT_INDEXED, NotIndexed
from kyb.v1 import common_pb2, matcher_pb2
from kyb.verify import Verification

__all__ = ["VERIFY_FIRST_MARGIN", "FanOut", "ShardedSource"]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


#: Candidates a shard verifies with its shortlist beyond its fair share of what the loop will look at.
VERIFY_FIRST_MARGIN = 2

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
        query_id: str = "",
    ) -> None:
        self._shards = list(shards)
        self._fan_out = fan_out
        self._encoding = encoding
        self._features = features
        self._image_size = image_size
        self._config = config
        #: Names this search on the shards, which keep its encoding under it between calls.
        self.query_id = query_id or uuid.uuid4().hex
        self.owner: dict[str, Any] = {}  # index key -> the shard that listed it
        self.missing: dict[str, str] = {}  # shard name -> why it did not answer
        self.held: set[str] = set()  # shards that received this search's encoding
        self.resent = 0  # calls sent again with the encoding (the shard no longer held the query)
        # What the shards verified ahead with the last shortlist, and the rows it was made with.
        self._known: dict[str, Verification | NotIndexed | None] = {}
        self._known_rows: np.ndarray | None = None

    def _live(self) -> list[Any]:
        return [shard for shard in self._shards if shard.name not in self.missing]

    def _with_encoding(self, request: Any) -> Any:
        full = type(request)()
        full.CopyFrom(request)
        full.encoding.CopyFrom(self._encoding)
        return full

    def _call_all(self, calls: Sequence[tuple[Any, str, Any]]) -> list[tuple[Any, Any]]:
        """Fans ``calls`` (requests without the encoding) out, the encoding added for the shards that
        do not hold this search yet; a shard that answers it holds none (FAILED_PRECONDITION: it
        restarted, or the query expired) gets the call once more with the encoding. The (shard,
        answer) pairs that came back, failures recorded."""
        sent = [
            (shard, method, request if shard.name in self.held else self._with_encoding(request))
            for shard, method, request in calls
        ]
        results = self._fan_out(sent)
        again = [
            i
            for i, ((_shard, _method, request), result) in enumerate(zip(sent, results, strict=True))
            if isinstance(result, NotReady) and not request.HasField("encoding")
        ]
        if again:
            self.resent += len(again)
            for i in again:
                self.held.discard(sent[i][0].name)
            retried = self._fan_out([(sent[i][0], sent[i][1], self._with_encoding(sent[i][2])) for i in again])
            for i, result in zip(again, retried, strict=True):
                results[i] = result
        answers = []
        for (shard, _method, _request), result in zip(sent, results, strict=True):
            if isinstance(result, DeadlineExceeded | Unauthenticated):
                raise result
            if isinstance(result, BaseException):
                self.missing.setdefault(shard.name, one_line(str(result)))
                continue
            self.held.add(shard.name)
            answers.append((shard, result))
        if calls and not answers and len(self.missing) == len(self._shards):
            reasons = "; ".join(f"{name}: {why}" for name, why in self.missing.items())
            raise Unavailable(f"no matcher shard answered ({reasons})")
        return answers

    @staticmethod
    def _rows(rows: np.ndarray) -> common_pb2.PackedArray:
        return pack_array(np.asarray(rows, dtype=np.int32))

    def _verify_first(self, rows: np.ndarray | None, limit: int, shards: int) -> int:
        """How many of its own first candidates each shard verifies with its shortlist: a fair share
        of what the loop is sure to look at (round 1: the first and the run of misses after it; a
        later round: its whole list), plus a margin for a shard that holds more than its share.
        0 (verify nothing ahead) for the deeper shortlist of a photo where nothing verified: no guess is good there."""
        if limit > self._config.verify_top or shards == 0:
            return 0
        need = limit if rows is not None else min(limit, 1 + self._config.patience)
        return min(limit, math.ceil(need / shards) + VERIFY_FIRST_MARGIN)

    def shortlist(self, rows: np.ndarray | None, exclude: set[str], limit: int) -> list[str]:
        request = matcher_pb2.ShortlistRequest(exclude_reference_ids=sorted(exclude), query_id=self.query_id)
        request.limit = limit
        if rows is not None:
            request.rows.CopyFrom(self._rows(rows))
        live = self._live()
        first = self._verify_first(rows, limit, len(live))
        if first:
            request.verify_first = first
            request.image_width, request.image_height = self._image_size
        answers = self._call_all([(shard, "Shortlist", request) for shard in live])
        for shard, answer in reversed(answers):  # the first shard listing a key owns it
            for item in [*answer.global_list, *answer.words]:
                self.owner[item.reference_id] = shard
        self._known = {}
        self._known_rows = rows
        for shard, answer in answers:
            self._known.update(self._read(shard, answer.verified))
        merged = merge_ranked([ranked_from_proto(answer) for _, answer in answers], self._config, limit)
        return [key for key, *_scores in fuse_ranked(merged, self._config, limit)]

    def _verified_with(self, rows: np.ndarray) -> dict[str, Verification | NotIndexed | None]:
        """The verifications the last shortlist brought, when they were made with ``rows``."""
        known_rows = self._known_rows
        same = len(rows) == self._features if known_rows is None else np.array_equal(known_rows, rows)
        return dict(self._known) if same else {}

    def verify(
        self, keys: Sequence[str], rows: np.ndarray, *, sure: int = 0
    ) -> Iterator[Verification | NotIndexed | None]:
        # What the shortlist verified ahead is read as it is; from the first key it did not, each
        # shard verifies its part of a chunk at once. The first chunk (max(8, verify_top // 4)) holds
        # what ``sure`` asks for already (1 + patience in round 1, a later round's short list).
        known = self._verified_with(rows)
        chunk = max(8, self._config.verify_top // 4)
        position = 0
        while position < len(keys):
            key = keys[position]
            if key not in known:
                part = [k for k in keys[position : position + chunk] if k not in known]
                known.update(zip(part, self._verify_chunk(part, rows), strict=True))
                chunk *= 2
            yield known[key]
            position += 1

    def _read(self, shard: Any, outcomes: Iterable[Any]) -> dict[str, Verification | NotIndexed | None]:
        read: dict[str, Verification | NotIndexed | None] = {}
        for outcome in outcomes:
            if not outcome.indexed:
                read[outcome.reference_id] = NOT_INDEXED
            elif outcome.HasField("match"):
                name = f"{shard.name} match {outcome.reference_id}"
                read[outcome.reference_id] = verification_from_proto(outcome.match, self._features, name=name)
            else:
                read[outcome.reference_id] = None
        return read

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
                image_width=self._image_size[0],
                image_height=self._image_size[1],
                reference_ids=shard_keys,
                query_id=self.query_id,
            )
            if packed_rows is not None:
                request.rows.CopyFrom(packed_rows)
            calls.append((shard, "Verify", request))
        outcomes: dict[str, Verification | NotIndexed | None] = {}
        for shard, answer in self._call_all(calls):
            outcomes.update(self._read(shard, answer.outcomes))
        # A key whose shard failed (now or earlier) reads as no longer indexed: skipped, not a miss.
        return [outcomes.get(key, NOT_INDEXED) for key in keys]
