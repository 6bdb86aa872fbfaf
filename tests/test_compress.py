"""zoo.compress and the `compress` script: pruning, 4-bit packing, every variant, the table.

Hand-worked cases for the pruning rules, round trips through real checkpoint files for every
variant of a tiny VGG, and `compress` end to end on a tiny run directory (which `profile-zoo`
then picks up). Everything runs on width-0.25 tiny VGGs, one thread, a few hundred images.
"""
from __future__ import annotations

import datetime as dt
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import zoo
from common.io import read_csv, read_json, write_json
from zoo.checkpoint import file_sha256, load_model, save_checkpoint
from zoo import quant
from zoo.compress.bench import Target, accuracy_targets, cost_targets
from zoo.compress.measure import COLUMNS, EXTRA_COLUMNS
from zoo.resolution import ResizedVGG, resized_arch
from zoo.compress.structured import (apply_plan, conv_modules, filter_norms, filters_to_keep,
                                     fold_batchnorm, masked_copy, plan_pruning, prune_filters,
                                     select_layers)
from zoo.compress.unstructured import (dense_from_sparse, global_magnitude_masks, gradual_prune,
                                       prunable, sparse_state, sparsity_report, step_targets,
                                       write_sparse_file)
from zoo.compress.variants import CompressContext, make_variant, parse_variant
from zoo.costs import count_macs, macs_model
from zoo.data import prepare_data
from zoo.rundir import RunConfig, RunDir
from zoo.vgg import VGG, VGGArch

ALL_VARIANTS = ["struct-l1-30", "struct-l2-10-deep", "unstruct-30", "int8-dynamic",
                "int8-static", "qat8", "qat4", "prune+int8", "res-20"]


def tiny_arch(batch_norm: bool = True, name: str = "tiny_vgg3") -> VGGArch:
    """tiny_vgg3 at width 0.25 (convs 16, 16, M, 32, 32, M) on 1x28x28, 10 classes."""
    arch = zoo.model_arch(name, num_classes=10, in_channels=1, input_size=28, width=0.25)
    return replace(arch, batch_norm=batch_norm)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine weights (folding must use them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.4 * torch.rand(n, generator=g) - 0.2)
    return model.eval()


def hand_vgg() -> VGG:
    """convs 1->4->3 on 4x4, one pool -> 3x2x2 = 12 features -> Linear(12, 6) -> Linear(6, 5)."""
    torch.manual_seed(0)
    return VGG(VGGArch(cfg=[4, 3, "M"], in_channels=1, num_classes=5, input_size=4,
                       classifier=[6], dropout=0.0)).eval()


# ---- structured pruning ---------------------------------------------------------------------

def test_pruning_removes_exactly_the_lowest_l1_filters_and_matches_the_masked_model():
    model = hand_vgg()
    conv0 = conv_modules(model)[0]
    with torch.no_grad():
        # filter k is constant v_k over its 1x3x3 kernel: L1 norm = 9 |v_k| = 4.5, 0.9, 2.7, 0.45
        for k, v in enumerate([0.5, -0.1, 0.3, -0.05]):
            conv0.weight[k].fill_(v)
        conv0.bias.copy_(torch.tensor([0.1, 0.2, -0.1, 0.3]))
    assert filter_norms(conv0, "l1").tolist() == pytest.approx([4.5, 0.9, 2.7, 0.45])
    plan = plan_pruning(model, 0.5, "l1", [0])          # drop round(0.5 * 4) = 2 filters
    assert plan.keep[0].tolist() == [0, 2]              # filters 1 and 3 had the lowest norms
    pruned = apply_plan(model, plan)
    assert pruned.arch.cfg == [2, 3, "M"]
    p0, p1 = conv_modules(pruned)
    o1 = conv_modules(model)[1]
    assert torch.equal(p0.weight, conv0.weight[[0, 2]])
    assert torch.equal(p0.bias, conv0.bias[[0, 2]])
    assert torch.equal(p1.weight, o1.weight[:, [0, 2]])  # the next conv's inputs follow
    assert torch.equal(p1.bias, o1.bias)
    x = torch.randn(7, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_copy(model, plan)(x), rtol=0, atol=1e-6)
        # and the masked model really differs from the original: the test can fail
        assert not torch.allclose(model(x), masked_copy(model, plan)(x))


def test_pruning_the_last_conv_drops_the_first_linears_columns():
    model = hand_vgg()
    conv1 = conv_modules(model)[1]
    with torch.no_grad():
        for k, v in enumerate([0.2, -0.01, 0.3]):        # filter 1 has the lowest norm
            conv1.weight[k].fill_(v)
    plan = plan_pruning(model, 1 / 3, "l2", [1])         # drop round(3 / 3) = 1 filter
    assert plan.keep[1].tolist() == [0, 2]
    pruned = apply_plan(model, plan)
    # flatten order (C, H, W): channel c owns columns 4c .. 4c+3 of the first Linear (2x2 maps)
    lin_old, lin_new = model.classifier[0], pruned.classifier[0]
    assert lin_new.weight.shape == (6, 8)
    assert torch.equal(lin_new.weight, lin_old.weight[:, [0, 1, 2, 3, 8, 9, 10, 11]])
    assert torch.equal(pruned.classifier[-1].weight, model.classifier[-1].weight)
    x = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_copy(model, plan)(x), rtol=0, atol=1e-6)


