"""The router kinds: ``ROUTER_KINDS`` is the one table of them (name -> class).

``fit_router``, ``evaluate-routers`` (fit, certified path, scoring, saving), the artifacts,
the page and the report styles all loop over this table, so adding a kind is one module
(``router/kind_<name>.py``: a ``router.kind.RouterKind`` subclass) and one line here. The
order is the order of their rows in routers.csv.
"""
from __future__ import annotations

from router.base import Router, RouterError
from router.kind import RouterKind
from router.kind_cascade import CascadeKind
from router.kind_committee import CommitteeCascadeKind
from router.kind_dispatchers import LabelDispatcherKind, SampleDispatcherKind
from router.kind_learned import LearnedCascadeKind

ROUTER_KINDS: dict[str, type[RouterKind]] = {
    k.name: k for k in (LabelDispatcherKind, SampleDispatcherKind, CascadeKind,
                        LearnedCascadeKind, CommitteeCascadeKind)}


def kind_named(name: str) -> type[RouterKind]:
    """The kind class called ``name``, or a RouterError listing the known ones."""
    if name not in ROUTER_KINDS:
        raise RouterError(f"unknown router kind {name!r}; use one of {tuple(ROUTER_KINDS)}")
    return ROUTER_KINDS[name]


def kind_of(router: Router) -> type[RouterKind]:
    """The kind that deploys ``router`` (its most specific class wins)."""
    owners = [k for k in ROUTER_KINDS.values() if k.owns(router)]
    if not owners:
        raise RouterError(f"{type(router).__name__} is not a router of any registered kind "
                          f"{tuple(ROUTER_KINDS)} (oracle routers need the true label and are "
                          "not deployable)")
    return owners[0]


def kind_records() -> list[dict]:
    """Name, family, style and simplicity of every kind (``RUN/results/router_kinds.json``)."""
    return [k.record() for k in ROUTER_KINDS.values()]


def kind_families() -> tuple[str, ...]:
    """The families of the registered kinds, in the table's order (deployable routers)."""
    return tuple(dict.fromkeys(k.family for k in ROUTER_KINDS.values()))
