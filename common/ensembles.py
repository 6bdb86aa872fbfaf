"""Which zoo members are ensembles: committees of k models answering together.

A committee's member name starts with ``ENSEMBLE_PREFIX`` (``zoo.committee.committee_name``
makes them, ``add-model`` refuses the prefix for anything else). Committees compete as
answers like any member, but the reference model is the best *single* model, so
``oracle.policy.reference_index`` leaves them out.
"""
from __future__ import annotations

ENSEMBLE_PREFIX = "committee-"


def is_ensemble(name: str) -> bool:
    """Whether zoo member ``name`` is a committee of several models (never the reference)."""
    return str(name).startswith(ENSEMBLE_PREFIX)