def test_l1_and_l2_rank_filters_differently():
    conv = nn.Conv2d(1, 2, 3)
    with torch.no_grad():
        conv.weight[0].fill_(1.0)                  # L1 = 9, L2 = 3
        conv.weight[1].zero_()
        conv.weight[1, 0, 0, 0] = 4.0              # L1 = 4, L2 = 4
    assert filter_norms(conv, "l1").tolist() == [9.0, 4.0]
    assert filter_norms(conv, "l2").tolist() == [3.0, 4.0]
    assert filters_to_keep(conv, 0.5, "l1").tolist() == [0]   # L1 drops filter 1
    assert filters_to_keep(conv, 0.5, "l2").tolist() == [1]   # L2 drops filter 0
    with pytest.raises(ValueError, match="norm"):
        filter_norms(conv, "l3")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        filters_to_keep(conv, 1.0, "l1")


def test_layer_selection():
    assert select_layers(4, "deep") == [2, 3]
    assert select_layers(16, "deep") == list(range(8, 16))
    assert select_layers(4, "all") == [0, 1, 2, 3]
    assert select_layers(4, "3,1") == [1, 3]
    assert select_layers(4, "1.3") == [1, 3]                    # the form used in variant names
    with pytest.raises(ValueError, match="convs 0..3"):
        select_layers(4, "1,7")
    with pytest.raises(ValueError, match="deep"):
        select_layers(4, "last")


def test_batchnorm_folding_keeps_the_outputs_and_pruning_a_bn_model_matches_its_mask():
    model = randomize_bn(VGG(tiny_arch(batch_norm=True)))
    folded = fold_batchnorm(model)
    assert not folded.arch.batch_norm
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
        pruned, plan = prune_filters(model, 0.3, "l1", "deep")
        assert plan.layers == [2, 3]
        assert pruned.arch.cfg == [16, 16, "M", 22, 22, "M"]   # round(0.3 * 32) = 10 dropped
        torch.testing.assert_close(pruned(x), masked_copy(folded, plan)(x), rtol=0, atol=1e-5)


# ---- unstructured pruning -------------------------------------------------------------------

def test_global_magnitude_masks_pick_the_smallest_weights_across_layers():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -0.9], [0.5, -0.2]]))
        model[1].weight.copy_(torch.tensor([[0.3, -0.05]]))
    masks = global_magnitude_masks(model, 0.5)   # 6 weights -> the 3 smallest |w| go
    assert masks["0"].tolist() == [[0.0, 1.0], [1.0, 0.0]]      # 0.1 and 0.2 pruned
    assert masks["1"].tolist() == [[1.0, 0.0]]                  # 0.05 pruned; 0.3 stays
    # a weight already masked stays masked even though it is now the largest
    with torch.no_grad():
        model[1].weight[0, 1] = 5.0
    more = global_magnitude_masks(model, 4 / 6, masks)
    assert more["1"][0, 1] == 0 and int(sum((1 - m).sum() for m in more.values())) == 4
    assert more["1"][0, 0] == 0                                  # 0.3: smallest still alive


def test_gradual_pruning_hits_each_steps_target_and_masks_survive_finetuning():
    model = VGG(tiny_arch(batch_norm=False))
    total = sum(m.weight.numel() for _, m in prunable(model))
    seen: list[float] = []
    zero_sets: list[set[int]] = []
    g = torch.Generator().manual_seed(0)

    def finetune(m: nn.Module, step: int) -> None:
        # move every underlying weight away from zero, pruned ones included (away, so that no
        # live weight lands exactly on 0.0): the masks must keep the pruned ones at zero
        with torch.no_grad():
            for _, mod in prunable(m):
                step_size = 0.01 * torch.randn(mod.weight_orig.shape, generator=g).abs()
                mod.weight_orig.add_(mod.weight_orig.sign() * step_size)
                mod.weight = mod.weight_orig * mod.weight_mask   # what the forward pre-hook does
        seen.append(sparsity_report(m)["overall"])
        flat = torch.cat([mod.weight.flatten() for _, mod in prunable(m)])
        zero_sets.append(set(torch.nonzero(flat == 0).flatten().tolist()))

    assert step_targets(0.6, 3) == pytest.approx([0.2, 0.4, 0.6])
    res = gradual_prune(model, 0.6, steps=3, finetune=finetune)
    expected = [round(t * total) / total for t in (0.2, 0.4, 0.6)]
    assert res.achieved == expected
    assert seen == expected                        # still exact after the weights moved
    assert zero_sets[0] <= zero_sets[1] <= zero_sets[2]   # nothing pruned ever comes back
    # per step, the amount is rescaled to what is left: step 2 removes (0.4-0.2)/(1-0.2) = 25%
    alive1, alive2 = total - len(zero_sets[0]), total - len(zero_sets[1])
    assert (alive1 - alive2) / alive1 == pytest.approx(0.25, abs=2 / total)
    # masks are permanent: no re-parametrisation left, the zeros are in the plain weights
    keys = model.state_dict().keys()
    assert not any(k.endswith("_mask") or k.endswith("_orig") for k in keys)
    assert sparsity_report(model)["overall"] == expected[-1]


def test_sparse_file_round_trip_and_size(tmp_path):
    model = VGG(tiny_arch(batch_norm=False))
    gradual_prune(model, 0.8, steps=2)
    state = sparse_state(model)
    dense = dense_from_sparse(state)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(dense[k], v.half().float(), rtol=0, atol=0)
    size = write_sparse_file(model, tmp_path / "sparse.pt")
    dense_path = save_checkpoint(tmp_path / "dense.pt", model_name="m", arch={},
                                 state_dict=model.state_dict())
    # 20% of the weights at 2 bytes + 1 bit per weight ~ 0.4 + 0.125 of 4 bytes: about 14%
    assert size < 0.2 * dense_path.stat().st_size


