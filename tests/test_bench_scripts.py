"""The benchmark scripts of bench/ (issue 7) run and report consistent numbers, on CPU with tiny configs."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

train_step = importlib.import_module("train_step")
epoch = importlib.import_module("epoch")
time_to_accuracy = importlib.import_module("time_to_accuracy")


@pytest.mark.parametrize("script", ["train_step.py", "epoch.py", "time_to_accuracy.py", "swap_errors.py",
                                    "appearance_subspace.py", "static_separation.py", "probe_codes.py",
                                    "ceiling.py", "frame_codes.py"])
def test_help(script):
    out = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:") and "--json" in out.stdout


@pytest.mark.parametrize("script", ["gpu_run.sh", "prepare_gpu_run.sh"])
def test_shell_scripts_parse(script):
    out = subprocess.run(["bash", "-n", str(BENCH / script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_flops_are_counted_and_linear_in_batch(tiny_model_kwargs):
    from sdcd.model import SDCD

    torch.manual_seed(0)
    model = SDCD(**tiny_model_kwargs)
    one, two = (train_step.count_flops(model, torch.rand(b, 4, 3, 32, 32)) for b in (2, 4))
    assert one > 0 and two == 2 * one  # every layer is per sequence or per frame
    assert all(p.grad is None for p in model.parameters())  # counting leaves no gradients behind


def test_train_step_reports_consistent_rates(tmp_path):
    out = tmp_path / "step.json"
    result = train_step.main(
        [
            "--device",
            "cpu",
            "--config",
            "small",
            "--variants",
            "eager_fp32",
            "--steps",
            "1",
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--matmul-size",
            "64",
            "--json",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    c = result["configs"]["small"]
    r = c["variants"]["eager_fp32"]
    assert (c["batch"], c["n_frames"], c["frame_size"]) == (16, 4, 32)  # tests/configs/tiny.yaml
    assert len(r["step_s_repeats"]) == 2 and r["step_s"] > 0
    assert r["steps_per_s"] == pytest.approx(1 / r["step_s"])
    assert r["frames_per_s"] == pytest.approx(r["steps_per_s"] * 16 * 4)
    assert r["tflops"] == pytest.approx(c["flops_per_step"] * r["steps_per_s"] / 1e12)
    assert r["fraction_of_bf16_peak"] == pytest.approx(r["tflops"] / result["peak"]["matmul_tflops_bfloat16"])
    assert result["env"]["torch"] == torch.__version__ and result["env"]["load_average_start"]


def test_choose_variant_takes_the_fastest_lightning_variant(tmp_path):
    measured = {
        "eager_fp32": {"step_s": 0.03},
        "eager_bf16": {"step_s": 0.02},
        "compiled_bf16": {"error": "boom"},
        "compiled_bf16_cg": {"step_s": 0.001},
    }  # CUDA graphs are not a Lightning variant
    path = tmp_path / "step.json"
    path.write_text(json.dumps({"configs": {"sprites": {"variants": measured}}}))
    assert epoch.choose_variant(f"auto:{path}", "sprites", "cuda") == "eager_bf16"
    assert epoch.choose_variant(f"auto:{path}", "dsprites", "cuda") == "eager_bf16"  # not measured: fallback
    assert epoch.choose_variant(f"auto:{tmp_path / 'missing.json'}", "sprites", "cpu") == "eager_fp32"
    assert epoch.choose_variant("compiled_fp32", "sprites", "cpu") == "compiled_fp32"


def test_epoch_times_a_reduced_epoch(in_tmp):
    result = epoch.main(["--data", "small", "--limit-train-batches", "2", "--json", "epoch.json"])
    r = result["epochs"]["small"]
    assert r["steps"] == 2 and r["full_epoch"] is False and r["batch_size"] == 16
    assert 0 < r["first_step_s"] <= r["epoch_s"]
    assert r["sequences_per_s"] == pytest.approx(2 * 16 / r["epoch_s"])
    assert json.loads(Path("epoch.json").read_text())["epochs"]["small"]["steps"] == 2


def _untrained_tiny_judge(path: Path, n_train: int) -> None:
    """A judge file for the data of tests/configs/tiny.yaml with n_train sequences (weights untrained)."""
    from sdcd.data_modules.dsprites import MovingDSpritesDataModule
    from sdcd.judge import Judge, data_signature, save_judge

    dm = MovingDSpritesDataModule(
        variant="cond", n_train=n_train, n_val=32, n_test=32, n_frames=4, frame_size=32, batch_size=16, seed=0
    )
    judge = Judge(dm.factors, frame_size=32, base_channels=8, embed_dim=16, hidden_size=16, head_hidden=16)
    save_judge(judge, path, data_signature(dm))


def _time_to_accuracy(root, *options: str) -> dict:
    """time_to_accuracy on the small config with the untrained tiny judge, 32 sequences, no test."""
    _untrained_tiny_judge(root / "judge.pt", n_train=32)
    return time_to_accuracy.main(
        ["--config", "small", "--judge", "judge.pt", "--variant", "eager_fp32", "--eval-sequences", "16",
         "--max-epochs", "5", "--no-test", "--root-dir", str(root), *options, "--", "--data.n_train=32"]
    )


def test_time_to_accuracy_stops_at_the_target(in_tmp):
    # target 0: reached at the first evaluation, so training stops after epoch 1 of 5
    record = _time_to_accuracy(in_tmp, "--target", "0", "--eval-every", "1", "--json", "tta.json")
    assert record["epochs"] == 1 and record["steps"] == 2  # 32 sequences / batch 16
    assert record["reached"] == record["progress"][0] and len(record["progress"]) == 1
    point = record["reached"]
    assert 0 < point["train_s"] <= point["wall_s"] and point["epoch"] == 1
    assert 0 <= point["swap_static"] <= 1 and 0 <= point["swap_dynamic"] <= 1
    assert json.loads(Path("tta.json").read_text())["reached"]["epoch"] == 1


def test_time_to_accuracy_stops_on_its_clock(in_tmp):
    # an unreachable target and a zero budget: stops after the first epoch, evaluated, with the reason
    record = _time_to_accuracy(in_tmp, "--target", "1.01", "--eval-every", "10", "--max-train-s", "0")
    assert record["reached"] is None and record["epochs"] == 1
    assert len(record["progress"]) == 1 and "--max-train-s" in record["stopped"]


@pytest.mark.slow  # six processes importing torch and Lightning: ~2 min on a loaded 2-core CPU
def test_gpu_run_tiny_end_to_end(tmp_path):
    pytest.importorskip("setuptools", reason="the install phase builds sdcd offline (--no-build-isolation)")
    out, work = tmp_path / "out", tmp_path / "work"
    env = {
        **os.environ,
        "OUT": str(out),
        "SDCD_WORK": str(work),
        "SDCD_BENCH_TINY": "1",
        "PYTHON": sys.executable,
    }
    run = subprocess.run(
        ["bash", str(BENCH / "gpu_run.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    files = {p.name for p in out.iterdir()}
    assert {
        "summary.md",
        "log.txt",
        "env.txt",
        "train_step.json",
        "judge.json",
        "epoch.json",
        "tta.json",
    } <= files
    assert len(files) <= 8  # what the device tool brings back
    phases = dict(line.split("\t")[:2] for line in (work / "phases.tsv").read_text().splitlines())
    expected = {"install", "train_step", "judge", "epoch", "time_to_accuracy"}
    assert expected <= set(phases) and all(phases[p] == "0" for p in phases), phases
    summary = (out / "summary.md").read_text()
    assert "| time_to_accuracy | ok |" in summary and "smoke run" in summary
    tta = json.loads((out / "tta.json").read_text())
    assert tta["progress"] and tta["test"]["swap/acc/static"]["mean"] >= 0 and tta["stopped"]
    assert json.loads((out / "judge.json").read_text())["test_scores"]["acc/static"] >= 0
    assert str(work / "site") in (out / "env.txt").read_text()  # sdcd came from the install phase


def test_swap_errors_tell_a_leak_through_the_dynamics_from_a_perfect_swap():
    from helpers.oracle import Coded, OracleJudge, OracleModel

    from sdcd.interface import Codes

    swap_errors = importlib.import_module("swap_errors").swap_errors

    class Leaky(OracleModel):
        """The colour travels with λ: a swap shows the partner's colour, A's shape."""

        def encode(self, x, mean=False):
            c = super().encode(x)
            return Codes(f=c.f, f_mean=c.f_mean, lam=torch.cat([c.lam, c.f[:, None, :1].expand_as(c.lam)], 2),
                         features=c.features)

        def decode(self, f, lam):
            out = super().decode(f, lam[..., :1])
            out[:, :, 0, 0, 0] = lam[..., 1]
            return out

    dm = Coded(n=37)
    dm.setup("test")
    batches = [dm.batch("test", idx) for idx in torch.arange(37).split(12)]
    perfect = swap_errors(OracleModel(), OracleJudge(), batches)
    assert set(perfect) == {"colour", "shape"}  # the static factors only
    assert perfect["colour"]["acc"] == 1.0 and perfect["colour"]["errors"] == 0
    assert perfect["colour"]["read_as_partner"] == 0.0
    leaky = swap_errors(Leaky(), OracleJudge(), batches)
    colour = leaky["colour"]
    assert colour["read_as_partner"] == 1.0 and colour["acc_same_class"] == 1.0 and colour["acc_other_class"] == 0.0
    assert 0 < colour["acc"] < 1 and sum(map(sum, colour["confusion"])) == 37
    assert leaky["shape"]["acc"] == 1.0

    class NoisySample(OracleModel):
        """The sampled static code is another sequence's; its mean is exact."""

        def encode(self, x, mean=False):
            c = super().encode(x)
            return c if mean else c._replace(f=c.f.roll(1, 0))

    assert swap_errors(NoisySample(), OracleJudge(), batches)["colour"]["acc"] < 1.0
    assert swap_errors(NoisySample(), OracleJudge(), batches, mean=True)["colour"]["acc"] == 1.0


