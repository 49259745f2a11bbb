"""--preset paper against supplementary Tables 2–5 (values typed from the paper), overrides and the global batch."""

import json

import pytest

import tokred
from train.config import parse_args
from train.presets import KEEP_RATES, TABLE3, TABLE5

SCHEDULE = ("lr", "lr_batch_normalizer", "warmup_epochs", "backbone_lr_scale", "backbone_freeze_epochs")


@pytest.fixture(autouse=True)
def one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def paper(dataset: str, method: str, r: float, *args: str):
    return parse_args(["--preset", "paper", "--dataset", dataset, "--method", method, "--r", str(r), *args])


def test_tables_cover_every_method_and_cell():
    assert set(TABLE3) == set(TABLE5) == set(tokred.METHODS)
    for method, row in TABLE5.items():
        groups = [group.split() for group in row.split("|")]
        assert [len(g) for g in groups] == [4, 4, 4], method
        assert {cell for g in groups for cell in g} <= {"I", "D", "-"}, method
        assert len(TABLE3[method]) == len(KEEP_RATES)


@pytest.mark.parametrize(
    "method, r, schedule",  # Table 3: W-E, B-LR, B-FE
    [
        ("dpc_knn", 0.5, (20, 0.01, 5)),
        ("dpc_knn", 0.25, (5, 0.01, 5)),
        ("topk", 0.9, (20, 1, 0)),
        ("dynamicvit", 0.25, (20, 0.01, 5)),
        ("kmedoids", 0.7, (20, 0.01, 5)),
        ("ats", 0.9, (5, 0.01, 5)),
        ("sit", 0.9, (20, 0.01, 5)),
        ("sinkhorn", 0.5, (5, 1, 0)),
        ("linf", 0.25, (5, 1, 0)),
    ],
)
def test_imagenet_uses_table3(method: str, r: float, schedule: tuple[float, ...]):
    config = paper("imagenet", method, r)
    assert tuple(getattr(config, name) for name in SCHEDULE) == (1e-3, 1024, *schedule)


@pytest.mark.parametrize(
    "dataset, method, r, schedule",  # Table 5 → I: lr 1e-3, LR-norm 1024 and Table 3; D: Table 4
    [
        ("nabirds", "topk", 0.7, (1e-3, 1024, 5, 0.1, 5)),  # D
        ("coco", "dynamicvit", 0.5, (1e-3, 1024, 5, 0.01, 5)),  # I
        ("coco", "dynamicvit", 0.25, (1e-3, 1024, 20, 0.01, 5)),  # I
        ("coco", "dynamicvit", 0.7, (1e-4, 512, 5, 1, 0)),  # D
        ("nuswide", "dynamicvit", 0.25, (1e-3, 1024, 20, 0.01, 5)),  # I
        ("nuswide", "dynamicvit", 0.5, (1e-4, 512, 5, 1, 0)),  # D
        ("nuswide", "sinkhorn", 0.9, (1e-3, 1024, 5, 1, 0)),  # I
        ("nuswide", "tome", 0.5, (1e-4, 512, 5, 1, 0)),  # D
        ("coco", "patchmerger", 0.9, (1e-4, 512, 5, 1, 0)),  # D
        ("nabirds", "l1", 0.25, (1e-3, 1024, 5, 1, 0)),  # I (the documented reading of "I D")
        ("nabirds", "l1", 0.5, (1e-3, 1024, 5, 0.1, 5)),  # D
        ("nabirds", "sit", 0.25, (1e-3, 1024, 5, 0.1, 5)),  # D (the documented reading of "D I I I I")
        ("coco", "sit", 0.9, (1e-3, 1024, 20, 0.01, 5)),  # I
    ],
)
def test_other_datasets_follow_table5(dataset: str, method: str, r: float, schedule: tuple[float, ...]):
    config = paper(dataset, method, r)
    assert tuple(getattr(config, name) for name in SCHEDULE) == schedule