# ---- 4-bit packing --------------------------------------------------------------------------

def test_int4_pack_unpack_is_lossless():
    every = torch.arange(-8, 8, dtype=torch.int8)
    packed = quant.pack_int4(every)
    assert packed.dtype == torch.uint8 and packed.numel() == 8
    # low nibble first, stored as value + 8: (-8, -7) -> 0x10, (6, 7) -> 0xFE
    assert int(packed[0]) == 0x10 and int(packed[-1]) == 0xFE
    assert torch.equal(quant.unpack_int4(packed, 16), every)
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 7, 1001):                                 # odd lengths pad one nibble
        v = torch.randint(-8, 8, (n,), generator=g, dtype=torch.int8)
        p = quant.pack_int4(v)
        assert p.numel() == math.ceil(n / 2)
        assert torch.equal(quant.unpack_int4(p, n), v)
    with pytest.raises(ValueError, match="4 bits"):
        quant.pack_int4(torch.tensor([8]))
    with pytest.raises(ValueError, match="4 bits"):
        quant.pack_int4(torch.tensor([-9]))


# ---- every variant: build, save, load, same outputs -------------------------------------------

@pytest.fixture(scope="module")
def bn_base() -> VGG:
    torch.manual_seed(0)
    model = randomize_bn(VGG(tiny_arch(batch_norm=True)))
    with torch.no_grad():   # a head of normal scale, so logits differ visibly between variants
        for m in model.classifier:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
    return model.eval()


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_every_variant_runs_saves_and_loads_back_the_same(name, bn_base, tmp_path):
    ctx = CompressContext(finetune_epochs=0, calib_images=32, cost_only_input=(1, 28, 28),
                          progress=False)
    spec = parse_variant(name)
    v = make_variant(bn_base, spec, ctx)
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = v.model(x)
        y_base = bn_base(x)
    assert y.shape == (6, 10) and torch.isfinite(y).all()
    path = save_checkpoint(tmp_path / name / "checkpoint.pt", model_name=f"b-{name}",
                           arch=v.arch, state_dict=v.state_dict, parent="b")
    loaded, ckpt = load_model(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), y)
    assert ckpt["arch"] == v.arch and ckpt["arch"]["kind"] in (
        "pruned", "sparse", "quantized", "qat4-packed", "resized")
    # the variant is a real change; quantization alone stays close to the base (pruning and a
    # smaller input are not expected to, without the fine-tuning this test leaves out)
    rel = float((y - y_base).norm() / y_base.norm())
    assert rel > 1e-4
    if name in ("int8-dynamic", "int8-static", "qat8"):
        assert rel < 0.1, rel
    fa = VGGArch.from_dict(v.arch["float_arch"])
    if spec.method in ("struct", "prune+int8"):
        assert sum(c for c in fa.cfg if c != "M") < 96     # channels physically removed
    if name == "unstruct-30":
        assert sparsity_report(loaded)["overall"] == pytest.approx(0.3, abs=1e-4)
    if name == "int8-static":
        kinds = {type(m).__name__ for m in loaded.modules()}
        assert "ConvReLU2d" in kinds and "LinearReLU" in kinds      # fused, quantized
        assert all("quantized" in type(m).__module__ for m in loaded.modules()
                   if type(m).__name__ in ("ConvReLU2d", "LinearReLU"))
    if name == "qat4":
        for _, m in quant.quantized_layers(loaded):
            ints = m.weight().int_repr()
            assert int(ints.min()) >= -8 and int(ints.max()) <= 7
        int8_size = save_checkpoint(tmp_path / "int8.pt", model_name="x", arch={},
                                    state_dict=loaded.inner.state_dict()).stat().st_size
        assert path.stat().st_size < 0.62 * int8_size   # weights at half a byte, not one
    if name == "res-20":
        assert isinstance(loaded, ResizedVGG) and fa.input_size == 20


def test_qat4_packed_state_holds_half_a_byte_per_weight(bn_base):
    ctx = CompressContext(finetune_epochs=0, calib_images=16, cost_only_input=(1, 28, 28))
    v = make_variant(bn_base, parse_variant("qat4"), ctx)
    layers = dict(quant.quantized_layers(v.model.inner))
    assert layers
    for name, m in layers.items():
        w4 = v.state_dict[f"inner.{name}.w4"]
        assert w4.dtype == torch.uint8 and w4.numel() == math.ceil(m.weight().numel() / 2)
        assert f"inner.{name}.weight" not in v.state_dict


def test_variant_names_parse_and_bad_names_explain_themselves():
    s = parse_variant("struct-l2-10-deep")
    assert (s.method, s.ratio, s.norm, s.layers) == ("struct", 0.1, "l2", "deep")
    s = parse_variant("struct", ratio=0.5, norm="l2", layers="8,9")
    assert (s.name, s.ratio, s.layers) == ("struct-l2-50-8.9", 0.5, "8,9")
    assert parse_variant("unstruct-30").ratio == 0.3
    assert parse_variant("res-160").side == 160
    # prune+int8 shares the pruning of the struct variant with the same ratio/norm/layers
    assert parse_variant("prune+int8").prune_key == parse_variant("struct-l1-30").prune_key
    with pytest.raises(ValueError, match="examples"):
        parse_variant("int3")
    with pytest.raises(ValueError, match="--ratio"):
        parse_variant("struct", ratio=1.5)


