"""The standard preset is data: checked against what the README and its comments say; and
``--amp auto`` resolves to bf16 only where the hardware has it."""
from __future__ import annotations

import pytest

from scripts.pipeline import PRESETS as PIPELINE_PRESETS, stage_argv
from zoo.amp import cpu_flags, native_bf16, resolve_amp
from zoo.costs import count_macs
from zoo.presets import STANDARD_RECIPES, TINY, get_preset
from zoo.registry import create_model


def test_standard_names_every_base_model_on_all_training_images():
    p = get_preset("standard")
    assert sorted(p.models) == sorted(TINY + ["vgg19_small"])
    assert p.limit_train is None and p.limit_eval is None
    cfg = p.train_config(p.recipe("tiny_vgg1"))
    assert cfg.max_batches_per_epoch is None          # whole epochs of all 54k images


@pytest.mark.parametrize("model, width, epochs, smoothing", [
    ("tiny_vgg1", 0.5, 8, 0.0), ("tiny_vgg2", 0.5, 6, 0.0), ("tiny_vgg3", 0.5, 6, 0.0),
    ("tiny_vgg4", 0.5, 6, 0.0), ("tiny_vgg5", 0.5, 6, 0.1), ("vgg19_small", 0.25, 3, 0.0)])
def test_standard_recipes_are_what_the_docs_say(model, width, epochs, smoothing):
    p = get_preset("standard")
    r = p.recipe(model)
    assert (r.width, r.epochs, r.dropout, r.batch_norm) == (width, epochs, 0.1, True)
    cfg = p.train_config(r)
    assert (cfg.schedule, cfg.optimizer, cfg.lr, cfg.augment, cfg.keep, cfg.patience,
            cfg.label_smoothing) == ("onecycle", "adam", 2e-3, False, "last", None, smoothing)


def test_standard_order_is_cheapest_first_by_counted_macs():
    p = get_preset("standard")
    macs = {m: count_macs(create_model(m, num_classes=10, in_channels=1, input_size=28,
                                       width=STANDARD_RECIPES[m][0]), (1, 1, 28, 28))
            for m in p.models}
    assert [macs[m] for m in p.models] == sorted(macs.values())
    expected = {"tiny_vgg1": 3.7e6, "tiny_vgg2": 10.9e6, "tiny_vgg3": 20.2e6,
                "tiny_vgg4": 34.6e6, "vgg19_small": 38.9e6, "tiny_vgg5": 52.1e6}
    for m, v in expected.items():                       # the figures the preset's comment gives
        assert macs[m] == pytest.approx(v, rel=0.01), m


def test_committees_are_opt_in_and_standard_committee_is_standard_plus_one():
    for name in ("quick", "smoke", "standard", "full"):     # their figures must not move
        p = get_preset(name)
        assert p.committees == [] and p.seeds is None, name
    std, sc = get_preset("standard"), get_preset("standard-committee")
    assert sc.committees == ["tiny_vgg5:3"] and sc.seeds is None
    assert (sc.models, sc.recipes, sc.base, sc.dataset, sc.limit_train, sc.limit_eval) == \
        (std.models, std.recipes, std.base, std.dataset, std.limit_train, std.limit_eval)


def test_standard_pipeline_trains_and_fine_tunes_with_amp_auto_and_a_flag_overrides_it():
    pre = PIPELINE_PRESETS["standard"]
    argv = stage_argv(pre, "train-zoo", "runs/s", [], [])
    assert argv[argv.index("--preset") + 1] == "standard" and "auto" in argv
    argv = stage_argv(pre, "train-zoo", "runs/s", [], [], amp="off")
    assert argv[-2:] == ["--amp", "off"]              # argparse: the last one wins
    comp = stage_argv(pre, "compress", "runs/s", [], [])
    assert comp[comp.index("--preset") + 1] == "standard"


def test_amp_auto_needs_native_bf16(tmp_path):
    assert resolve_amp("auto", "cpu", flags={"avx2", "fma"}) == "off"        # AVX2 only
    assert resolve_amp("auto", "cpu", flags={"avx512f", "avx512_bf16"}) == "bf16"
    assert resolve_amp("auto", "cpu", flags={"amx_bf16", "amx_tile"}) == "bf16"
    assert resolve_amp("off", "cpu", flags={"amx_bf16"}) == "off"
    assert resolve_amp("bf16", "cpu", flags=set()) == "bf16"                 # asked for: kept
    assert resolve_amp(None) is None
    with pytest.raises(ValueError, match="auto"):
        resolve_amp("fp8")
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags\t\t: fpu sse2 avx2 avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx2", "avx512_bf16"}
    assert native_bf16("cpu", cpu_flags(info))
    assert cpu_flags(tmp_path / "missing") == set()
