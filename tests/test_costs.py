"""zoo.costs: MACs and parameters against hand-worked values; timing and memory invariants."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import zoo
from common.tables import CostTable
from zoo.checkpoint import register_arch_kind, save_checkpoint
from zoo.costs import (CostSettings, count_macs, count_params, macs_model, measure_cost,
                       time_latency)


def test_macs_of_one_conv_and_one_linear():
    # conv 3->8, 3x3, padding 1 on 10x10: H*W*Cout*Cin*9 = 10*10*8*3*9 = 21,600 (bias not counted)
    assert count_macs(nn.Conv2d(3, 8, 3, padding=1), (1, 3, 10, 10)) == 21_600
    # no padding: output 8x8 -> 8*8*8*3*9 = 13,824
    assert count_macs(nn.Conv2d(3, 8, 3), (1, 3, 10, 10)) == 13_824
    # linear: in*out = 20*7 = 140
    assert count_macs(nn.Linear(20, 7), (1, 20)) == 140
    # the count is per forward pass: batch 4 is four times batch 1
    assert count_macs(nn.Linear(20, 7), (4, 20)) == 560


def test_macs_of_tiny_vgg1():
    m = zoo.create_model("tiny_vgg1", num_classes=10, in_channels=1, input_size=28)
    # conv 1->64 on 28x28:          28*28*64*1*9 =   451,584
    # pool -> 64x14x14 = 12,544 features
    # Linear 12,544->512:           12,544*512   = 6,422,528
    # Linear 512->512:              512*512      =   262,144
    # Linear 512->10:               512*10       =     5,120
    # ReLU, pooling, dropout, biases: not counted  total 7,141,376
    assert count_macs(m, (1, 1, 28, 28)) == 7_141_376
    # width 0.25 on a 3-channel 16x16 input: conv 3->16: 16*16*16*3*9 = 110,592;
    # 16x8x8 = 1,024 features: 1,024*512 = 524,288; 262,144; 512*10 = 5,120 -> 902,144
    m = zoo.create_model("tiny_vgg1", num_classes=10, in_channels=3, input_size=16, width=0.25)
    assert count_macs(m, (1, 3, 16, 16)) == 902_144


def test_params_and_nonzero_params_float_and_quantized():
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0., 1., 0., 2.], [3., 0., 0., 4.], [0., 5., 6., 0.]]))
        lin.bias.copy_(torch.tensor([0.5, 0., -1.]))
    model = nn.Sequential(lin)
    # 12 weights + 3 biases = 15; non-zero: 6 weights + 2 biases = 8
    assert count_params(model) == (15, 8)
    # dynamic int8: weights live in packed params (no nn.Parameter); zeros stay zeros
    q = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    assert sum(p.numel() for p in q.parameters()) == 0
    assert count_params(q) == (15, 8)
    # BatchNorm running stats are buffers, not parameters: only weight + bias count
    bn = nn.Sequential(nn.BatchNorm2d(5))
    assert count_params(bn) == (10, 5)   # weight ones (5 non-zero), bias zeros


def _twin_builder(arch):
    # a "compressed" module that is deliberately a different (smaller) network than float_arch
    return nn.Sequential(nn.Flatten(), nn.Linear(arch["in_features"], 2))


def test_compressed_kind_is_counted_on_float_arch():
    register_arch_kind("test-twin", _twin_builder)
    float_arch = zoo.model_arch("tiny_vgg1", num_classes=10, in_channels=1, input_size=28)
    arch = {"kind": "test-twin", "in_features": 784, "float_arch": float_arch.to_dict()}
    model, source = macs_model(arch)
    assert source == "float_arch"
    assert count_macs(model, (1, 1, 28, 28)) == 7_141_376
    with pytest.warns(UserWarning, match="float_arch"):
        model, source = macs_model({"kind": "test-twin", "in_features": 784})
    assert count_macs(model, (1, 1, 28, 28)) == 784 * 2


def test_measure_cost_invariants_and_cost_table_round_trip(tmp_path):
    m = zoo.create_model("tiny_vgg1", num_classes=10, in_channels=1, input_size=28, width=0.25)
    path = save_checkpoint(tmp_path / "c.pt", model_name="t1", arch=m.arch.to_dict(),
                           state_dict=m.state_dict())
    settings = CostSettings(threads=1, throughput_batch=32, budget_s=0.3, memory="rss")
    images = torch.randn(10, 1, 28, 28)  # fewer than the batch: tiled to 32
    cost = measure_cost("t1", path, images, settings)
    assert cost.macs == count_macs(m, (1, 1, 28, 28))
    assert (cost.params, cost.nonzero_params) == count_params(m)
    assert cost.size_mb == path.stat().st_size / 1e6
    assert cost.extra["latency_runs"] >= 20 and cost.extra["throughput_repeats"] >= 3
    assert cost.latency_ms_b1 > 0 and cost.images_per_second > 0 and cost.throughput_batch == 32
    assert cost.extra["threads"] == 1 and len(cost.extra["checkpoint_sha256"]) == 64
    assert cost.peak_memory_mb >= 0 and not math.isnan(cost.peak_memory_mb)
    assert cost.extra["memory_method"].startswith("rss-subprocess")
    table = CostTable({"t1": cost}, {"cpu": "x", "threads": 1})
    table.save(tmp_path / "costs.json")
    back = CostTable.load(tmp_path / "costs.json")
    assert back.models["t1"] == cost and back.machine == {"cpu": "x", "threads": 1}
    assert back["t1"].ms_per_image == pytest.approx(1000 / cost.images_per_second)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="threads"):
        CostSettings(threads=0)
    with pytest.raises(ValueError, match="memory"):
        CostSettings(memory="psutil")
    with pytest.raises(ValueError, match="batch 1"):
        time_latency(nn.Identity(), torch.zeros(2, 1), CostSettings())