def test_resolution_variant_needs_an_adaptive_pool_and_counts_fewer_macs():
    fa = fold_batchnorm(VGG(tiny_arch())).arch
    ra = resized_arch(fa, 20)
    assert ra.adaptive_pool == [7, 7] and ra.input_size == 20
    arch = {"kind": "resized", "float_arch": ra.to_dict()}
    counted, _ = macs_model(arch)
    # convs 16, 16, M, 32, 32, M on 28x28: 28^2*16*9 + 28^2*16*16*9 + 14^2*32*16*9 + 14^2*32*32*9
    # = 112,896 + 1,806,336 + 903,168 + 1,806,336 = 4,628,736; head 1568*512 + 512*512 + 512*10
    # = 1,070,080 -> 5,698,816. At 20x20 (then 10x10, pooled to the trained 7x7): 57,600 +
    # 921,600 + 460,800 + 921,600 = 2,361,600 + the same head = 3,431,680.
    assert count_macs(VGG(fa), (1, 1, 28, 28)) == 5_698_816
    # counted as it runs: 28x28 images shrink to 20x20 before the convs
    assert count_macs(counted, (1, 1, 28, 28)) == 3_431_680
    with pytest.raises(ValueError, match="BatchNorm"):
        resized_arch(tiny_arch(batch_norm=True), 20)


# ---- benchmark targets ----------------------------------------------------------------------

def test_bench_targets_from_hand_rows():
    base = {"variant": "vgg19", "base": "vgg19", "size_mb": 100.0, "latency_ms_b64": 800.0}
    rows = [base,
            {"variant": "int8-static", "base": "vgg19", "size_mb": 26.0, "latency_ms_b64": 400.0},
            {"variant": "prune+int8", "base": "vgg19", "size_mb": 20.0, "latency_ms_b64": 300.0},
            {"variant": "int8-dynamic", "base": "vgg19", "size_mb": 40.0,
             "latency_ms_b64": 700.0},
            {"variant": "qat4", "base": "vgg19", "size_mb": 13.0, "latency_ms_b64": 500.0}]
    got = {t.name: t for t in cost_targets(rows, "vgg19")}
    assert got["int8-static speedup"].value == pytest.approx(2.0) and got["int8-static speedup"].ok
    assert got["prune+int8 speedup"].value == pytest.approx(800 / 300)
    assert not got["prune+int8 speedup"].ok                      # 2.67 < 2.7
    assert got["int8-dynamic size"].value == pytest.approx(40.0) and not got["int8-dynamic size"].ok
    assert got["int8-static size"].ok and got["qat4 size"].ok     # 26 <= 26, 13 <= 14
    acc = [{"variant": "b", "base": "b", "top1": "0.9000"},
           {"variant": "int8-static", "base": "b", "top1": "0.8960"},   # -0.4 points: ok
           {"variant": "qat4", "base": "b", "top1": "0.8900"},          # -1.0 points: fails
           {"variant": "struct-l1-30", "base": "b", "top1": "0.8910"},  # -0.9 points: ok
           {"variant": "res-20", "base": "b", "top1": "0.5"}]           # no target
    got = {t.name: t for t in accuracy_targets(acc)}
    assert set(got) == {"b-int8-static accuracy", "b-qat4 accuracy", "b-struct-l1-30 accuracy"}
    assert got["b-int8-static accuracy"].value == pytest.approx(-0.4) and got[
        "b-int8-static accuracy"].ok
    assert not got["b-qat4 accuracy"].ok and got["b-struct-l1-30 accuracy"].ok
    assert isinstance(got["b-qat4 accuracy"], Target)
    with pytest.raises(ValueError, match="no row"):
        cost_targets(rows[1:], "vgg19")


def _table_row(variant: str, batch: int) -> dict:
    return {"variant": variant, "params": 1000, "nonzero_params": 1000, "macs": 2e6,
            "size_mb": 1.0, "size_reduction": 0.0, "top1": 0.9, "top5": 0.99,
            "latency_ms_b1": 1.0, "latency_ms_b64": 4.0, "speedup_b1": 1.0, "speedup_b64": 1.0,
            "peak_memory_mb": float("nan"), "big_batch": batch}


def test_console_table_heads_the_big_batch_columns_with_the_batch_timed():
    from zoo.compress.measure import format_table
    head = format_table([_table_row("vgg19", 8), _table_row("int8-static", 8)]).splitlines()[0]
    assert "ms@8" in head and "x@8" in head and "@64" not in head
    assert "ms@64" in format_table([_table_row("b", 64)]).splitlines()[0]
    mixed = format_table([_table_row("a", 8), _table_row("b", 64)]).splitlines()[0]
    assert "ms@big" in mixed and "@64" not in mixed and "@8" not in mixed


