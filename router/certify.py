"""Certified selection: a budget that holds with a stated risk, from labelled val images.

The promise. For a deployed answer A and the reference model R (the most accurate single model
on val), the per-image loss is ``d = 1[R right] - 1[A right]`` in {-1, 0, 1}, and the expected
accuracy drop is ``mu = E[d] = p_loss - p_gain``. "Certified at level s with risk delta" means:
with probability at least 1 - delta over the draw of the labelled certification images, every
answer this module certifies has ``mu <= s`` (a negative s asks for a gain of at least -s).

The test (``drop_pvalue``): H0 "mu > s" against "mu <= s", from the counts of losses L and gains
G on n images. Under the trinomial model the distribution of T = L - G depends on mu and on the
nuisance q = p_loss + p_gain (the disagreement rate). The p-value is Berger and Boos's (1994):
the largest tail P(T <= t) over the null points whose q lies in an exact (Clopper-Pearson)
1 - gamma upper confidence bound for q, plus gamma. It is valid at every n (no normal
approximation) and adapts to the variance: an answer that rarely disagrees with the reference
has a small q and a tight bound, which Hoeffding's bound (variance-blind) cannot give.

The multiple testing (``fixed_sequence``): the candidates lie on a path ordered from most to
least expensive (``pareto_path``, built on a part of val the certificate does not use); they
are tested in that order at the full level delta and testing stops at the first one that
fails. The family-wise error stays at delta whatever the path's length (Learn-then-Test's
fixed-sequence procedure; Angelopoulos, Bates, Candes, Jordan and Lei, 2021), so every
candidate before the stop is certified at once and the cheapest of them may be deployed.

Numpy and scipy only.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import stats

from router.base import RouterError

DEFAULT_DELTA = 0.1
GAMMA = 1e-3            # share of delta spent on the nuisance bound (Berger-Boos)
_Q_GRID = 48            # nuisance values scanned (plus both ends of the interval)
_PMF_FLOOR = 1e-13      # binomial terms below this are dropped (their sum is < 1e-9)


def check_delta(delta: float) -> float:
    """``delta`` as a float in (0, 0.5], or a RouterError naming the fix."""
    delta = float(delta)
    if not 0.0 < delta <= 0.5:
        raise RouterError(f"delta is the risk that a certified budget is missed, a fraction in "
                          f"(0, 0.5] (0.1 = 10 %), got {delta}")
    return delta


def _tail(t: int, n: int, q: np.ndarray, s: float) -> np.ndarray:
    """P(L - G <= t) for L, G counts of a trinomial(n; p_loss, p_gain) with p_loss + p_gain = q
    and p_loss - p_gain = max(s, -q): the null point with that q that makes the tail largest.
    ``q`` (K,) values in [max(s, 0), 1]; returns (K,)."""
    q = np.asarray(q, dtype=np.float64)
    mu = np.maximum(s, -q)
    out = np.empty(len(q))
    for k, (qk, mk) in enumerate(zip(q, mu)):
        if qk <= 0.0:                       # no disagreement at all: T = 0
            out[k] = 1.0 if t >= 0 else 0.0
            continue
        pi = min(1.0, max(0.0, (qk + mk) / (2.0 * qk)))   # P(loss | disagreement)
        sd = np.sqrt(n * qk * (1 - qk))
        lo = max(0, int(np.floor(n * qk - 9 * sd - 9)))
        hi = min(n, int(np.ceil(n * qk + 9 * sd + 9)))
        d = np.arange(lo, hi + 1)
        pd = stats.binom.pmf(d, n, qk)
        keep = pd > _PMF_FLOOR
        d, pd = d[keep], pd[keep]
        # T = L - G = 2L - D <= t  <=>  L <= floor((t + D) / 2)
        lmax = np.floor((t + d) / 2.0)
        out[k] = float(np.sum(pd * stats.binom.cdf(lmax, d, pi)))
    return np.minimum(out, 1.0)


@functools.lru_cache(maxsize=200_000)
def drop_pvalue(n_loss: int, n_gain: int, n: int, sacrifice: float,
                gamma: float = GAMMA) -> float:
    """Valid p-value for H0 "expected drop > ``sacrifice``" from ``n_loss`` images the answer
    gets wrong and the reference right and ``n_gain`` the reverse, out of ``n`` (see the module
    doc). Small means the drop is certified to be at most ``sacrifice``."""
    n_loss, n_gain, n = int(n_loss), int(n_gain), int(n)
    if n < 1 or n_loss < 0 or n_gain < 0 or n_loss + n_gain > n:
        raise RouterError(f"need 0 <= losses + gains <= n and n >= 1, got {n_loss}, {n_gain}, {n}")
    s = float(sacrifice)
    if s >= 1.0:
        return 0.0                          # no answer can lose more than every image
    disagree = n_loss + n_gain
    q_hi = 1.0 if disagree >= n else float(stats.beta.ppf(1.0 - gamma, disagree + 1, n - disagree))
    q_lo = max(s, 0.0)
    if q_lo > q_hi:                         # no null point inside the nuisance bound
        return gamma
    grid = np.unique(np.concatenate([np.linspace(q_lo, q_hi, _Q_GRID), [q_lo, q_hi]]))
    return float(min(1.0, _tail(n_loss - n_gain, n, grid, s).max() + gamma))


def certifies(n_loss: int, n_gain: int, n: int, sacrifice: float, delta: float) -> bool:
    """Whether the counts certify an expected drop of at most ``sacrifice`` at risk ``delta``."""
    return drop_pvalue(n_loss, n_gain, n, round(float(sacrifice), 10)) <= delta


@functools.lru_cache(maxsize=100_000)
def drop_ucb(n_loss: int, n_gain: int, n: int, delta: float, tol: float = 1e-5) -> float:
    """Upper 1 - ``delta`` confidence bound of the expected drop: the smallest level the counts
    certify (the p-value falls as the level rises; found by bisection to ``tol``)."""
    lo, hi = -1.0, 1.0
    if certifies(n_loss, n_gain, n, lo, delta):
        return lo
    while hi - lo > tol:
        mid = round((lo + hi) / 2.0, 10)
        if certifies(n_loss, n_gain, n, mid, delta):
            hi = mid
        else:
            lo = mid
    return hi


def smallest_certifiable(n: int, delta: float) -> float:
    """The smallest level any answer could be certified at with ``n`` images: the bound of one
    that never disagrees with the reference (cheaper answers that do disagree need more)."""
    return drop_ucb(0, 0, n, delta)


def loss_gain(correct: np.ndarray, reference: np.ndarray) -> tuple[int, int]:
    """(losses, gains) of an answer's per-image correctness against the reference's."""
    c = np.asarray(correct, dtype=bool)
    r = np.asarray(reference, dtype=bool)
    if c.shape != r.shape or c.ndim != 1:
        raise RouterError(f"correct and reference must be (n,) alike, got {c.shape}, {r.shape}")
    return int(np.sum(~c & r)), int(np.sum(c & ~r))


def pareto_path(cost: np.ndarray, drop: np.ndarray, sacrifice: float,
                max_len: int = 24, reference_cost: float | None = None) -> np.ndarray:
    """Indices of the candidates to test, most expensive first.

    The candidates on the (cost, estimated drop) Pareto frontier whose estimated ``drop`` is at
    most ``sacrifice``: going down the path each one is cheaper and (by the estimate) less
    accurate. Where it holds more than ``max_len`` points, ``max_len`` evenly spaced ones are
    kept, always including the cheapest. With ``reference_cost`` and a level >= 0, candidates
    that cost as much as the reference or more are left out (the reference itself answers
    there). Ties in cost go to the lower drop, then to the lower index.
    """
    cost = np.asarray(cost, dtype=np.float64)
    drop = np.asarray(drop, dtype=np.float64)
    ok = np.flatnonzero(drop <= sacrifice + 1e-12)
    if reference_cost is not None and sacrifice >= 0:
        ok = ok[cost[ok] < reference_cost - 1e-12]
    if ok.size == 0:
        return np.zeros(0, dtype=np.int64)
    front, best = [], np.inf
    for i in ok[np.lexsort((ok, drop[ok], cost[ok]))]:      # cheapest first
        if drop[i] < best - 1e-12:                          # beats every cheaper point
            front.append(int(i))
            best = drop[i]
    front = front[::-1]                                     # most expensive first
    if len(front) > max_len:
        pick = np.unique(np.round(np.linspace(0, len(front) - 1, max_len)).astype(int))
        front = [front[k] for k in pick]
    return np.asarray(front, dtype=np.int64)


def fixed_sequence(counts: Sequence[tuple[int, int]], n: int, sacrifice: float,
                   delta: float) -> int:
    """How many leading hypotheses of a path are certified: test (losses, gains) in order at
    the full level ``delta``, stop at the first that fails. Family-wise error <= delta."""
    k = 0
    for n_loss, n_gain in counts:
        if not certifies(n_loss, n_gain, n, sacrifice, delta):
            break
        k += 1
    return k


def split_calibration(n: int, select_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (select, certify) positions of n val images: the path and every data-fitted
    setting are chosen on the first part, the certificate uses only the second."""
    if not 0.0 < select_share < 1.0:
        raise RouterError(f"select_share must be in (0, 1), got {select_share}")
    if n < 4:
        raise RouterError(f"certified selection needs at least 4 val images, got {n}")
    perm = np.random.default_rng(seed + 7919).permutation(n)
    k = min(n - 2, max(2, int(round(n * select_share))))
    return np.sort(perm[:k]), np.sort(perm[k:])


