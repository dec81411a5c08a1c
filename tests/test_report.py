"""`python -m sdcd.report`: one Markdown table comparing evaluated runs; clear errors for bad metrics.json."""

import json
import subprocess
import sys

import pytest

from sdcd import report
from sdcd.results import load_metrics


def fake_run(root, name, metrics, experiment="dsprites_cond_shuffle"):
    run_dir = root / "runs" / experiment / name
    run_dir.mkdir(parents=True)
    data = {"experiment": experiment, "checkpoint": f"{run_dir}/checkpoints/last.ckpt", "metrics": metrics}
    (run_dir / "metrics.json").write_text(json.dumps(data))
    return run_dir


@pytest.fixture
def two_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shuffle = fake_run(
        tmp_path,
        "20250101-000000-aaaa",
        {
            "swap/acc/static": {"mean": 0.9912, "std": 0.0011},
            "swap/acc/dynamic": {"mean": 0.9523, "std": 0.004},
            "sample_dynamics/IS": {"mean": 5.61, "std": 0.02},
        },
    )
    noshuffle = fake_run(
        tmp_path,
        "20250102-000000-bbbb",
        {"swap/acc/static": {"mean": 0.71, "std": 0.02}, "swap/acc/dynamic": {"mean": 0.94, "std": 0.01}},
        experiment="dsprites_cond_noshuffle",
    )
    return shuffle, noshuffle


def test_table_compares_runs(two_runs, capsys):
    shuffle, noshuffle = two_runs
    assert report.main([str(shuffle), str(noshuffle / "metrics.json")]) == 0  # a run dir or its metrics.json
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | experiment | swap/acc/static | swap/acc/dynamic | sample_dynamics/IS |"
    assert lines[1] == "| --- | --- | --- | --- | --- |"
    assert lines[2] == (
        "| runs/dsprites_cond_shuffle/20250101-000000-aaaa | dsprites_cond_shuffle | 0.9912 ± 0.0011 "
        "| 0.9523 ± 0.0040 | 5.6100 ± 0.0200 |"
    )
    assert lines[3].endswith("| 0.7100 ± 0.0200 | 0.9400 ± 0.0100 | — |")  # IS missing in that run
    assert len(lines) == 4


def test_metrics_filter(two_runs, capsys):
    assert report.main([*map(str, two_runs), "--metrics", "swap/acc/stat*", "*/IS"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == "| run | experiment | swap/acc/static | sample_dynamics/IS |"
    assert report.main([*map(str, two_runs), "--metrics", "nope/*"]) == 2
    assert "no metric matches --metrics nope/*; the runs have: ['swap/acc/static'" in capsys.readouterr().err


def test_out_file_holds_the_same_table(two_runs, tmp_path, capsys):
    out = tmp_path / "cmp" / "shuffle_vs_noshuffle.md"
    assert report.main([*map(str, two_runs), "--out", str(out)]) == 0
    assert out.read_text() == capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left behind


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "metrics.json: not found"),
        ("{not json", "not valid JSON"),
        ('{"experiment": "x"}', 'expected an object {"experiment": str'),
        ('{"metrics": {"swap/acc/static": 0.9}}', 'metrics["swap/acc/static"] should be {"mean": float'),
        ('{"metrics": {"swap/acc/static": {"mean": "high", "std": 0}}}', 'metrics["swap/acc/static"].mean'),
    ],
)
def test_bad_metrics_file_is_a_clear_error_naming_it(two_runs, tmp_path, capsys, content, message):
    bad = tmp_path / "runs" / "broken" / "run1"
    bad.mkdir(parents=True)
    if content is not None:
        (bad / "metrics.json").write_text(content)
    assert report.main([str(two_runs[0]), str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad / "metrics.json") in err and message in err


def test_a_path_that_does_not_exist_is_named(two_runs, capsys):
    assert report.main([str(two_runs[0]), "runs/typo/123"]) == 2
    assert "runs/typo/123: no such run directory or metrics.json file" in capsys.readouterr().err


def test_runs_as_a_module_without_importing_torch(two_runs, tmp_path):
    # `python -m sdcd.report`, then a look at what it imported: it must stay quick to start
    code = "import runpy, sys; runpy.run_module('sdcd.report', run_name='__main__')"
    wrapped = f"import atexit, sys; atexit.register(lambda: print('torch' in sys.modules)); {code}"
    argv = [sys.executable, "-c", wrapped, *map(str, two_runs)]
    proc = subprocess.run(argv, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "| 0.9912 ± 0.0011 |" in proc.stdout and proc.stdout.rstrip().endswith("False")


def test_by_experiment_gives_mean_and_std_over_seeds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = fake_run(tmp_path, "s0", {"swap/acc/static": {"mean": 0.90, "std": 0.01}}, experiment="lpc_shuffle_cpu")
    b = fake_run(tmp_path, "s1", {"swap/acc/static": {"mean": 0.96, "std": 0.02}}, experiment="lpc_shuffle_cpu")
    c = fake_run(tmp_path, "n0", {"swap/acc/static": {"mean": 0.50, "std": 0.0}}, experiment="lpc_noshuffle_cpu")
    runs = [load_metrics(p) for p in (a, b, c)]
    lines = report.compare_by_experiment(runs).splitlines()
    assert lines[0] == "| experiment | runs | swap/acc/static |"
    # mean of 0.90 and 0.96 = 0.93; sample std = 0.06 / sqrt(2) = 0.0424
    assert lines[2] == "| lpc_shuffle_cpu | 2 | 0.9300 ± 0.0424 |"
    assert lines[3] == "| lpc_noshuffle_cpu | 1 | 0.5000 ± 0.0000 |"