def test_bench_compress_reads_accuracy_from_the_run_or_says_which_flag(tmp_path, monkeypatch,
                                                                       capsys):
    """No more default of runs/quick1/...: the accuracy table is RUN/results/compression.csv
    of --run unless --accuracy-csv names one; when there is none, it says which flag to pass."""
    from scripts import bench_compress
    from zoo.compress.bench import BenchResult
    seen = []

    def fake_bench(run, *, accuracy_csv, **kw):
        seen.append(accuracy_csv)
        return BenchResult([], [], str(accuracy_csv) if accuracy_csv else None)
    monkeypatch.setattr(bench_compress, "run_bench", fake_bench)
    run = tmp_path / "run"
    assert bench_compress.main(["--run", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert seen == [None]
    assert str(run / "results" / "compression.csv") in out and "--accuracy-csv" in out
    assert "quick1" not in out and "accuracy: not judged" in out
    (run / "results").mkdir(parents=True)
    (run / "results" / "compression.csv").write_text("variant,base,top1\nb,b,0.9\n")
    assert bench_compress.main(["--run", str(run), "--no-progress"]) == 0
    assert seen[-1] == run / "results" / "compression.csv"
    assert "--accuracy-csv" not in capsys.readouterr().out
    other = tmp_path / "other.csv"
    other.write_text("variant,base,top1\n")
    assert bench_compress.main(["--run", str(run), "--accuracy-csv", str(other)]) == 0
    assert Path(seen[-1]) == other
    assert bench_compress.main(["--run", str(run), "--accuracy-csv",
                                str(tmp_path / "missing.csv")]) == 0
    assert seen[-1] is None and "missing.csv does not exist" in capsys.readouterr().out


# ---- `compress` end to end on a tiny run ----------------------------------------------------

def make_tiny_run(run: Path, data_dir: Path, base: str = "tiny_vgg3", steps: int = 25) -> Path:
    """A run dir with config, splits and one trained width-0.25 BN tiny VGG (checkpoint + card)."""
    from router_run import train_steps
    cfg = RunConfig(data_dir=str(data_dir), download=False)
    rd = RunDir(run)
    rd.save_config(cfg)
    bundle = prepare_data(run, **cfg.data_kwargs())
    torch.manual_seed(0)
    arch = tiny_arch(batch_norm=True, name=base)
    model = VGG(arch)
    train_steps(model, bundle, steps, seed=0)
    save_checkpoint(rd.checkpoint(base), model_name=base, arch=arch.to_dict(),
                    state_dict=model.state_dict(), data=bundle.info.to_dict())
    write_json(rd.card(base), {
        "model_name": base, "arch": arch.to_dict(), "parent": None, "variant": None,
        "dataset": bundle.info.to_dict(), "split_fingerprint": bundle.splits.fingerprint,
        "val_accuracy": None, "test_accuracy": None, "params": 0, "train_seconds": 0.0,
        "train_config": {"steps": steps}, "command": "tests/test_compress.py",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "checkpoint_sha256": file_sha256(rd.checkpoint(base))})
    return run


FAST = ["--finetune-epochs", "1", "--limit-train", "128", "--calib-images", "64",
        "--threads", "1", "--latency-runs", "2", "--batch-repeats", "1", "--budget-s", "0.2",
        "--no-memory", "--no-progress"]
E2E_VARIANTS = ["struct-l1-30", "unstruct-30", "int8-static", "qat4", "prune+int8", "res-20"]


@pytest.fixture(scope="module")
def compressed_run(tmp_path_factory, fake_fmnist_dir):
    from scripts.compress import main
    run = make_tiny_run(tmp_path_factory.mktemp("compress") / "run", fake_fmnist_dir)
    code = main(["--run", str(run), "--base", "tiny_vgg3", "--variants", *E2E_VARIANTS, *FAST])
    assert code == 0
    return run


def test_compress_main_makes_zoo_members(compressed_run):
    rd = RunDir(compressed_run)
    names = [f"tiny_vgg3-{v}" for v in E2E_VARIANTS]
    assert rd.finished_models() == sorted(["tiny_vgg3", *names])
    for v, name in zip(E2E_VARIANTS, names):
        card = rd.read_card(name)
        assert card["parent"] == "tiny_vgg3" and card["variant"] == v
        assert card["checkpoint_sha256"] == file_sha256(rd.checkpoint(name))
        assert 0.0 <= card["test_accuracy"] <= 1.0
    struct = rd.read_card("tiny_vgg3-struct-l1-30")
    assert struct["train_config"]["lr"] == 1e-4 and struct["train_config"]["schedule"] == "cosine"
    assert struct["compression"]["cfg"] == [16, 16, "M", 22, 22, "M"]   # widths recorded
    unstruct = rd.read_card("tiny_vgg3-unstruct-30")["compression"]
    assert unstruct["step_sparsity"] == pytest.approx([0.1, 0.2, 0.3], abs=1e-5)
    assert "overall" in unstruct["sparsity"] and "no speedup" in unstruct["note"]
    assert (rd.model_dir("tiny_vgg3-unstruct-30") / "sparse_weights.pt").exists()
    assert rd.read_card("tiny_vgg3-qat4")["compression"]["qat_trained"] is True
    res = rd.read_card("tiny_vgg3-res-20")
    assert res["compression"]["finetuned_at_side"] is True   # fine-tuned at the smaller side
    assert res["train_config"]["epochs"] == 1


def test_compression_table_has_every_column_and_consistent_values(compressed_run):
    path = compressed_run / "results" / "compression.csv"
    with path.open() as f:
        assert f.readline().strip().split(",") == COLUMNS + EXTRA_COLUMNS
    rows = {r["variant"]: r for r in read_csv(path)}
    assert list(rows) == ["tiny_vgg3", *E2E_VARIANTS]
    for r in rows.values():
        for c in COLUMNS:
            assert r[c] != "", (r["variant"], c)
        assert r["base"] == "tiny_vgg3" and r["threads"] == "1" and r["big_batch"] == "64"
    f = {v: {k: float(x) for k, x in r.items() if k in COLUMNS[2:]} for v, r in rows.items()}
    base = f["tiny_vgg3"]
    assert base["pruning_rate"] == 0 and base["speedup_b1"] == 1 and base["size_reduction"] == 0
    assert math.isnan(base["peak_memory_mb"])                       # --no-memory
    assert f["int8-static"]["pruning_rate"] == 0                    # BN folding is not pruning
    for v in ("struct-l1-30", "prune+int8"):
        assert 0.1 < f[v]["pruning_rate"] < 0.3 and f[v]["macs"] < base["macs"]
    assert f["struct-l1-30"]["params"] == f["prune+int8"]["params"]  # same pruned network
    assert f["unstruct-30"]["sparsity"] == pytest.approx(0.3, abs=0.01)
    assert f["unstruct-30"]["macs"] == base["macs"]                 # zeros are still multiplied
    assert float(rows["unstruct-30"]["sparse_file_mb"]) < 0.6 * f["unstruct-30"]["size_mb"]
    assert f["int8-static"]["size_reduction"] > 0.6
    assert f["qat4"]["size_mb"] < 0.62 * f["int8-static"]["size_mb"]
    assert (base["macs"], f["res-20"]["macs"]) == (5_698_816, 3_431_680)   # hand-worked above
    assert rows["res-20"]["input_size"] == "20"
    for r in f.values():
        assert 0 <= r["top1"] <= r["top5"] <= 1 and r["latency_ms_b1"] > 0
        assert r["l1_norm"] > 0 and r["l2_norm"] > 0
    hist = read_csv(compressed_run / "results" / "weight_hist.csv")
    assert {h["variant"] for h in hist} == set(rows)


def test_second_call_reuses_variants_and_keeps_other_bases_rows(compressed_run, tmp_path):
    from scripts.compress import main
    results = compressed_run / "results" / "compression.csv"
    other = {"variant": "tiny_vgg9", "base": "tiny_vgg9", "params": "1"}
    rows = read_csv(results)
    from common.io import write_csv
    write_csv(results, [other, *rows], COLUMNS + EXTRA_COLUMNS)
    before = {n: file_sha256(RunDir(compressed_run).checkpoint(f"tiny_vgg3-{n}"))
              for n in ("qat4", "struct-l1-30")}
    assert main(["--run", str(compressed_run), "--base", "tiny_vgg3", "--variants", "qat4",
                 "struct-l1-30", *FAST]) == 0
    after = {n: file_sha256(RunDir(compressed_run).checkpoint(f"tiny_vgg3-{n}")) for n in before}
    assert after == before                                          # not rebuilt
    got = read_csv(results)
    assert [r["variant"] for r in got] == ["tiny_vgg9", "tiny_vgg3", "qat4", "struct-l1-30"]
    # another pruning fine-tune rate rebuilds the pruned variant only
    assert main(["--run", str(compressed_run), "--base", "tiny_vgg3", "--variants", "qat4",
                 "struct-l1-30", *FAST, "--finetune-lr", "2e-4"]) == 0
    again = {n: file_sha256(RunDir(compressed_run).checkpoint(f"tiny_vgg3-{n}")) for n in before}
    assert again["qat4"] == before["qat4"] and again["struct-l1-30"] != before["struct-l1-30"]
    card = RunDir(compressed_run).read_card("tiny_vgg3-struct-l1-30")
    assert card["train_config"]["lr"] == 2e-4
    assert card["compression"]["recipe"]["finetune_lr"] == 2e-4
    # bf16 autocast changes the float fine-tunes' recipe, not quantization-aware training's
    assert main(["--run", str(compressed_run), "--base", "tiny_vgg3", "--variants", "qat4",
                 "struct-l1-30", *FAST, "--finetune-lr", "2e-4", "--amp", "bf16"]) == 0
    bf16 = {n: file_sha256(RunDir(compressed_run).checkpoint(f"tiny_vgg3-{n}")) for n in before}
    assert bf16["qat4"] == before["qat4"] and bf16["struct-l1-30"] != again["struct-l1-30"]
    card = RunDir(compressed_run).read_card("tiny_vgg3-struct-l1-30")
    assert card["train_config"]["amp"] == "bf16" and card["compression"]["recipe"]["amp"] == "bf16"
    assert RunDir(compressed_run).read_card("tiny_vgg3-qat4")["train_config"]["amp"] == "off"
    # --qat-epochs changes QAT's recipe and epoch count only, not the pruning fine-tune's
    assert main(["--run", str(compressed_run), "--base", "tiny_vgg3", "--variants", "qat4",
                 "struct-l1-30", *FAST, "--finetune-lr", "2e-4", "--amp", "bf16",
                 "--qat-epochs", "2"]) == 0
    two = {n: file_sha256(RunDir(compressed_run).checkpoint(f"tiny_vgg3-{n}")) for n in before}
    assert two["struct-l1-30"] == bf16["struct-l1-30"] and two["qat4"] != bf16["qat4"]
    card = RunDir(compressed_run).read_card("tiny_vgg3-qat4")
    assert card["train_config"]["epochs"] == 2
    assert card["compression"]["recipe"]["finetune_epochs"] == 2
    assert RunDir(compressed_run).read_card("tiny_vgg3-struct-l1-30")["train_config"]["epochs"] == 1


def test_profile_zoo_takes_the_variants_as_members(compressed_run, tmp_path):
    import shutil
    from zoo.costs import CostSettings
    from zoo.profile import ProfileConfig, profile_run
    run = tmp_path / "copy"
    shutil.copytree(compressed_run, run)
    keep = ["tiny_vgg3", "tiny_vgg3-int8-static", "tiny_vgg3-qat4", "tiny_vgg3-res-20"]
    res = profile_run(run, ProfileConfig(models=keep, progress=False, costs=CostSettings(
        threads=1, budget_s=0.1, memory="off", min_latency_runs=2, min_throughput_repeats=1,
        throughput_batch=32)))
    assert sorted(res.tables["test"].model_names) == sorted(keep)
    costs = res.costs.models
    assert (costs["tiny_vgg3"].macs, costs["tiny_vgg3-res-20"].macs) == (5_698_816, 3_431_680)
    assert costs["tiny_vgg3-int8-static"].size_mb < 0.4 * costs["tiny_vgg3"].size_mb
    # the profiled predictions agree with the accuracy compress recorded in the card
    t = res.tables["test"]
    j = list(t.model_names).index("tiny_vgg3-qat4")
    card = RunDir(run).read_card("tiny_vgg3-qat4")
    assert float((t.preds[:, j] == t.labels).mean()) == pytest.approx(card["test_accuracy"])


def test_cost_only_mode_with_user_weights(tmp_path):
    from scripts.compress import main
    arch = zoo.model_arch("tiny_vgg1", num_classes=10, in_channels=3, input_size=16, width=0.25)
    torch.manual_seed(5)
    state = VGG(arch).state_dict()
    torch.save(state, tmp_path / "w.pt")
    run = tmp_path / "cost"
    argv = ["--run", str(run), "--base", "tiny_vgg1", "--input-size", "16", "--num-classes",
            "10", "--width", "0.25", "--weights", str(tmp_path / "w.pt"),
            "--variants", "int8-dynamic", "--big-batch", "8", *FAST]
    assert main(argv) == 0
    assert not (run / "results" / "compression.csv").exists()     # never mixed with trained
    rows = read_csv(run / "results" / "compression_cost_only.csv")
    assert [r["variant"] for r in rows] == ["tiny_vgg1", "int8-dynamic"]
    assert rows[0]["top1"] == "nan" and rows[1]["big_batch"] == "8"
    l1 = sum(float(v.abs().sum()) for k, v in state.items() if k.endswith("weight"))
    assert float(rows[0]["l1_norm"]) == pytest.approx(l1, rel=1e-5)  # the user's weights
    variant = run / "cost_only" / "tiny_vgg1-int8-dynamic" / "checkpoint.pt"
    assert RunDir(run).finished_models() == []                       # not zoo members
    # the same call reuses the variant; other weights rebuild it (and the base file)
    sha = file_sha256(variant)
    assert main(argv) == 0 and file_sha256(variant) == sha
    torch.manual_seed(6)
    torch.save(VGG(arch).state_dict(), tmp_path / "w.pt")
    assert main(argv) == 0 and file_sha256(variant) != sha
    rows = read_csv(run / "results" / "compression_cost_only.csv")
    assert float(rows[0]["l1_norm"]) != pytest.approx(l1, rel=1e-5)


def test_compress_errors_name_the_problem(tmp_path, capsys):
    from scripts.compress import main
    assert main(["--run", str(tmp_path), "--base", "tiny_vgg3", "--variants", "int3"]) == 2
    assert "unknown variant 'int3'" in capsys.readouterr().err
    assert main(["--run", str(tmp_path), "--base", "nope", "--variants", "int8-dynamic"]) == 2
    assert "train it with `train-zoo`" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    assert main(["--run", str(tmp_path), "--base", "tiny_vgg1", "--weights", str(bad),
                 "--input-size", "16", "--width", "0.25", "--variants", "int8-dynamic",
                 *FAST]) == 2
    assert "does not fit tiny_vgg1" in capsys.readouterr().err
    assert main(["--run", str(tmp_path), "--base", "tiny_vgg1"]) == 2
    assert "--variants" in capsys.readouterr().err


def test_several_bases_get_the_same_variants_and_keep_their_own_rows(tmp_path, fake_fmnist_dir,
                                                                   capsys):
    from scripts.compress import main
    run = make_tiny_run(tmp_path / "run", fake_fmnist_dir, steps=5)
    rd = RunDir(run)
    # a second trained member: the same weights under a seed's name
    shutil.copytree(rd.model_dir("tiny_vgg3"), rd.model_dir("tiny_vgg3@s1"))
    card = rd.read_card("tiny_vgg3@s1")
    write_json(rd.card("tiny_vgg3@s1"), {**card, "model_name": "tiny_vgg3@s1"})
    # a missing base is refused before any work, naming it
    assert main(["--run", str(run), "--base", "tiny_vgg3", "nope", "--variants", "int8-static",
                 *FAST]) == 2
    assert "missing: nope" in capsys.readouterr().err
    assert not rd.checkpoint("tiny_vgg3-int8-static").exists()
    assert main(["--run", str(run), "--base", "tiny_vgg3", "tiny_vgg3", "--variants",
                 "int8-static", *FAST]) == 2
    assert "names a model twice" in capsys.readouterr().err
    assert main(["--run", str(run), "--base", "tiny_vgg3", "tiny_vgg3@s1", "--variants",
                 "int8-static", *FAST]) == 0
    for base in ("tiny_vgg3", "tiny_vgg3@s1"):
        c = rd.read_card(f"{base}-int8-static")
        assert c["parent"] == base and c["variant"] == "int8-static"
    rows = read_csv(run / "results" / "compression.csv")
    assert [(r["base"], r["variant"]) for r in rows] == [
        ("tiny_vgg3", "tiny_vgg3"), ("tiny_vgg3", "int8-static"),
        ("tiny_vgg3@s1", "tiny_vgg3@s1"), ("tiny_vgg3@s1", "int8-static")]
    # same weights, same calibration: the two int8 copies answer alike
    assert rows[1]["top1"] == rows[3]["top1"]


@pytest.mark.slow
def test_compress_every_variant_with_memory_and_sweep(tmp_path, fake_fmnist_dir):
    from scripts.compress import main
    run = make_tiny_run(tmp_path / "run", fake_fmnist_dir)
    argv = [a for a in FAST if a != "--no-memory"]
    assert main(["--run", str(run), "--base", "tiny_vgg3", "--variants", *ALL_VARIANTS,
                 "--sweep", "prune", *argv]) == 0
    rows = read_csv(run / "results" / "compression.csv")
    assert len(rows) == 1 + len(ALL_VARIANTS)
    assert all(float(r["peak_memory_mb"]) >= 0 for r in rows)   # measured (NaN: it failed);
    # that the figure follows what an inference holds: test_peak_memory_counts_the_activations
    sweep = read_csv(run / "results" / "prune_sweep.csv")
    assert [(r["method"], float(r["level"])) for r in sweep] == [
        (m, lv) for m in ("structured", "unstructured") for lv in (0.0, 0.2, 0.4, 0.6, 0.8)]
    # level 0 of both methods is the folded base itself: same accuracy
    assert sweep[0]["accuracy"] == sweep[5]["accuracy"]
    settings = read_json(run / "results" / "compression_settings.json")
    assert settings["threads"] == 1 and settings["cost_only"] is False
    for r in rows[1:]:
        model, _ = load_model(run / "zoo" / r["model_name"] / "checkpoint.pt")
        x = torch.randn(2, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(model(x), model(x))
    np.testing.assert_array_equal(sorted(RunDir(run).finished_models()),
                                  sorted(["tiny_vgg3"] + [f"tiny_vgg3-{v}" for v in ALL_VARIANTS]))


def test_peak_memory_counts_the_activations_of_one_inference(tmp_path):
    """peak_memory_mb is the RSS one forward pass adds (weights are loaded before the mark):
    at batch 1024 tiny_vgg1 (width 0.25) makes a 51 MB activation, so the peak is at least that
    and at least half of it above the batch-8 peak (a >= 0 check passed with any figure)."""
    from zoo.costs import peak_memory_mb
    arch = zoo.model_arch("tiny_vgg1", num_classes=10, in_channels=1, input_size=28, width=0.25)
    model = VGG(arch).eval()
    path = save_checkpoint(tmp_path / "m.pt", model_name="m", arch=arch.to_dict(),
                           state_dict=model.state_dict())
    sizes: list[float] = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel() * 4 / 1e6))
             for m in model.modules() if not list(m.children())]
    with torch.inference_mode():
        model(torch.randn(1024, 1, 28, 28))
    for h in hooks:
        h.remove()
    largest = max(sizes)                       # MB (1e6 bytes), what peak_memory_mb reports
    assert largest > 40
    small = peak_memory_mb(path, (8, 1, 28, 28), threads=1)
    big = peak_memory_mb(path, (1024, 1, 28, 28), threads=1)
    assert small["memory_method"].startswith("rss-subprocess"), small
    assert big["peak_memory_mb"] >= largest, (big, largest)
    assert big["peak_memory_mb"] - small["peak_memory_mb"] >= 0.5 * largest, (small, big)

