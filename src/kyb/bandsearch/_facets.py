"""The band fields a search can filter on: country (ISO 3166 alpha-2), status and the year formed.

Catalog values are free text ("Sweden", "Korea| South", "United Kingdom, USA", "Split-up"); these
helpers turn them into comparable codes, and turn what a person types (``SE``, ``Sweden``,
``Schweden``, ``split up``, ``1990..1999``) into filters, or raise :class:`~kyb.errors.InvalidRequest`
with a one-line reason. Country names come from pycountry, with their translations in the languages
listed in :data:`QUERY_LANGUAGES`, so a query may name a country in any of them.
"""

from __future__ import annotations

import functools
import gettext
import re
from dataclasses import dataclass

import pycountry

from kyb.catalog import normalize_name
from kyb.errors import InvalidRequest

__all__ = [
    "NO_FILTERS",
    "QUERY_LANGUAGES",
    "STATUSES",
    "SearchFilters",
    "country_code",
    "country_name",
    "find_countries",
    "parse_country",
    "parse_formed",
    "parse_status",
    "status_slug",
]

#: The band statuses the catalogs use, as slugs (``--status`` takes these).
STATUSES: tuple[str, ...] = ("active", "split-up", "on-hold", "changed-name", "unknown", "disputed")

#: Languages whose country names a query may use (pycountry's translations of ISO 3166-1).
QUERY_LANGUAGES: tuple[str, ...] = (
    "de", "fr", "es", "it", "pt", "nl", "sv", "da", "nb", "fi", "is", "pl", "cs", "sk", "hu", "ro",
    "hr", "sl", "et", "lv", "lt", "el", "ru", "uk", "bg", "sr", "tr", "ca", "gl", "eu",
)  # fmt: skip

# Names the scraped catalogs use that pycountry does not list (folded as normalize_name folds).
_ALIASES = {
    "russia": "RU",
    "korea| south": "KR",
    "korea, south": "KR",
    "south korea": "KR",
    "north korea": "KP",
    "macedonia (fyrom)": "MK",
    "macedonia": "MK",
    "turkey": "TR",
    "brunei": "BN",
    "reunion": "RE",
    "the netherlands": "NL",
    "holland": "NL",
    "uk": "GB",
    "england": "GB",
    "scotland": "GB",
    "wales": "GB",
    "great britain": "GB",
    "britain": "GB",
    "america": "US",
    "united states of america": "US",
    "czechia": "CZ",
    "vatican": "VA",
    "syria": "SY",
    "laos": "LA",
    "iran": "IR",
    "vietnam": "VN",
    "moldova": "MD",
    "bolivia": "BO",
    "venezuela": "VE",
    "tanzania": "TZ",
    "palestine": "PS",
    "kosovo": "XK",
}
# How the catalogs spell countries whose ISO name is formal ("Russian Federation", "Korea, Republic of").
_PREFERRED_NAMES = {
    "RU": "Russia",
    "KR": "South Korea",
    "KP": "North Korea",
    "TR": "Turkey",
    "IR": "Iran",
    "SY": "Syria",
    "VN": "Vietnam",
    "LA": "Laos",
    "MD": "Moldova",
    "BO": "Bolivia",
    "VE": "Venezuela",
    "TZ": "Tanzania",
    "BN": "Brunei",
    "MK": "Macedonia",
    "CZ": "Czech Republic",
}
# Country names in some language that are also English words, names or cities (German "Island" is
# Iceland): read as words, never as countries.
_NOT_COUNTRIES = frozenset(
    {"island", "indie", "chili", "grenade", "granada", "maurice", "dominique", "norfolk", "georgie", "salvador",
     "columbia", "guadalupe", "tunis", "somali", "guiana"}
)  # fmt: skip
# A query word this short is too often something else ("man", "oman" is fine at 4).
_MIN_QUERY_NAME = 4
_WORD_RE = re.compile(r"[\w'-]+")
_FORMED_RE = re.compile(r"^\s*(\d{4})?\s*(?:(\.\.|-)\s*(\d{4})?)?\s*$")
_YEARS = (1900, 2100)


@dataclass(frozen=True)
class SearchFilters:
    """Structured restrictions of a band search; every one that is set must hold.

    ``country`` is an ISO 3166 alpha-2 code, ``status`` one of :data:`STATUSES`, ``formed`` an inclusive
    ``(first, last)`` year range (bands with no known year never pass it).
    """

    country: str | None = None
    status: str | None = None
    formed: tuple[int, int] | None = None

    def __bool__(self) -> bool:
        return any(value is not None for value in (self.country, self.status, self.formed))

    def admits(self, country: str | None, status: str | None, formed_in: int | None) -> bool:
        """Whether a band with these raw catalog fields passes every filter."""
        if self.country is not None and country_code(country) != self.country:
            return False
        if self.status is not None and status_slug(status) != self.status:
            return False
        if self.formed is not None:
            first, last = self.formed
            return formed_in is not None and first <= formed_in <= last
        return True

    def to_dict(self) -> dict[str, object]:
        return {
            "country": self.country,
            "status": self.status,
            "formed": list(self.formed) if self.formed else None,
        }


#: A search that restricts nothing.
NO_FILTERS = SearchFilters()