def test_the_appearance_subspace_holds_what_a_recolouring_moves_and_nothing_else():
    """Codes with a colour in dims 0–1 (moved by the recolouring) and an action in dim 2 (not moved), in a
    rotated basis: the subspace is 2-d, the colour is read from it and the action only from the rest."""
    split_probes = importlib.import_module("appearance_subspace").split_probes
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen))

    def codes(n):
        colour, action = torch.randint(0, 4, (n,), generator=gen), torch.randint(0, 3, (n,), generator=gen)
        means = torch.tensor([[0.0, 0.0], [0.0, 3.0], [3.0, 0.0], [3.0, 3.0]])
        z = torch.zeros(n, 5)
        z[:, :2] = means[colour] + 0.1 * torch.randn(n, 2, generator=gen)
        z[:, 2] = 3.0 * action + 0.1 * torch.randn(n, generator=gen)
        z[:, 3:] = 0.1 * torch.randn(n, 2, generator=gen)
        moved = z.clone()
        moved[:, :2] = means[torch.randint(0, 4, (n,), generator=gen)]  # another colour, same action
        return z @ q.T, (moved - z) @ q.T, torch.stack([colour, action], 1)

    f_tr, d_tr, y_tr = codes(400)
    f_te, _, y_te = codes(200)
    result = split_probes(f_tr, d_tr, y_tr, f_te, y_te, [4, 3], masses=(0.99,))[0.99]
    assert result["dims"] == 2
    assert result["in"][0] > 0.95 and result["in"][1] < 0.5  # colour in, action (chance 1/3) not
    assert result["out"][1] > 0.95 and result["out"][0] < 0.5  # the rest: the action, not the colour (chance 1/4)