@dataclass
class Certificate:
    """What the certification part of val says about one answer at one level."""

    sacrifice: float
    delta: float
    n: int                      # certification images
    n_loss: int                 # images the answer gets wrong and the reference right
    n_gain: int                 # the reverse
    certified: bool
    ucb: float | None = None    # upper 1 - delta bound of the drop (None: computed when asked)
    reason: str = ""            # why it is (or is not) certified, in words

    @property
    def drop_ucb(self) -> float:
        """Upper 1 - delta confidence bound of the expected drop (computed once, on demand)."""
        if self.ucb is None:
            self.ucb = drop_ucb(self.n_loss, self.n_gain, self.n, self.delta)
        return self.ucb

    @property
    def drop(self) -> float:
        return (self.n_loss - self.n_gain) / self.n if self.n else 0.0

    def statement(self) -> str:
        """The promise in plain words."""
        if self.certified:
            return (f"with probability >= {1 - self.delta:.0%} over the draw of the {self.n} "
                    f"labelled certification images, the expected accuracy drop against the "
                    f"reference is at most {100 * self.sacrifice:.2f} points (bound "
                    f"{100 * self.drop_ucb:.2f})")
        return self.reason or "not certified"

    def to_dict(self) -> dict:
        return {"sacrifice": self.sacrifice, "delta": self.delta, "n": self.n,
                "n_loss": self.n_loss, "n_gain": self.n_gain, "certified": self.certified,
                "drop_ucb": self.drop_ucb, "reason": self.reason}


