"""Which zoo members are ensembles: committees of k models answering together.

A committee's member name starts with ``ENSEMBLE_PREFIX`` (``zoo.committee.committee_name``
makes them, ``add-model`` refuses the prefix for anything else). Committees compete as
answers like any member, but the reference model is the best *single* model, so
``oracle.policy.reference_index`` leaves them out.
"""
from __future__ import annotations

import re
from typing import Sequence

ENSEMBLE_PREFIX = "committee-"


def is_ensemble(name: str) -> bool:
    """Whether zoo member ``name`` is a committee of several models (never the reference)."""
    return str(name).startswith(ENSEMBLE_PREFIX)


def committee_members(name: str, names: Sequence[str]) -> list[str]:
    """The members of committee ``name`` (``committee-<model>x<k>``) among zoo ``names``: the
    first k of ``<model>`` and its seeded copies ``<model>@s<j>`` (in seed order, the plain
    name first), as train-zoo names them. [] when ``name`` is not a committee or fewer than
    k members are in ``names``."""
    m = re.fullmatch(rf"{re.escape(ENSEMBLE_PREFIX)}(.+)x(\d+)", str(name))
    if not m:
        return []
    model, k = m.group(1), int(m.group(2))
    seeded = [(0 if n == model else int(n[len(model) + 2:]), n) for n in names
              if n == model or re.fullmatch(rf"{re.escape(model)}@s\d+", n)]
    members = [n for _, n in sorted(seeded)[:k]]
    return members if len(members) == k else []


def committee_twins(members: Sequence[str], names: Sequence[str]) -> list[list[str]]:
    """Compressed twins of a committee: for every variant suffix ``-<variant>`` that every
    member has a copy with (``tiny_vgg5-int8-static``, ``tiny_vgg5@s1-int8-static``, ...), the
    list of those copies, in member order."""
    if not members:
        return []
    first = members[0]
    suffixes = sorted({n[len(first):] for n in names
                       if n.startswith(first + "-") and len(n) > len(first) + 1})
    have = set(names)
    return [[m + suf for m in members] for suf in suffixes
            if all(m + suf in have for m in members)]
