"""run_pipeline mechanics: stage order, stamps, skipping, invalidation, interruption."""
from __future__ import annotations

import sys
import types

import pytest

from scripts import pipeline
from scripts.pipeline import PipelinePreset, run_pipeline


@pytest.fixture
def fake_stages(monkeypatch):
    """Five fake stage modules that record their calls; 'fail' makes one raise once."""
    calls: list[str] = []
    fail: set[str] = set()
    stages = []
    for name in ("a", "b", "c"):
        mod = types.ModuleType(f"fake_stage_{name}")

        def main(argv, _name=name):
            if _name in fail:
                fail.discard(_name)
                raise KeyboardInterrupt  # a run cut short
            calls.append(_name)
            return 0
        mod.main = main
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        stages.append((name, mod.__name__))
    monkeypatch.setattr(pipeline, "STAGES", stages)
    monkeypatch.setattr(pipeline, "stage_argv",
                        lambda preset, stage, run, d, dev, **kw: ["--run", str(run), stage])
    return calls, fail


def test_second_call_does_no_work(tmp_path, fake_stages):
    calls, _ = fake_stages
    preset = PipelinePreset("t", [], [])
    first = run_pipeline(tmp_path, preset, log=lambda s: None)
    assert calls == ["a", "b", "c"] and all(o.ran for o in first)
    second = run_pipeline(tmp_path, preset, log=lambda s: None)
    assert calls == ["a", "b", "c"] and not any(o.ran for o in second)


def test_interrupted_run_resumes_at_the_cut(tmp_path, fake_stages):
    calls, fail = fake_stages
    fail.add("b")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(tmp_path, PipelinePreset("t", [], []), log=lambda s: None)
    assert calls == ["a"]
    run_pipeline(tmp_path, PipelinePreset("t", [], []), log=lambda s: None)
    assert calls == ["a", "b", "c"]  # a was not run again


def test_rerun_of_a_stage_invalidates_later_ones(tmp_path, fake_stages):
    calls, _ = fake_stages
    run_pipeline(tmp_path, PipelinePreset("t", [], []), log=lambda s: None)
    (tmp_path / "stages" / "b.json").unlink()
    run_pipeline(tmp_path, PipelinePreset("t", [], []), log=lambda s: None)
    assert calls == ["a", "b", "c", "b", "c"]


def test_failed_stage_exit_code_is_an_error(tmp_path, fake_stages, monkeypatch):
    sys.modules["fake_stage_b"].main = lambda argv: 2
    with pytest.raises(RuntimeError, match="stage b failed"):
        run_pipeline(tmp_path, PipelinePreset("t", [], []), log=lambda s: None)
    assert not (tmp_path / "stages" / "b.json").exists()


def test_stage_argv_threads_and_amp():
    from pathlib import Path

    from scripts.pipeline import PRESETS, stage_argv, with_threads
    assert with_threads(["--a", "1", "--threads", "2"], 16) == ["--a", "1", "--threads", "16"]
    assert with_threads(["--a", "1"], 3) == ["--a", "1", "--threads", "3"]
    assert with_threads(["--threads", "2"], None) == ["--threads", "2"]
    full, run = PRESETS["full"], Path("r")
    for stage in ("compress", "profile-zoo", "evaluate-routers"):
        argv = stage_argv(full, stage, run, [], [], threads=16)
        assert argv.count("--threads") == 1 and argv[argv.index("--threads") + 1] == "16", stage
    train = stage_argv(full, "train-zoo", run, ["--dataset", "x"], ["--device", "cuda"],
                       amp="bf16", threads=16)
    assert train == ["--run", "r", "--dataset", "x", "--device", "cuda", "--preset", "full",
                     "--amp", "bf16"]
    compress = stage_argv(full, "compress", run, [], [], amp="bf16")
    assert compress[compress.index("--amp") + 1] == "bf16"
    assert "--amp" not in stage_argv(full, "profile-zoo", run, [], [], amp="bf16")
    assert "--amp" not in stage_argv(full, "compress", run, [], [])