def test_static_separation_measures_pairs_in_posterior_sds():
    static_separation = importlib.import_module("static_separation").static_separation
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(400)
    centres = torch.zeros(3, 4)
    centres[1, 0], centres[2, 1] = 1.0, 5.0  # class 1 one unit from class 0 along dim 0, class 2 five along dim 1
    mu = centres[labels] + 0.1 * torch.randn(len(labels), 4, generator=g)
    var = torch.full((len(labels), 4), 0.04)  # posterior sd 0.2 along every direction
    rows = static_separation(mu, var, labels)
    assert [(r["a"], r["b"]) for r in rows][0] == (0, 1)  # the closest pair first
    first = rows[0]
    assert abs(first["separation"] - 1.0) < 0.03 and abs(first["within_sd"] - 0.1) < 0.01
    assert abs(first["posterior_sd"] - 0.2) < 1e-6 and abs(first["ratio"] - 5.0) < 0.2
    assert rows[-1]["ratio"] > 20  # 0–2 and 1–2 are about 25 posterior sds apart


def test_frame_codes_measure_the_frames_spread_and_the_classes_apart():
    from frame_codes import frame_code_summary

    # 4 sequences of 2 frames, D = 1, unit frame variances; classes 0, 0, 1, 1
    mu_t = torch.tensor([[[0.0], [2.0]], [[0.0], [2.0]], [[4.0], [4.0]], [[4.0], [4.0]]])
    logvar_t = torch.zeros_like(mu_t)
    out = frame_code_summary(mu_t, logvar_t, torch.tensor([0, 0, 1, 1]), 2)
    torch.testing.assert_close(out["f"], torch.tensor([[1.0], [1.0], [4.0], [4.0]]))  # aggregated var 1/2
    torch.testing.assert_close(out["first"], torch.tensor([[0.0], [0.0], [4.0], [4.0]]))
    # within: the spread 2 of the two moving sequences and 0 of the others, over var 1/2, averaged
    torch.testing.assert_close(out["within"], torch.tensor([2.0]))
    # between: variance of the class means 1 and 4 (4.5) over the aggregated variance 1/2
    torch.testing.assert_close(out["between"], torch.tensor([9.0]))
    # ½ Σ (μ_t − f)² / σ_t²: ½ (1 + 1) for each moving sequence, batch-averaged
    torch.testing.assert_close(out["consistency"], torch.tensor(0.5))


