"""tokred's torchrun: torchrun's own options parsed as torch parses them, everything after the script left to it."""

import sys
from importlib import metadata
from pathlib import Path

import pytest
from torch.distributed import run as torch_run

from tokred import launch

# (command line, index of the training script / module / program in it)
COMMANDS = [
    (["train/main.py", "--method", "dpc_knn", "--r", "0.5"], 0),
    (["--nproc_per_node=2", "train/main.py", "--method", "tome", "--r", "0.7"], 1),
    (["--nproc_per_node", "2", "train/main.py", "--r", "0.7"], 2),
    (["--nproc-per-node", "2", "--standalone", "--nnodes=1", "train/main.py", "--r", "0.5"], 4),
    (["--rdzv-backend", "c10d", "--rdzv_endpoint=localhost:0", "s.py", "--rdzv-endpoint", "x", "--role", "y"], 3),
    (["--rdzv-e", "localhost:0", "s.py", "--r"], 2),  # an unambiguous abbreviation of torchrun's own option
    (["--standal", "s.py", "--standalone"], 1),
    (["-m", "train.main", "--r", "0.5", "-m"], 1),
    (["--module", "--nproc_per_node=2", "train.main", "--module", "x"], 2),
    (["--no-python", "echo", "--r", "0.5"], 1),
    (["--no_python", "--max-restarts", "0", "echo", "--no-python"], 3),
    (["-r", "3", "-t", "1", "s.py", "-r", "2", "--tee"], 4),
    (["-r3", "--tee=0", "s.py", "--log-dir", "d"], 2),
    (["-mr", "3", "pkg.mod", "-r", "1"], 2),  # joined short flags, the last one taking the next token
    (["-mr3", "pkg.mod", "--r=1"], 1),
    (["--log-dir", "/tmp/logs", "--role", "trainer", "--run-path", "s.py", "--help"], 5),
    (["--max-restarts=0", "--", "s.py", "--help", "--", "-x"], 2),
    (["--", "-s.py", "--r", "1"], 1),  # after --, a script name may even start with a dash
    (["s.py", "positional", "--x=1", "--", "--nproc_per_node=4"], 0),
]


@pytest.mark.parametrize(("argv", "script"), COMMANDS)
def test_the_script_and_its_options_are_separated_as_torchrun_would(argv, script):
    args = launch.parse_args(argv)
    # torch's own parser, given the command up to the script (it has no trouble then), is the reference
    expected = torch_run.parse_args(argv[: script + 1])
    assert vars(args) == {**vars(expected), "training_script_args": argv[script + 1 :]}


def test_stock_torchrun_rejects_what_ours_accepts():
    """The upstream problem this launcher exists for; when torch fixes it, the README's note can go."""
    with pytest.raises(SystemExit):
        torch_run.parse_args(["--nproc_per_node=2", "train/main.py", "--method", "tome", "--r", "0.7"])


@pytest.mark.parametrize("argv", [[], ["--nproc_per_node=2"], ["--bogus", "s.py"], ["--"], ["--rdzv", "x", "s.py"]])
def test_torchruns_own_errors_stay_its_own(argv, capsys):
    """No script, an unknown or an ambiguous torchrun option: torch's parser reports it, as stock torchrun."""
    with pytest.raises(SystemExit) as raised:
        launch.parse_args(argv)
    assert raised.value.code == 2 and "error:" in capsys.readouterr().err


def test_help_is_torchruns(capsys):
    with pytest.raises(SystemExit) as raised:
        launch.parse_args(["--help"])
    assert raised.value.code == 0 and "--nproc-per-node" in capsys.readouterr().out


def test_the_environments_torchrun_is_ours():
    """Installing tokred (make install, pip install -e .) puts its torchrun in the environment, over torch's."""
    declared = metadata.entry_points(group="console_scripts", name="torchrun")
    assert any(e.value == "tokred.launch:main" for e in declared), "tokred's metadata declares no torchrun"
    script = Path(sys.executable).parent / "torchrun"
    assert script.is_file(), f"{script} is missing: reinstall tokred (make install)"
    assert "tokred.launch" in script.read_text(), (
        f"{script} is torch's (torch was installed after tokred?): reinstall tokred with "
        "`pip install -e . --no-build-isolation --no-deps` to get the torchrun that passes --r to the script"
    )