@functools.lru_cache(maxsize=1)
def _english_names() -> dict[str, str]:
    """Folded English names, official names and codes -> alpha-2."""
    names: dict[str, str] = {}
    for country in pycountry.countries:
        for attribute in ("name", "official_name", "common_name", "alpha_2", "alpha_3"):
            value = getattr(country, attribute, None)
            if value:
                names.setdefault(normalize_name(value), country.alpha_2)
    names.update(_ALIASES)
    return names


@functools.lru_cache(maxsize=1)
def _foreign_names() -> dict[str, str]:
    """Folded country names in :data:`QUERY_LANGUAGES` -> alpha-2 (names equal to an English one left out)."""
    english = _english_names()
    names: dict[str, str] = {}
    for language in QUERY_LANGUAGES:
        try:
            translation = gettext.translation("iso3166-1", pycountry.LOCALES_DIR, languages=[language])
        except OSError:
            continue
        for country in pycountry.countries:
            for attribute in ("name", "common_name", "official_name"):
                value = getattr(country, attribute, None)
                if not value:
                    continue
                folded = normalize_name(translation.gettext(value))
                if len(folded) >= _MIN_QUERY_NAME and folded not in english and folded not in _NOT_COUNTRIES:
                    names.setdefault(folded, country.alpha_2)
    return names


@functools.lru_cache(maxsize=4096)
def country_code(text: str | None) -> str | None:
    """The alpha-2 code of a catalog country ("Sweden" -> "SE", "Korea| South" -> "KR"); for a list of
    countries ("United Kingdom, USA") the first one's; None for "International", "Unknown" or no value."""
    if not text:
        return None
    folded = normalize_name(text)
    english = _english_names()
    if folded in english:
        return english[folded]
    for part in re.split(r"[,/|;]", folded):
        code = english.get(part.strip())
        if code:
            return code
    return None


def country_name(code: str) -> str:
    """The English name the catalogs use for an alpha-2 code ("RU" -> "Russia", "SE" -> "Sweden")."""
    if code in _PREFERRED_NAMES:
        return _PREFERRED_NAMES[code]
    country = pycountry.countries.get(alpha_2=code)
    if country is None:
        return code
    return str(getattr(country, "common_name", None) or country.name)


def parse_country(text: str) -> str:
    """A ``--country`` value (code, English or translated name) -> alpha-2; InvalidRequest if unknown."""
    folded = normalize_name(text)
    code = _english_names().get(folded) or _foreign_names().get(folded)
    if code is None:
        raise InvalidRequest(f"unknown country {text.strip()!r}: use an ISO code such as SE or a name such as Sweden")
    return code


def status_slug(text: str | None) -> str | None:
    """A catalog status as a slug ("Split-up" -> "split-up", "On hold" -> "on-hold")."""
    if not text:
        return None
    return re.sub(r"[^a-z0-9]+", "-", normalize_name(text)).strip("-") or None


def parse_status(text: str) -> str:
    """A ``--status`` value -> one of :data:`STATUSES`; InvalidRequest otherwise."""
    slug = status_slug(text)
    aliases = {"split": "split-up", "splitup": "split-up", "onhold": "on-hold", "changedname": "changed-name"}
    slug = aliases.get(slug or "", slug)
    if slug not in STATUSES:
        raise InvalidRequest(f"unknown status {text.strip()!r}: expected one of {', '.join(STATUSES)}")
    return slug


def parse_formed(text: str) -> tuple[int, int]:
    """``1990..1999`` / ``1990..`` / ``..1999`` / ``1995`` -> an inclusive year range; InvalidRequest otherwise."""
    match = _FORMED_RE.match(text)
    if not match or not (match.group(1) or match.group(3)):
        raise InvalidRequest(f"bad year range {text!r}: use FIRST..LAST, e.g. 1990..1999, 1990.. or ..1999")
    first_text, separator, last_text = match.groups()
    first = int(first_text) if first_text else _YEARS[0]
    last = int(last_text) if last_text else (first if not separator else _YEARS[1])
    if not (_YEARS[0] <= first <= _YEARS[1] and _YEARS[0] <= last <= _YEARS[1]):
        raise InvalidRequest(f"bad year range {text!r}: years must be within {_YEARS[0]}..{_YEARS[1]}")
    if first > last:
        raise InvalidRequest(f"bad year range {text!r}: the first year is after the last")
    return first, last


def find_countries(query: str) -> tuple[str, list[str]]:
    """Countries a free-text query names, in English or a language of :data:`QUERY_LANGUAGES`.

    Returns the query with each translated name replaced by its English name (the embedding model reads
    English) and the alpha-2 codes found, in order. Looks at runs of up to four words, longest first.
    """
    words = _WORD_RE.findall(query)
    english, foreign = _english_names(), _foreign_names()
    out: list[str] = []
    codes: list[str] = []
    i = 0
    while i < len(words):
        for size in range(min(4, len(words) - i), 0, -1):
            folded = normalize_name(" ".join(words[i : i + size]))
            if len(folded) < _MIN_QUERY_NAME:
                continue
            code = english.get(folded)
            name = " ".join(words[i : i + size])
            if code is None and folded in foreign:
                code = foreign[folded]
                name = country_name(code)
            if code is not None:
                out.append(name)
                codes.append(code)
                i += size
                break
        else:
            out.append(words[i])
            i += 1
    return " ".join(out), list(dict.fromkeys(codes))