@pytest.mark.parametrize(
    "dataset, static",  # Table 2 and SPEC §5.9
    [
        (
            "imagenet",
            {"epochs": 30, "global_batch": 1024, "loss": "ce", "smoothing": 0.1, "ema_decay": 0.9999,
             "aa": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "mixup": 0.8, "cutmix": 1.0, "cutout": 0.0},
        ),
        (
            "nabirds",
            {"epochs": 50, "global_batch": 1024, "loss": "ce", "smoothing": 0.0, "ema_decay": 0.9999,
             "aa": None, "reprob": 0.0, "color_jitter": 0.0, "mixup": 0.0, "cutmix": 0.0, "cutout": 0.0},
        ),
        (
            "coco",
            {"epochs": 40, "global_batch": 512, "loss": "asl", "asl_gamma_neg": 4, "asl_gamma_pos": 0,
             "asl_clip": 0.05, "smoothing": 0.0, "ema_decay": 0.9997, "aa": "rand-m9-mstd0.5-inc1", "cutout": 0.5,
             "reprob": 0.0, "mixup": 0.0, "cutmix": 0.0},
        ),
        (
            "nuswide",
            {"epochs": 40, "global_batch": 512, "loss": "asl", "asl_gamma_neg": 4, "asl_clip": 0.05,
             "ema_decay": 0.9997, "aa": "rand-m9-mstd0.5-inc1", "cutout": 0.5, "mixup": 0.0},
        ),
    ],
)  # fmt: skip
def test_static_settings_per_dataset(dataset: str, static: dict):
    common = {"weight_decay": 0.05, "drop_path": 0.1, "repeated_aug": 3, "amp": "fp16", "pretrained": True,
              "warmup_lr": 1e-6, "min_lr": 1e-5}  # fmt: skip
    written = json.loads(paper(dataset, "evit", 0.7, "--batch-size", "64").to_json())  # what main.py writes
    assert {name: written[name] for name in {**static, **common}} == {**static, **common}


def test_command_line_wins_over_the_preset():
    """Options given win even when they equal the dataclass default; the rest come from the preset."""
    config = paper(
        "imagenet", "dpc_knn", 0.5, "--warmup-epochs", "0.5", "--no-pretrained", "--lr", "5e-4", "--epochs", "2"
    )
    assert (config.warmup_epochs, config.pretrained, config.lr, config.epochs) == (0.5, False, 5e-4, 2)
    assert (config.backbone_lr_scale, config.backbone_freeze_epochs, config.lr_batch_normalizer) == (0.01, 5, 1024)
    assert config.preset == "paper" and config.mixup == 0.8
    assert parse_args(["--warmup-epochs", "0.5"]).backbone_freeze_epochs == 0  # no preset: the dataclass defaults


def test_global_batch_sets_accumulation(monkeypatch: pytest.MonkeyPatch):
    assert parse_args(["--global-batch", "64", "--batch-size", "8"]).accum_steps == 8
    assert paper("coco", "topk", 0.5, "--batch-size", "64").accum_steps == 8
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = paper("imagenet", "topk", 0.5, "--batch-size", "128")
    assert (config.global_batch, config.accum_steps) == (1024, 4)
    given = paper("imagenet", "topk", 0.5, "--batch-size", "128", "--accum-steps", "2")  # overrides the preset's batch
    assert (given.global_batch, given.accum_steps) == (None, 2)
    assert parse_args(["--global-batch", "64", "--batch-size", "8", "--accum-steps", "4"]).accum_steps == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "paper", "--dataset", "coco", "--method", "tome", "--r", "0.25"], "use r in 0.5, 0.7, 0.9"),
        (["--preset", "paper", "--dataset", "imagenet", "--method", "tome", "--r", "0.25"], "did not train tome"),
        (["--preset", "paper", "--dataset", "nabirds", "--method", "topk", "--r", "0.6"], "r in 0.25, 0.5, 0.7, 0.9"),
        (["--preset", "paper"], "not 'demo'"),
        (["--preset", "paper", "--dataset", "coco", "--batch-size", "48"], "512 is not a multiple"),
        (["--global-batch", "100", "--batch-size", "8"], "100 is not a multiple"),
        (["--global-batch", "4", "--batch-size", "8"], "4 is not a multiple"),
        (["--global-batch", "64", "--batch-size", "8", "--accum-steps", "2"], "only one of --accum-steps"),
    ],
)
def test_clear_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        parse_args(args)
    assert message in capsys.readouterr().err


def test_world_size_enters_the_division(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(SystemExit):
        parse_args(["--global-batch", "64", "--batch-size", "8"])
    assert parse_args(["--global-batch", "96", "--batch-size", "8"]).accum_steps == 4