def test_compress_more_runs_after_the_first_call_and_is_part_of_the_stamp(tmp_path, fake_stages,
                                                                          monkeypatch):
    seen: list[list[str]] = []
    sys.modules["fake_stage_b"].main = lambda argv: seen.append(list(argv)) or 0
    real = pipeline.stage_argvs
    # stage "b" plays compress: its further calls follow the first, in order
    monkeypatch.setattr(pipeline, "stage_argvs", lambda preset, stage, run, d, dev, **kw: real(
        preset, "compress" if stage == "b" else stage, run, d, dev, **kw))
    preset = PipelinePreset("t", [], [], compress_more=[["--base", "m1", "m2"]])
    run_pipeline(tmp_path, preset, log=lambda s: None)
    assert seen == [["--run", str(tmp_path), "compress"],
                    ["--run", str(tmp_path), "--base", "m1", "m2"]]
    run_pipeline(tmp_path, preset, log=lambda s: None)              # stamped: nothing again
    assert len(seen) == 2
    more = PipelinePreset("t", [], [], compress_more=[["--base", "m1"]])
    run_pipeline(tmp_path, more, log=lambda s: None)                # other calls: runs again
    assert seen[2:] == [["--run", str(tmp_path), "compress"],
                        ["--run", str(tmp_path), "--base", "m1"]]


@pytest.mark.parametrize("name", ["standard", "standard-committee"])
def test_standard_pipelines_compress_every_tiny_member_to_int8(name):
    from pathlib import Path

    from scripts.pipeline import PRESETS, stage_argvs
    from zoo.presets import get_preset
    preset = PRESETS[name]
    argvs = stage_argvs(preset, "compress", Path("r"), [], [], amp="bf16", threads=4)
    assert argvs[0][:4] == ["--run", "r", "--base", "vgg19_small"]
    more = argvs[1]
    bases = more[more.index("--base") + 1:more.index("--variants")]
    train = get_preset(name)
    # every tiny model train-zoo trains for this preset (seed 0 plain, the others @sK)
    tiny = [m for m in train.models if m.startswith("tiny_vgg")]
    expected = set(tiny) | {f"{m}@s{k}" for c in train.committees
                            for m, n in [c.split(":")] for k in range(1, int(n))}
    assert set(bases) == expected and len(bases) == len(expected)
    assert more[more.index("--variants") + 1:more.index("--threads")] == ["int8-static"]
    assert more[more.index("--threads") + 1] == "4"
    evaluate = stage_argvs(preset, "evaluate-routers", Path("r"), [], [])[0]
    levels = evaluate[evaluate.index("--sacrifices") + 1:evaluate.index("--threads")]
    assert min(float(x) for x in levels) < 0                        # a level below zero


def test_int8_copies_are_named_from_the_runs_seed(tmp_path):
    """With --seed 1 the committee's other members are tiny_vgg5@s2 and @s3 (seed 1 keeps the
    plain name); without the flag, the seed the run's config fixed; a new run, seed 0."""
    import json

    from scripts.pipeline import PRESETS, stage_argvs
    preset = PRESETS["standard-committee"]

    def seeds_of(run, data_args):
        more = stage_argvs(preset, "compress", run, data_args, [])[-1]
        return [b for b in more[more.index("--base") + 1:more.index("--variants")]
                if b.startswith("tiny_vgg5")]
    assert seeds_of(tmp_path / "new", []) == ["tiny_vgg5", "tiny_vgg5@s1", "tiny_vgg5@s2"]
    assert seeds_of(tmp_path / "new", ["--seed", "1"]) == ["tiny_vgg5", "tiny_vgg5@s2",
                                                           "tiny_vgg5@s3"]
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"seed": 2}))
    assert seeds_of(run, []) == ["tiny_vgg5", "tiny_vgg5@s3", "tiny_vgg5@s4"]


def test_summary_says_no_promise_where_a_negative_level_certified_nothing(tmp_path):
    from common.io import write_csv
    from scripts.pipeline import summary_lines
    cols = ["zoo", "sacrifice", "method", "family", "selected", "accuracy", "budget_held",
            "certified", "images_per_second", "speedup_vs_best", "speedup_vs_cheapest_single"]
    rows = [dict(zip(cols, r)) for r in [
        ("all", 0.0, "single:m", "best-single", False, 0.9, True, "", 100, 1, 1),
        ("all", -0.001, "single:m", "cheapest-single", True, 0.9, False, False, 100, 1, 1),
        ("all", 0.0, "cascade", "cascade", True, 0.91, True, True, 200, 2, 2),
        ("all", 0.005, "cascade", "cascade", True, 0.88, False, True, 300, 3, 3)]]
    write_csv(tmp_path / "results" / "routers.csv", rows, cols)
    text = "\n".join(summary_lines(tmp_path))
    assert "sacrifice -0.1%: selected on val single:m  accuracy 0.9000 (nothing certified: " \
           "no promise made)" in text
    assert "sacrifice 0.0%: selected on val cascade  accuracy 0.9100 (budget held on test)" in text
    assert "sacrifice 0.5%: selected on val cascade  accuracy 0.8800 (budget NOT held on " \
           "test)" in text
