"""The README's commands are the contract: every command of its ```bash blocks runs as written, in a scratch
folder, with only small sizes appended to training commands; what cannot run here is skipped by name below."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from train.config import parse_args

ROOT = Path(__file__).resolve().parents[1]
SIZES = ["--epochs", "1", "--demo-train-size", "8", "--demo-test-size", "8", "--batch-size", "4", "--workers", "0"]
SKIPPED = {
    "make demo": "the whole set-up again, then the demo's minutes of training",
    "make test": "the whole set-up again, then this suite",
    "make bench": "the whole set-up again, then the benchmarks",
    "torchrun --nproc_per_node=8 train/main.py --preset paper --dataset imagenet --data /data/imagenet "
    "--model deit_small_patch16_224 --method evit --r 0.7 --batch-size 128": "needs ImageNet (and 8 GPUs)",
    "python bench/ops.py --device cuda --batch 256": "needs a GPU",
    "python bench/models.py": "a benchmark: minutes of CPU time",
    "python bench/models.py --models deit_tiny_patch16_224 deit_small_patch16_224 deit_base_patch16_224 "
    "--rates 0.25 0.5 0.7 0.9 --batch 16 --train-step": "a benchmark: many minutes of CPU time",
    "python bench/models.py --device cuda --dtype bfloat16 --batch 256": "needs a GPU",
    "python bench/models.py --batch 1": "a benchmark: a minute of CPU time",
    "python bench/models.py --models deit_tiny_patch16_224 --batch 8 --compile --methods topk tome dpc_knn ats "
    "--min-time 1": "a benchmark: minutes of compilation",
    "python -m tokred.sweep --out sweeps/demo": "the default sweep: minutes of CPU time",
    "python -m tokred.sweep --model deit_small_patch16_224 --pretrained-path deit_small.pth --dataset imagenet "
    "--data /data/imagenet --rates 0.25 0.5 0.7 0.9 --limit 0 --batch 256 --device cuda --out sweeps/imagenet": (
        "needs ImageNet, DeiT-S weights and a GPU"
    ),
}


def readme_commands() -> list[list[str]]:
    """The commands of the README's bash blocks as tokens: continuation lines joined, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [tokens for line in lines if (tokens := shlex.split(line, comments=True))]


def as_run(name: str, run: str) -> list[str]:
    """The command ``name`` (its tokens joined by spaces) with its placeholders filled: <run> is the first
    training run, an [--option VALUE] in brackets is optional and left out; training commands get small sizes."""
    filled = shlex.split(re.sub(r"\s*\[[^\]]*\]", "", name).replace("<run>", run))
    return [*filled, *SIZES] if "train/main.py" in filled else filled


def test_every_readme_command_runs_or_is_skipped_by_name(tmp_path):
    commands = readme_commands()
    names = [" ".join(tokens) for tokens in commands]
    assert not set(SKIPPED) - set(names), f"skipped commands no longer in the README: {set(SKIPPED) - set(names)}"
    training = next(tokens for tokens in commands if tokens[:2] == ["python", "train/main.py"])
    run = parse_args(training[2:]).run_dir.name
    for folder in ("train", "analysis", "bench"):  # the scratch folder stands for the repository root
        (tmp_path / folder).symlink_to(ROOT / folder)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # python, torchrun: the venv's
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    failures = []
    for name in names:
        if name in SKIPPED:
            continue
        command = as_run(name, run)
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            failures.append(f"$ {shlex.join(command)}\n{(done.stdout + done.stderr)[-1500:]}")
    assert not failures, "README commands failed:\n\n" + "\n\n".join(failures)
