"""train/main.py end to end on small demo runs: one process, two gloo processes, kill and resume, --eval."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train.config import parse_args

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--demo-train-size",
    "64",
    "--demo-test-size",
    "16",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--model",
    "deit_tiny_patch16_224",
    "--lr",
    "1e-3",
    "--lr-batch-normalizer",
    "8",
]


def train(
    args: list[str], tmp_path: Path, launcher: list[str] | None = None, env: dict[str, str] | None = None, **popen
) -> subprocess.Popen:
    command = [
        *(launcher or [sys.executable]),
        str(ROOT / "train" / "main.py"),
        *SMALL,
        "--output-dir",
        str(tmp_path),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:]
    return out


def test_one_process_run_writes_metrics_checkpoints_and_evaluates(tmp_path):
    out = finish(train(["--epochs", "2", "--run-name", "one", "--ema-decay", "0.9", "--method", "topk"], tmp_path))
    run = tmp_path / "one"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1] and metrics[-1]["step"] == 16
    assert {"test_acc1", "test_acc5", "ema_test_acc1", "train_loss", "unreadable_images"} <= set(metrics[0])
    assert metrics[0]["test_images"] == 16
    assert json.loads((run / "config.json").read_text())["method"] == "topk"
    assert (run / "checkpoint.pth").is_file() and (run / "best_checkpoint.pth").is_file()
    assert (run / "kept_tokens.png").read_bytes()[:4] == b"\x89PNG"
    evaluated = finish(train(["--eval", "--resume", str(run / "checkpoint.pth"), "--method", "topk"], tmp_path))
    assert f'"acc1": {metrics[-1]["test_acc1"]}' in evaluated, evaluated[-500:]
    assert "identical parameters" in out and '"test_acc1"' in out.split("before training: ")[1].splitlines()[0]


def test_two_gloo_processes_stay_in_sync(tmp_path):
    """tokred's torchrun (python -m tokred.launch), given the script's --r that stock torchrun rejects."""
    launcher = [sys.executable, "-m", "tokred.launch", "--nproc_per_node=2"]
    args = ["--epochs", "1", "--accum-steps", "2", "--ema-decay", "0.9", "--amp", "bf16", "--r", "0.5"]
    args += ["--run-name", "ddp"]
    out = finish(train(args, tmp_path, launcher))
    assert "2 processes hold identical parameters" in out
    metrics = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text())
    assert metrics["step"] == 64 // (8 * 2 * 2) and metrics["test_images"] == 16  # each test image once
    # one process evaluating the saved weights agrees with the two processes' exact evaluation (bf16 rounding
    # may move at most one of the 16 images)
    checkpoint = str(tmp_path / "ddp" / "checkpoint.pth")
    evaluated = finish(train(["--eval", "--resume", checkpoint, "--amp", "bf16"], tmp_path))
    acc1 = json.loads(evaluated.split("evaluation: ")[1].splitlines()[0])["acc1"]
    assert abs(acc1 - metrics["test_acc1"]) <= 100 / 16


def test_killed_run_resumes_to_the_same_weights_and_metrics(tmp_path):
    """SIGKILL inside epoch 0 (after its first checkpoint), then an exit after epoch 0's metrics were written but
    before its checkpoint: the resumed run ends with the weights and the metrics.jsonl of an uninterrupted run
    (each epoch once, its train_loss over all its steps)."""
    args = [
        "--epochs",
        "2",
        "--checkpoint-every",
        "3",
        "--ema-decay",
        "0.9",
        "--mixup",
        "0.8",
        "--cutmix",
        "1.0",
        "--smoothing",
        "0.1",
    ]
    finish(train([*args, "--run-name", "straight"], tmp_path))
    process = train([*args, "--run-name", "killed", "--resume", "auto"], tmp_path, start_new_session=True)
    last = tmp_path / "killed" / "checkpoint.pth"
    deadline = time.time() + 240
    while not last.is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = torch.load(last, weights_only=False)["progress"]
    exits = train(
        [*args, "--run-name", "killed", "--resume", "auto"], tmp_path, env={"TOKRED_EXIT_AT": "epoch-metrics"}
    )
    out, _ = exits.communicate(timeout=300)
    assert f"resumed from {last} at epoch {killed_at['epoch']}, step {killed_at['step']}" in out
    assert exits.returncode == 3 and (tmp_path / "killed" / "metrics.jsonl").read_text().count("\n") == 1, out[-2000:]
    out = finish(train([*args, "--run-name", "killed", "--resume", "auto"], tmp_path))
    assert "dropped the metrics of epoch(s) 0" in out
    straight = torch.load(tmp_path / "straight" / "checkpoint.pth", weights_only=False)
    resumed = torch.load(last, weights_only=False)
    assert resumed["progress"] == straight["progress"]
    for key in ("model", "ema"):
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs after the resume"
    metrics = [(tmp_path / run / "metrics.jsonl").read_text().splitlines() for run in ("straight", "killed")]
    assert metrics[0] == metrics[1] and len(metrics[0]) == 2


def test_dynamicvit_trains_with_its_loss_and_teacher(tmp_path):
    import timm

    teacher = tmp_path / "teacher.pth"
    torch.save({"model": timm.create_model("deit_tiny_patch16_224", num_classes=10).state_dict()}, teacher)
    args = ["--epochs", "1", "--method", "dynamicvit", "--smoothing", "0.1", "--teacher", str(teacher)]
    out = finish(train([*args, "--run-name", "dyvit"], tmp_path))
    assert "identical parameters" in out and (tmp_path / "dyvit" / "metrics.jsonl").is_file()


def write_nuswide(root: Path, rows: int, rng: np.random.Generator) -> None:
    """A small NUS-WIDE tree (SPEC §8.1): solid-colour images, three labels drawn at random, 3/4 for training."""
    (root / "images").mkdir(parents=True)
    lines = ["filepath,label,split_name"]
    for i in range(rows):
        Image.new("RGB", (48, 40), tuple(int(c) for c in rng.integers(0, 256, 3))).save(root / f"images/{i}.jpg")
        labels = [name for name in ("sky", "water", "animal") if rng.random() < 0.5]
        lines.append(f'images/{i}.jpg,"{labels}",{"train" if i % 4 else "val"}')
    (root / "nus_wid_data.csv").write_text("\n".join(lines) + "\n")


def test_multi_label_run_with_the_paper_preset(tmp_path):
    """NUS-WIDE with --preset paper (ASL, Cutout, RandAugment, EMA 0.9997) and overrides; mAP on the test split
    and a held-out part of the training set that selects the best checkpoint; CSV and TensorBoard records."""
    write_nuswide(tmp_path / "nus", 40, np.random.default_rng(0))
    args = ["--dataset", "nuswide", "--data", str(tmp_path / "nus"), "--preset", "paper", "--method", "topk"]
    overrides = ["--epochs", "2", "--global-batch", "8", "--no-pretrained", "--amp", "none", "--repeated-aug", "1"]
    out = finish(
        train([*args, *overrides, "--heldout-fraction", "0.2", "--tensorboard", "--run-name", "nus"], tmp_path)
    )
    run = tmp_path / "nus"
    config = json.loads((run / "config.json").read_text())
    assert (config["loss"], config["cutout"], config["ema_decay"], config["epochs"]) == ("asl", 0.5, 0.9997, 2)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["test_images"] == 10 and metrics[-1]["heldout_images"] == 6  # 30 training rows, 6 held out
    assert {"test_map", "heldout_map", "ema_test_map", "ema_heldout_map"} <= set(metrics[-1])
    assert all(0 <= m[k] <= 100 for m in metrics for k in m if k.endswith("_map"))
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,step,train_loss")
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    best = torch.load(run / "best_checkpoint.pth", weights_only=False)["best"]
    assert best["metric"] == "heldout_map" and best["source"] in ("model", "ema")
    assert best["score"] == max(max(m["heldout_map"], m["ema_heldout_map"]) for m in metrics)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "kept_tokens.png").is_file() and "identical parameters" in out


def test_pretrained_weights_from_a_file(tmp_path):
    """--pretrained-path loads a DeiT checkpoint ({"model": ...}); the head is rebuilt for the dataset; a missing
    file is a clear error."""
    import timm

    torch.manual_seed(5)
    source = timm.create_model("deit_tiny_patch16_224")
    path = tmp_path / "deit_tiny.pth"
    torch.save({"model": source.state_dict()}, path)
    args = [
        "--epochs",
        "1",
        "--lr",
        "0",
        "--warmup-lr",
        "0",
        "--min-lr",
        "0",
        "--pretrained-path",
        str(path),
        "--run-name",
        "pre",
    ]  # a zero learning rate: the weights must stay what the file holds
    finish(train(args, tmp_path))
    trained = torch.load(tmp_path / "pre" / "checkpoint.pth", weights_only=False)["model"]
    torch.testing.assert_close(trained["blocks.7.mlp.fc2.weight"], source.state_dict()["blocks.7.mlp.fc2.weight"])
    assert trained["head.weight"].shape == (10, 192)
    missing = train(["--pretrained-path", str(tmp_path / "nope.pth"), "--run-name", "x"], tmp_path)
    out, _ = missing.communicate(timeout=120)
    assert missing.returncode != 0 and "pretrained weights not found" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--eval"], "--eval needs --resume"),
        (["--method", "kmeans"], "invalid choice: 'kmeans'"),
        (["--batch-size", "0"], "--batch-size: 0 is not allowed, it must be >= 1"),
        (["--mixup", "0.8", "--batch-size", "7"], "use an even --batch-size"),
        (["--clip-grad", "-1"], "--clip-grad: -1 is not allowed, it must be > 0"),
        (["--clip-grad", "0"], "--clip-grad: 0 is not allowed, it must be > 0"),
        (["--ema-decay", "1"], r"--ema-decay: 1 is not allowed, it must be in \[0, 1\)"),
        (["--ema-decay", "-0.5"], r"--ema-decay: -0.5 is not allowed, it must be in \[0, 1\)"),
        (["--warmup-epochs", "-1"], "--warmup-epochs: -1 is not allowed, it must be >= 0"),
        (["--heldout-fraction", "1"], r"--heldout-fraction: 1 is not allowed, it must be in \[0, 1\)"),
        (["--drop-path", "1.5"], r"--drop-path: 1.5 is not allowed, it must be in \[0, 1\)"),
        (["--smoothing", "1"], r"--smoothing: 1 is not allowed, it must be in \[0, 1\)"),
        (["--log-every", "0"], "--log-every: 0 is not allowed, it must be >= 1"),
        (["--checkpoint-every", "0"], "--checkpoint-every: 0 is not allowed, it must be >= 1"),
        (["--demo-test-size", "0"], "--demo-test-size: 0 is not allowed, it must be >= 1"),
        (["--lr", "-0.001"], "--lr: -0.001 is not allowed, it must be >= 0"),
        (["--lr", "nan"], "--lr: nan is not allowed"),
        (["--workers", "-1"], "--workers: -1 is not allowed, it must be >= 0"),
        (["--reprob", "2"], r"--reprob: 2 is not allowed, it must be in \[0, 1\]"),
        (["--global-batch", "0"], "--global-batch: 0 is not allowed"),
        (["--device", "gpu"], "--device: 'gpu' is not a device torch knows"),
        (["--method", "tome", "--method-option", "rounds=maybe"], "rounds='maybe' of method 'tome' is not a bool"),
        (["--method", "topk", "--method-option", "k=1"], "'topk' takes none"),
    ],
)
def test_bad_options_name_the_option_and_what_is_allowed(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_cuda_without_a_gpu_says_what_to_do(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda"])
    assert "no CUDA device is visible to torch here; use --device cpu" in capsys.readouterr().err


def test_method_options_are_typed_and_repeatable():
    config = parse_args(
        ["--method", "dpc_knn", "--method-option", "k_neighbors=3", "--method-option", "tie_break=noise"]
    )
    assert config.method_options == {"k_neighbors": 3, "tie_break": "noise"}
    assert parse_args(["--method", "tome", "--method-option", "rounds=False"]).method_options == {"rounds": False}
    assert json.loads(parse_args([]).to_json())["method_options"] == {}
