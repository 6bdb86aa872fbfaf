"""router.selection: the cheapest adequate single model and the val-side selection, worked by
hand; and the two timing parts a router is charged with (its own routing, a cascade's waste)."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from router.base import Router, RouterError
from router.execute import Timing, benchmark, execute_cascade, execute_routed
from router.kind import candidate
from router.kind_cascade import CascadeKind
from router.kind_dispatchers import LabelDispatcherKind
from router.selection import Candidate, cheapest_single, select_deployable
from zoo.data import DatasetInfo


def crafted_val() -> np.ndarray:
    """10 val images, models by cost [1, 2, 3]: model 0 right on 8, model 1 on 9, model 2
    (the reference) on all 10; every image model 0 or 1 gets right, the reference does too."""
    c = np.ones((10, 3), dtype=bool)
    c[[0, 1], 0] = False
    c[0, 1] = False
    return c


@pytest.mark.parametrize("s, z, expected", [
    (0.1, 0.0, 1),   # target 0.9: model 1 at 0.9 meets it, model 0 (0.8) does not
    (0.1, 1.0, 2),   # model 1: paired SE 0.1 (1 loss in 10) -> bound 0.8 < 0.9: the reference
    (0.2, 0.0, 0),   # target 0.8: model 0 at 0.8
    (0.2, 1.0, 1),   # model 0: SE sqrt(0.16*10/9/10)=0.1333 -> 0.667 < 0.8; model 1: 0.8 >= 0.8
    (0.0, 1.0, 2),   # no sacrifice: only the reference
])
def test_cheapest_single_by_hand(s, z, expected):
    costs = np.array([1.0, 2.0, 3.0])
    m, bound = cheapest_single(crafted_val(), costs, reference=2, target=1.0 - s, z=z)
    assert m == expected
    assert bound >= 1.0 - s - 1e-9


def test_cheapest_single_follows_costs_not_column_order():
    c = crafted_val()[:, [2, 1, 0]]            # reference first, the 0.8 model last
    m, _ = cheapest_single(c, np.array([3.0, 2.0, 1.0]), reference=0, target=0.8, z=0.0)
    assert m == 2


def test_cheapest_single_rejects_misaligned_inputs():
    with pytest.raises(RouterError, match="val_correct"):
        cheapest_single(crafted_val(), np.array([1.0, 2.0]), reference=1, target=0.9)


def test_select_deployable_least_expected_cost_meeting_the_target():
    cands = [Candidate("cheapest-single", 0.90, 2.0, True),
             Candidate("cascade", 0.91, 1.2, True),
             Candidate("dispatcher-label", 0.80, 0.5, False),     # cheaper, but misses on val
             Candidate("dispatcher-sample", 0.90, 1.5, True)]
    assert select_deployable(cands).method == "cascade"
    # at an equal expected cost the single model wins (simpler), then the simpler kind
    tie = [candidate(CascadeKind, 0.9, 2.0, True), Candidate("cheapest-single", 0.9, 2.0, True)]
    assert select_deployable(tie).method == "cheapest-single"
    tie = [candidate(LabelDispatcherKind, 0.9, 2.0, True), candidate(CascadeKind, 0.9, 2.0, True)]
    assert select_deployable(tie).method == "cascade"
    with pytest.raises(RouterError, match="cheapest-single"):
        select_deployable([Candidate("cascade", 0.5, 1.0, False)])


INFO = DatasetInfo(name="t", num_classes=10, in_channels=1, input_size=2,
                   classes=[str(i) for i in range(10)], mean=[0.0], std=[1.0])


class SleepyModel(nn.Module):
    """Sleeps ``delay`` seconds per call; confident (class 0) on dark images, unsure on bright."""

    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        bright = x.flatten(1).mean(1) > 0.5
        logits = torch.zeros(len(x), 10)
        logits[~bright, 0] = 10.0
        return logits


class SleepyRouter(Router):
    """Sends everything to model 0 after sleeping ``delay`` seconds."""

    def __init__(self, delay: float):
        self.model_names = ["m"]
        self.delay = delay

    def route(self, images: torch.Tensor) -> np.ndarray:
        time.sleep(self.delay)
        return np.zeros(len(images), dtype=np.int64)


def test_a_sleeping_routing_step_shows_in_router_seconds():
    x = torch.zeros(8, 1, 2, 2, dtype=torch.uint8)
    res = execute_routed(SleepyRouter(0.05), x, [SleepyModel(0.0)], [INFO], batch_size=4)
    assert res.router_seconds >= 0.05                 # the sleep is routing, not model time
    assert res.seconds - res.model_seconds == pytest.approx(res.router_seconds)
    assert res.wasted_seconds == 0.0
    _, timing = benchmark(lambda: execute_routed(SleepyRouter(0.03), x, [SleepyModel(0.0)],
                                                 [INFO], 4), 8, warmup=0, repeats=2)
    assert timing.router_seconds >= 0.03
    # by hand: 0.5 s of routing and 0.25 s wasted in a 1.5 s run is half of it overhead
    assert Timing(1.5, 0.5, 8, 1, 1, 0, wasted_seconds=0.25).overhead_share == 0.5


def test_cascade_wasted_seconds_is_the_first_stage_time_on_escalated_images():
    # 8 images in batches of 4: the first batch is dark (answered by stage 1), the second bright
    # (all escalate), so the waste is the first stage's second batch: one 40 ms call
    x = torch.cat([torch.zeros(4, 1, 2, 2), torch.full((4, 1, 2, 2), 255.0)]).to(torch.uint8)
    models = [SleepyModel(0.04), SleepyModel(0.0)]
    res = execute_cascade([0, 1], [0.5, 0.0], x, models, [INFO, INFO], batch_size=4)
    assert list(res.chosen) == [0] * 4 + [1] * 4
    assert 0.04 <= res.wasted_seconds < 0.04 + 0.03
    # mixed batches: half of each batch escalates -> half of both calls
    mixed = x[[0, 4, 1, 5, 2, 6, 3, 7]]
    res = execute_cascade([0, 1], [0.5, 0.0], mixed, models, [INFO, INFO], batch_size=4)
    assert 0.04 <= res.wasted_seconds < 0.04 + 0.03
    # nothing escalates: nothing wasted
    res = execute_cascade([0, 1], [0.5, 0.0], x[:4], models, [INFO, INFO], batch_size=4)
    assert res.wasted_seconds == 0.0


def test_cost_matched_random_router_mixes_hull_neighbours_by_hand():
    from router.scoring import cost_accuracy_hull, random_matched
    cost = np.array([1.0, 2.0, 3.0, 4.0])
    acc = np.array([0.80, 0.82, 0.88, 0.90])
    # (2, 0.82) lies below the chord from (1, 0.80) to (3, 0.88), which passes 0.84 there
    assert cost_accuracy_hull(cost, acc).tolist() == [0, 2, 3]
    rng = np.random.default_rng(0)
    assign, q = random_matched(2.0, cost, acc, 10, rng)
    assert q.tolist() == [0.5, 0.0, 0.5, 0.0]                # halfway between costs 1 and 3
    assert sorted(assign.tolist()) == [0] * 5 + [2] * 5
    assert random_matched(0.5, cost, acc, 4, rng)[1].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert random_matched(9.0, cost, acc, 4, rng)[1].tolist() == [0.0, 0.0, 0.0, 1.0]
    # a dearer, less accurate model never enters the hull
    assert cost_accuracy_hull(np.array([1.0, 5.0, 3.0]), np.array([0.8, 0.85, 0.9])).tolist() \
        == [0, 2]


def test_budget_status_by_hand_and_no_promise_below_zero():
    from router.scoring import NO_PROMISE, budget_status
    assert budget_status(True, 0.4) == "held"
    assert budget_status(False, -1.0) == "within test noise"       # missed by < 1.96 SEs
    assert budget_status(False, -2.5) == "violated"
    # below zero, nothing certified: the reference answered and promised nothing
    assert budget_status(False, -2.5, -0.001, False) == NO_PROMISE
    # a certified negative level is judged like any other; so is an uncertified s = 0
    assert budget_status(False, -2.5, -0.001, True) == "violated"
    assert budget_status(False, -2.5, 0.0, False) == "violated"