class _Cut(BaseException):
    """Stands for a kill: not an Exception, so nothing on the way catches it."""


def test_a_variant_cut_mid_fine_tune_resumes_at_its_last_epoch(tmp_path, fake_fmnist_dir,
                                                               monkeypatch):
    """Every call is cut right after one fine-tune epoch is saved; calling again until done ends
    with the same weights as one unbroken call, and the spent states are deleted."""
    import shutil as sh

    import zoo.train
    from scripts.compress import main
    args = ["--base", "tiny_vgg3", "--variants", "struct-l1-30", "qat8", "unstruct-30",
            *FAST, "--finetune-epochs", "2"]
    whole = make_tiny_run(tmp_path / "whole", fake_fmnist_dir)
    cut = tmp_path / "cut"
    sh.copytree(whole, cut)
    assert main(["--run", str(whole), *args]) == 0

    save = zoo.train._save_state
    seen: list[str] = []

    def save_then_die(path, state):
        save(path, state)
        seen.append(Path(path).name)
        raise _Cut

    monkeypatch.setattr(zoo.train, "_save_state", save_then_die)
    calls = 0
    while True:
        calls += 1
        assert calls < 20, "never finished"
        try:
            assert main(["--run", str(cut), *args]) == 0
            break
        except _Cut:
            states = list((cut / "compress_work").rglob("*.pt"))
            assert states, "an epoch ended without a state on disk"
    # struct: 2 epochs, qat8: 2, unstruct: 3 steps x 2 epochs -> one call per epoch, then one more
    assert len(seen) == 10 and calls == 11
    assert {"struct-l1-30_fine-tune.pt", "qat8_QAT.pt", "unstruct-30_step_3.pt"} <= set(seen)
    assert not any((cut / "compress_work").iterdir())
    for v in ("struct-l1-30", "qat8", "unstruct-30"):
        a = load_model(RunDir(whole).checkpoint(f"tiny_vgg3-{v}"))[0].state_dict()
        b = load_model(RunDir(cut).checkpoint(f"tiny_vgg3-{v}"))[0].state_dict()
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], torch.Tensor):
                ta, tb = (a[k].dequantize(), b[k].dequantize()) if a[k].is_quantized else (a[k], b[k])
                assert torch.equal(ta, tb), (v, k)
