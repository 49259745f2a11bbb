"""Resume, evaluation and run-directory faults of train/main.py, on one tiny real run (ToMe with a method option
and an EMA) that the tests copy before changing anything."""

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from test_train import SMALL, finish, train

import analysis.extract
from train import checkpoint, main
from train.checkpoint import Checkpoint
from train.config import build_parser, parse_args
from train.engine import non_finite_remedies, read_loss
from train.losses import load_teacher

TINY = [*SMALL, "--demo-train-size", "16", "--demo-test-size", "8", "--batch-size", "4"]
RUN = ["--method", "tome", "--method-option", "rounds=true", "--ema-decay", "0.9", "--log-every", "1"]
RUN += ["--checkpoint-every", "1", "--no-eval-at-start"]  # 4 steps an epoch, a checkpoint after each


def one_thread(argv: list[str]) -> dict[str, float]:
    """train/main.py in this process (faster than a new one), on one thread like the subprocess runs
    (OMP_NUM_THREADS=1: the same sums, and no contention on a small machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main.main(argv)
    finally:
        torch.set_num_threads(threads)


def in_process(args: list[str], output_dir: Path) -> dict[str, float]:
    """train/main.py in this process on the tiny run's settings."""
    return one_thread([*TINY, *RUN, "--output-dir", str(output_dir), *args])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The run directory of one finished epoch, written by the command line as a user runs it."""
    root = tmp_path_factory.mktemp("runs")
    finish(train([*TINY[len(SMALL) :], *RUN, "--epochs", "1", "--run-name", "tome"], root))
    return root / "tome"


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "tome")
    return tmp_path / "tome"


def logged(caplog, pattern: str) -> list[re.Match]:
    return [m for r in caplog.records if (m := re.search(pattern, r.getMessage()))]


def test_method_options_reach_the_model_config_and_checkpoint(finished):
    assert json.loads((finished / "config.json").read_text())["method_options"] == {"rounds": True}
    assert Checkpoint.load(finished / checkpoint.LAST).config["method_options"] == {"rounds": True}
    for options, rounds in (["--method-option", "rounds=true"], True), ([], False):
        model = main.build_model(parse_args(["--method", "tome", *options]), 10, False)
        assert [stage.rounds for stage in model.reducers.values()] == [rounds] * 3


def test_eval_uses_the_checkpoints_own_configuration(finished, tmp_path):
    """No --method, --r or --method-option given: the checkpoint's (ToMe with rounds), not the defaults (DPC-KNN);
    the model's and the EMA's scores are those the run recorded. Contradicting options are refused."""
    recorded = json.loads((finished / "metrics.jsonl").read_text().splitlines()[-1])
    best = str(finished / checkpoint.BEST)
    metrics = one_thread(["--eval", "--resume", best, "--batch-size", "4", "--workers", "0"])
    assert metrics["acc1"] == recorded["test_acc1"] and metrics["ema_acc1"] == recorded["ema_test_acc1"]
    assert metrics["images"] == 8  # the run's demo test split, not the default 500 images
    with pytest.raises(ValueError, match=r"--method tome \(the command line: topk\)"):
        one_thread(["--eval", "--resume", best, "--method", "topk", "--workers", "0"])


@pytest.mark.parametrize(
    ("options", "differs"),
    [
        (["--method-option", "rounds=false"], r"--method-option rounds=True \(the command line: rounds=False\)"),
        (["--r", "0.7"], r"--r 0.5 \(the command line: 0.7\)"),
        (["--reduction-loc", "3", "6"], r"--reduction-loc 3 6 9 \(the command line: 3 6\)"),
    ],
)
def test_resume_refuses_a_checkpoint_of_another_configuration(run_copy, options, differs):
    with pytest.raises(ValueError, match=f"checkpoint of another run: its {differs}.*another --run-name"):
        in_process(["--run-name", "tome", "--resume", "auto", *options], run_copy.parent)


def test_a_new_run_over_an_existing_one_is_refused(run_copy):
    with pytest.raises(ValueError, match="already holds a run .* pass --resume auto to continue it"):
        in_process(["--run-name", "tome"], run_copy.parent)


def test_a_lost_last_checkpoint_falls_back_to_the_previous_one(run_copy, caplog):
    """checkpoint.pth cut short: the run resumes from checkpoint.prev.pth (the last step's, before the epoch's
    evaluation), warns naming both, redoes the epoch's evaluation once, and trains on. With neither left, it
    refuses to start over the run."""
    caplog.set_level(logging.INFO, logger="train")
    last, previous = run_copy / checkpoint.LAST, run_copy / checkpoint.PREVIOUS
    assert Checkpoint.load(previous).progress.step == 4 and Checkpoint.load(last).progress.epoch == 1
    first = json.loads((run_copy / "metrics.jsonl").read_text())
    last.write_bytes(last.read_bytes()[:1000])
    in_process(["--run-name", "tome", "--resume", "auto", "--epochs", "2"], run_copy.parent)
    assert logged(caplog, f"{last} .*not a readable checkpoint.*resuming from {previous} instead \\(step 4\\)")
    metrics = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1] and metrics[0] == first
    assert Checkpoint.load(last).progress.step == 8

    best = (run_copy / checkpoint.BEST).read_bytes()
    for path in (last, previous):
        path.write_bytes(b"")
    with pytest.raises(ValueError, match="holds a run .* but no checkpoint to resume from .*checkpoint.prev.pth"):
        in_process(["--run-name", "tome", "--resume", "auto", "--epochs", "3"], run_copy.parent)
    assert (run_copy / checkpoint.BEST).read_bytes() == best


def test_a_longer_schedule_takes_effect_on_resume(run_copy, tmp_path, caplog):
    """The finished 1-epoch run resumed with --epochs 2 follows the 2-epoch cosine from its step on, as a run
    started with --epochs 2 does (the learning rate rises from the old schedule's end again)."""
    caplog.set_level(logging.INFO, logger="train")
    in_process(["--run-name", "straight", "--epochs", "2"], tmp_path / "straight")
    straight = {int(m[1]): m[2] for m in logged(caplog, r"^step (\d+): .*lr (\S+)$")}
    caplog.clear()
    in_process(["--run-name", "tome", "--resume", "auto", "--epochs", "2"], run_copy.parent)
    resumed = {int(m[1]): m[2] for m in logged(caplog, r"^step (\d+): .*lr (\S+)$")}
    assert sorted(resumed) == [5, 6, 7, 8] and all(resumed[s] == straight[s] for s in resumed)
    (start,) = logged(caplog, r"resumed from .* step 4, lr (\S+)")
    assert float(start[1]) == pytest.approx(float(straight[4]), rel=1e-3) and float(straight[6]) > 2e-5


def test_a_run_directory_in_use_is_refused(run_copy):
    with checkpoint.locked(run_copy), pytest.raises(RuntimeError, match="in use by process .* --run-name"):
        in_process(["--run-name", "tome", "--resume", "auto", "--epochs", "2"], run_copy.parent)
    # the lock file a killed run leaves behind locks nothing
    (run_copy / checkpoint.LOCK).write_text("process 999999 on a host long gone\n")
    with checkpoint.locked(run_copy):
        pass


def test_the_dynamicvit_teacher_and_the_analysis_take_a_real_runs_ema_weights(run_copy):
    """A real run's best checkpoint whose best weights were the EMA's (forced here): timm's ModelEmaV3 keeps
    them under "module.", which the one checkpoint reader removes for both users."""
    path = run_copy / checkpoint.BEST
    state = torch.load(path, weights_only=True)
    state["best"]["source"] = "ema"
    torch.save(state, path)
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items()}
    assert set(ema) != set(state["ema"]) and not torch.equal(ema["head.weight"], state["model"]["head.weight"])
    teacher = load_teacher(parse_args(["--method", "dynamicvit", "--teacher", str(path)]), 10, torch.device("cpu"))
    assert all(torch.equal(value, ema[name]) for name, value in teacher.model.state_dict().items())
    config, weights, which = analysis.extract.load_checkpoint(path, "auto")
    assert which == "ema" and config.method_options == {"rounds": True}
    assert all(torch.equal(value, ema[name]) for name, value in weights.items())