def certificate(correct: np.ndarray, reference: np.ndarray, sacrifice: float, delta: float,
                certified: bool, reason: str = "") -> Certificate:
    """A ``Certificate`` from per-image correctness on the certification part."""
    n_loss, n_gain = loss_gain(correct, reference)
    n = len(np.asarray(correct))
    return Certificate(float(sacrifice), float(delta), n, n_loss, n_gain, bool(certified),
                       None, reason)


@dataclass
class PathResult:
    """A fixed-sequence run over one path: which of its candidates are certified."""

    path: list[int]                                   # candidate ids, most expensive first
    counts: list[tuple[int, int]]                     # (losses, gains) on the certify part
    n_certified: int                                  # leading candidates certified
    stopped_at: int | None = None                     # candidate id that failed (None: none)
    extra: dict = field(default_factory=dict)

    @property
    def certified(self) -> list[int]:
        return self.path[:self.n_certified]


@dataclass
class PoolEntry:
    """One candidate answer at one level, as the select part estimates it."""

    family: str                      # "single" or a router kind's name
    key: Any                         # family-specific: model, candidate index, tau, router
    cost: float                      # expected ms per image, the router's own time included
    drop: float                      # estimated drop against the reference on the select part
    se: float = 0.0                  # paired standard error of that estimate ...
    n: int = 1                       # ... from this many images

    def predicted_bound(self, n_certify: int, z: float,
                        estimate_weight: float | None = None) -> float:
        """The drop bound the certify part is expected to give: the estimate plus ``z``
        standard errors for the certify part's own noise and ``z x estimate_weight`` (default
        ``ESTIMATE_WEIGHT``) for the estimate's (it was read off a few images and among many
        candidates). The per-image variance is floored at two disagreements' worth, so an
        answer that happened to agree with the reference on every select image does not look
        certain (low for answers that rarely disagree)."""
        return float(predicted_bounds([self], n_certify, z, estimate_weight)[0])


def predicted_bounds(pool: Sequence[PoolEntry], n_certify: int, z: float,
                     estimate_weight: float | None = None) -> np.ndarray:
    """``PoolEntry.predicted_bound`` of every entry at once (vectorised: a path is drawn from
    about 1.5 million candidates where committee cascades of three stages are simulated)."""
    k = len(pool)
    drop = np.fromiter((e.drop for e in pool), dtype=np.float64, count=k)
    se = np.fromiter((e.se for e in pool), dtype=np.float64, count=k)
    n = np.maximum(1, np.fromiter((e.n for e in pool), dtype=np.float64, count=k))
    w = ESTIMATE_WEIGHT if estimate_weight is None else float(estimate_weight)
    var = np.maximum(se ** 2 * n, 2.0 / n)
    return drop + z * np.sqrt(var) * (1.0 / np.sqrt(max(1, n_certify)) + w / np.sqrt(n))


# weight of the estimate's own noise in the predicted bound: chosen on resampled val-only
# draws of the standard run (`bench_guarantee --population val`): 1.0 cost 5-7 % of the
# expected speedup at s = 2 %, 0.5 and 0.25 did as well as no guard; 0.5 keeps a guard for
# candidates read off a few hundred images (a dispatcher's held-out part)
ESTIMATE_WEIGHT = 0.5


def path_z(delta: float) -> float:
    """Standard errors (of each noise: the certify part's and the estimate's own) added to a
    select-part estimate to predict the certify part's bound: the one-sided normal quantile
    at ``delta``."""
    return float(stats.norm.ppf(1.0 - delta))


