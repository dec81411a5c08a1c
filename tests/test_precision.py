"""sdcd.precision: bf16 on a CPU without bf16 arithmetic runs in float32, and says so."""

import pytest

import sdcd.precision
from sdcd.cli import main
from sdcd.precision import KEEP_ENV, cpu_precision


@pytest.fixture
def no_cpu_bf16(monkeypatch):
    monkeypatch.setattr(sdcd.precision, "native_cpu_bf16", lambda: False)
    monkeypatch.delenv(KEEP_ENV, raising=False)


def test_bf16_on_a_cpu_without_bf16_becomes_32_true(no_cpu_bf16, monkeypatch):
    for precision in ("bf16-mixed", "bf16-true", "bf16"):
        ran, note = cpu_precision(precision, "cpu")
        assert ran == "32-true" and f"trainer.precision={precision}" in note and "32-true" in note
    assert cpu_precision("32-true", "cpu") == ("32-true", None)
    assert cpu_precision("16-mixed", "cpu") == ("16-mixed", None)
    assert cpu_precision("bf16-mixed", "gpu") == ("bf16-mixed", None)  # not a CPU run
    monkeypatch.setenv(KEEP_ENV, "keep")
    ran, note = cpu_precision("bf16-mixed", "cpu")
    assert ran == "bf16-mixed" and "kept" in note


def test_bf16_is_kept_on_a_cpu_with_bf16(monkeypatch):
    monkeypatch.setattr(sdcd.precision, "native_cpu_bf16", lambda: True)
    assert cpu_precision("bf16-mixed", "cpu") == ("bf16-mixed", None)


def test_the_cli_runs_and_records_the_precision_that_runs(no_cpu_bf16, in_tmp, capsys):
    args = ["--config", "tests/configs/tiny.yaml", "--trainer.accelerator=cpu", "--trainer.precision=bf16-mixed"]
    cli = main(args, run=False)
    assert cli.trainer.precision == "32-true"
    assert cli.config["trainer"]["precision"] == "32-true"  # what config.yaml records
    out = capsys.readouterr().out
    assert "sdcd: this CPU has no bf16 arithmetic" in out and "running with 32-true" in out