def test_frame_codes_dims_give_each_dimensions_spread_and_the_factors_shares():
    from frame_codes import dimension_shares

    # 4 sequences, D = 2: dim 0 follows factor 1 only, dim 1 factor 0 (plus a little of factor 1)
    labels = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    f = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])
    var = torch.full((4, 2), 0.25)  # posterior std 0.5
    out = dimension_shares(f, var, labels, factor=0)
    # std over 4 of (0, 2, 0, 2) and (0, 0, 4, 4): 2/√3 and 4/√3, over 0.5
    torch.testing.assert_close(out["spread"], torch.tensor([4.0, 8.0]) / 3 ** 0.5)
    # factor 0's class means: dim 0 (1, 1) → share 0; dim 1 (0, 4) explain all of it → 1
    torch.testing.assert_close(out["share"], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(out["other"], torch.tensor([1.0, 0.0]))
    f[:, 1] += torch.tensor([0.0, 2.0, 0.0, 2.0])  # dim 1 now (0, 2, 4, 6): factor 0 explains 16 of 20 / 4
    torch.testing.assert_close(dimension_shares(f, var, labels, factor=0)["share"], torch.tensor([0.0, 0.8]))


def test_a_sequence_swapped_with_itself_reads_as_its_own_static_mean(tiny_model_kwargs):
    """frame_codes --swapped: h(h⁻¹(e, f), f) = e, so with one row (its own partner) the swapped reading is
    its own posterior mean; with two rows each is read from the other's dynamics."""
    from frame_codes import swapped_means

    from sdcd.model import SDCD
    from sdcd.static import product_of_gaussians

    torch.manual_seed(0)
    model = SDCD(**tiny_model_kwargs).eval()
    e = 3 * torch.randn(2, 4, 16)
    own = product_of_gaussians(*model.static_encoder(e), 1e-6)[0]
    torch.testing.assert_close(swapped_means(model, e[:1]), own[:1], rtol=1e-3, atol=1e-3)
    assert not torch.allclose(swapped_means(model, e), own, rtol=1e-3, atol=1e-3)
