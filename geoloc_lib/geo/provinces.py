"""The seven provinces of Pakistan: one table that every other module reads.

Ids and order follow the column order of GEOPAK's CSVs (docs/design.md):
0 Sindh, 1 Punjab, 2 Khyber Pakhtunkhwa, 3 ICT, 4 Gilgit-Baltistan, 5 Balochistan, 6 Azad Kashmir.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Province:
    id: int
    name: str  # canonical spelling written to every output
    key: str  # short key used in column names, e.g. "kpk" -> "kpk_acc"
    aliases: tuple[str, ...]  # other accepted spellings (normalised before matching)
    tau_km: float  # distance-aware label-smoothing temperature
    offset_scale: float  # offsets are bounded to +/- radius_km * offset_scale
    batch_share: float  # share of a province-balanced batch (16/64 for Sindh, 8/64 otherwise)


PROVINCES: tuple[Province, ...] = (
    Province(0, "Sindh", "sindh", ("sind",), 30.0, 1.0, 16 / 64),
    Province(1, "Punjab", "punjab", ("panjab",), 60.0, 0.6, 8 / 64),
    Province(
        2,
        "Khyber Pakhtunkhwa",
        "kpk",
        ("kp", "khyber pakhtoonkhwa", "nwfp", "north west frontier province", "fata"),
        50.0,
        1.0,
        8 / 64,
    ),
    Province(
        3,
        "ICT",
        "ict",
        ("islamabad", "islamabad capital territory", "federal capital territory"),
        10.0,
        0.6,
        8 / 64,
    ),
    Province(4, "Gilgit-Baltistan", "gb", ("gilgit baltistan", "northern areas"), 100.0, 1.4, 8 / 64),
    Province(5, "Balochistan", "balochistan", ("baluchistan", "balochistan province"), 100.0, 1.4, 8 / 64),
    Province(
        6,
        "Azad Kashmir",
        "ajk",
        ("azad jammu and kashmir", "azad jammu kashmir", "ak", "azad kashmir"),
        40.0,
        1.0,
        8 / 64,
    ),
)

NUM_PROVINCES = len(PROVINCES)
PROVINCE_NAMES: tuple[str, ...] = tuple(p.name for p in PROVINCES)


def _normalise(text: str) -> str:
    """Lower-case, '&' -> 'and', and drop everything that is not a letter (spaces, hyphens, dots)."""
    return re.sub(r"[^a-z]", "", str(text).lower().replace("&", "and"))


_LOOKUP: dict[str, Province] = {}
for _p in PROVINCES:
    for _spelling in (_p.name, _p.key, *_p.aliases):
        _LOOKUP[_normalise(_spelling)] = _p


class UnknownProvinceError(ValueError):
    pass


def accepted_spellings() -> str:
    return "; ".join(f"{p.name} (also: {', '.join((p.key, *p.aliases))})" for p in PROVINCES)


def lookup(name: str) -> Province:
    """Return the province for any accepted spelling; raise with the list of spellings otherwise."""
    province = _LOOKUP.get(_normalise(name))
    if province is None:
        raise UnknownProvinceError(f"Unknown province {name!r}. Accepted spellings: {accepted_spellings()}")
    return province


def try_lookup(name: str) -> Province | None:
    return _LOOKUP.get(_normalise(name))


def by_id(province_id: int) -> Province:
    return PROVINCES[int(province_id)]