def test_unreadable_resume_files_are_named(tmp_path, finished):
    good = (finished / checkpoint.LAST).read_bytes()
    files = {
        "empty.pth": (b"", "not a readable checkpoint"),
        "cut.pth": (good[: len(good) // 2], "not a readable checkpoint"),
        "text.pth": (b"not a checkpoint\n", "not a readable checkpoint"),
    }
    for name, (content, message) in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{tmp_path / name} .*{message}"):
            in_process(["--resume", str(tmp_path / name), "--run-name", name], tmp_path / "runs")
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(1)}, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match=f"{tmp_path / 'bare.pth'} is not a checkpoint of train/main.py"):
        in_process(["--resume", str(tmp_path / "bare.pth"), "--run-name", "bare"], tmp_path / "runs")
    torch.save({"model": {}}, tmp_path / "weights.pth")
    with pytest.raises(ValueError, match="holds weights but no training state .*--pretrained-path"):
        in_process(["--resume", str(tmp_path / "weights.pth"), "--run-name", "weights"], tmp_path / "runs")


def test_a_non_finite_loss_names_remedies_that_exist():
    running = torch.tensor([float("nan"), 2.0], dtype=torch.float64)
    config = parse_args(["--amp", "fp16", "--method", "dynamicvit"])
    with pytest.raises(FloatingPointError, match="--amp bf16") as raised:
        read_loss(running, checkpoint.Progress(), config, "before step 3")
    options = {o for a in build_parser()._actions for o in a.option_strings}
    named = set(re.findall(r"--[a-z-]+", str(raised.value)))
    assert {"--lr", "--clip-grad"} <= named <= options
    assert "--clip-grad" not in non_finite_remedies(parse_args(["--clip-grad", "1"]))
