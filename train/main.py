"""Fine-tune a token-reducing ViT: `python train/main.py ...` or `torchrun --nproc_per_node=N train/main.py ...`.

Without --data it trains on the embedded demo dataset, so the command runs on a fresh machine. The torchrun that
tokred installs leaves the script's options (--r ...) to the script (tokred/launch.py).
"""

import dataclasses
import json
import logging
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402
from timm.utils import ModelEmaV3  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Subset  # noqa: E402

import tokred  # noqa: E402
from train import checkpoint, distributed, optim  # noqa: E402
from train.checkpoint import Best, Checkpoint, Progress  # noqa: E402
from train.config import TrainConfig, parse_command_line  # noqa: E402
from train.data import DemoDigits, build_transform, load_dataset  # noqa: E402
from train.engine import evaluate, reseed, train_one_epoch  # noqa: E402
from train.figures import kept_tokens_figure  # noqa: E402
from train.losses import load_teacher, training_loss  # noqa: E402
from train.run_log import RunLog  # noqa: E402

log = logging.getLogger("train")

EXIT_AT = "TOKRED_EXIT_AT"
"""Test hook: the environment variable that makes the process end abruptly at a named point (see exit_point)."""


def exit_point(name: str) -> None:
    """End the process at once, as a kill would, when the environment variable TOKRED_EXIT_AT is ``name``."""
    if os.environ.get(EXIT_AT) == name:
        os._exit(3)


@dataclass
class Splits:
    """The run's data: training images, the test split, optionally images held out of the training set for
    model selection; the label space."""

    train: Dataset
    test: Dataset
    heldout: Dataset | None
    num_classes: int
    multi_label: bool

    @property
    def metric(self) -> str:
        """The metric that selects the best checkpoint (SPEC §5.6): top-1 accuracy, or mAP for multi-label."""
        return "map" if self.multi_label else "acc1"


def load_split(config: TrainConfig, split: str, training: bool) -> Dataset:
    """One split of the dataset ("train" or "eval") with the training or the evaluation transform."""
    transform = build_transform(config.dataset, training, config.aa, config.reprob, config.color_jitter, config.cutout)
    length = config.demo_train_size if split == "train" else config.demo_test_size
    return load_dataset(config.dataset, config.data, split, transform, demo_length=length, seed=config.seed)


def load_splits(config: TrainConfig) -> Splits:
    """The dataset's training and test splits with their transforms; with ``heldout_fraction`` a fixed random
    part of the training set (seeded) is held out, seen with the evaluation transform."""
    train, test = load_split(config, "train", True), load_split(config, "eval", False)
    heldout = None
    if config.heldout_fraction > 0:
        held = round(len(train) * config.heldout_fraction)
        if not 0 < held < len(train):
            raise ValueError(f"--heldout-fraction {config.heldout_fraction} leaves no images on one side")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed)).tolist()
        heldout = Subset(load_split(config, "train", False), sorted(order[:held]))
        train = Subset(train, sorted(order[held:]))
    return Splits(train, test, heldout, test.num_classes, test.multi_label)


def build_model(config: TrainConfig, num_classes: int, pretrained: bool) -> tokred.ReducingVisionTransformer:
    """The configuration's reducing ViT; ``pretrained``: start from the pretrained weights it names."""
    return tokred.create_model(
        config.model,
        config.method,
        config.r,
        config.reduction_loc,
        pretrained=pretrained and config.pretrained,
        pretrained_path=config.pretrained_path if pretrained else None,
        num_classes=num_classes,
        method_options=config.method_options,
        drop_path_rate=config.drop_path,
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    config, given = parse_command_line(argv)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world = distributed.init(device)
    if device.type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(message)s")
    try:
        if config.eval_only:
            metrics = evaluate_checkpoint(config, given, device, rank, world)
        else:
            with checkpoint.locked(config.run_dir) if rank == 0 else nullcontext():
                metrics = run(config, device, rank, world)
    except BaseException:
        distributed.shutdown(wait=False)
        raise
    distributed.shutdown()
    return metrics


def evaluate_checkpoint(
    config: TrainConfig, given: set[str], device: torch.device, rank: int, world: int
) -> dict[str, float]:
    """--eval: the test metrics of the --resume checkpoint's model and EMA weights (keys prefixed ema_), under
    the checkpoint's own model, method, r, reduction_loc, method options and dataset; its data root, demo size
    and seed too unless given. Options given that contradict the checkpoint are refused."""
    state = checkpoint.resume_from(config.resume, config.run_dir)
    if state is None:
        raise FileNotFoundError(f"--eval --resume auto: {config.run_dir} holds no checkpoint (pass its path)")
    contradicted = state.differences(config, tuple(name for name in checkpoint.IDENTITY if name in given))
    if contradicted:
        raise ValueError(
            f"--eval evaluates {state.path} as it was trained, but the command line contradicts it: its "
            f"{'; '.join(contradicted)}. Drop those options"
        )
    saved = state.train_config()
    taken = (*checkpoint.IDENTITY, "data", "demo_test_size", "seed")
    config = dataclasses.replace(config, **{name: getattr(saved, name) for name in taken if name not in given})
    test = load_split(config, "eval", False)
    loader = DataLoader(
        test,
        config.batch_size,
        sampler=distributed.ShardedSampler(len(test), rank, world, config.seed, False),
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
    )
    model = build_model(config, test.num_classes, pretrained=False).to(device)
    metrics: dict[str, float] = {}
    for which in ("model", "ema") if state.ema is not None else ("model",):
        model.load_state_dict(state.weights(which)[0])
        results = evaluate(model, loader, config, rank, test.multi_label)
        metrics |= {("ema_" if which == "ema" else "") + name: value for name, value in results.items()}
    log.info(
        "%s: %s %s r=%g on %s (%d images); the run selected the %s weights",
        state.path,
        config.model,
        config.method,
        config.r,
        config.dataset,
        len(test),
        state.weights("best")[1],
    )
    log.info("evaluation: %s", json.dumps(metrics))
    return metrics


def run(config: TrainConfig, device: torch.device, rank: int, world: int) -> dict[str, float]:
    run_dir = config.run_dir
    state = checkpoint.resume_from(config.resume, run_dir)
    if state is not None:
        state.check_resumable(config)
    reseed(config, 0, 0)  # the same initial weights (and EMA) in every process
    data = load_splits(config)
    global_batch = config.batch_size * config.accum_steps * world
    steps_per_epoch = len(data.train) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(data.train)} training images are fewer than one global batch of {global_batch}: "
            "lower --batch-size (or --accum-steps), or train on more images"
        )
    train_sampler = distributed.ShardedSampler(
        len(data.train),
        rank,
        world,
        config.seed,
        True,
        global_batch,
        config.repeated_aug,
        seeded=True,
    )
    loader_args = {
        "num_workers": config.workers,
        "pin_memory": device.type == "cuda",
        "generator": torch.Generator().manual_seed(config.seed + rank),  # keeps the global random stream untouched
    }
    train_loader = DataLoader(
        distributed.SeededSamples(data.train), config.batch_size, sampler=train_sampler, drop_last=True, **loader_args
    )
    eval_loaders = {
        split: DataLoader(
            dataset,
            config.batch_size,
            sampler=distributed.ShardedSampler(len(dataset), rank, world, config.seed, False),
            **loader_args,
        )
        for split, dataset in (("heldout", data.heldout), ("test", data.test))
        if dataset is not None
    }

    model = build_model(config, data.num_classes, pretrained=state is None).to(device)
    ema = ModelEmaV3(model, decay=config.ema_decay) if config.ema_decay > 0 else None
    optimizer, scheduler, lr = optim.build(model, config, steps_per_epoch, world)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    progress, best = Progress(), Best()
    records = RunLog(run_dir, rank, config.tensorboard)
    if state is not None:
        model.load_state_dict(state.model)
        if ema is not None and state.ema is not None:
            ema.load_state_dict(state.ema)
        optimizer.load_state_dict(state.optimizer)
        if state.scaler:
            scaler.load_state_dict(state.scaler)
        progress, best = state.progress, state.best
        # the schedule is this command line's, at the checkpoint's step: a larger --epochs stretches the cosine
        scheduler.step_update(progress.step)
        records.resume(progress.epoch)
        log.info(
            "resumed from %s at epoch %d, step %d, lr %.6g",
            state.path,
            progress.epoch,
            progress.step,
            optimizer.param_groups[-1]["lr"],
        )
        if progress.epoch >= config.epochs:
            log.info("the run has trained %d epochs already: pass a larger --epochs to train on", progress.epoch)

    if rank == 0:
        (run_dir / "config.json").write_text(config.to_json())
    log.info(
        "%s | %s r=%g | %s: %d training images, %d classes | %d processes, global batch %d, lr %.2e, "
        "%d steps/epoch | run dir %s",
        config.model,
        config.method,
        config.r,
        config.dataset,
        len(data.train),
        data.num_classes,
        world,
        global_batch,
        lr,
        steps_per_epoch,
        run_dir,
    )
    trained = DistributedDataParallel(model) if world > 1 else model
    loss = training_loss(
        config, model, data.num_classes, data.multi_label, load_teacher(config, data.num_classes, device)
    )
    selection = f"{next(iter(eval_loaders))}_{data.metric}"  # held-out split when there is one, else test

    def evaluation(prefix: str, net: torch.nn.Module) -> dict[str, float]:
        return {
            f"{prefix}{split}_{name}": value
            for split, loader in eval_loaders.items()
            for name, value in evaluate(net, loader, config, rank, data.multi_label).items()
        }

    if config.eval_at_start and progress.step == 0:
        records.start(evaluation("", model))
    reseed(config, rank, progress.step)

    def save(name: str) -> None:
        if rank == 0:
            Checkpoint(
                model=model.state_dict(),
                ema=ema.state_dict() if ema is not None else None,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict(),
                progress=dataclasses.replace(progress),
                best=dataclasses.replace(best),
                config=json.loads(config.to_json()),
            ).save(run_dir / name, keep_previous=name == checkpoint.LAST)

    def on_step(p: Progress, scalars: dict[str, float] | None) -> None:
        if scalars is not None and p.step % config.log_every == 0:
            records.step(p.step, scalars)
        if p.step % config.checkpoint_every == 0:
            save(checkpoint.LAST)

    metrics: dict[str, float] = {}
    while progress.epoch < config.epochs:
        train_sampler.set_epoch(progress.epoch, skip=progress.micro * config.batch_size)
        train_loss = train_one_epoch(
            trained, model, train_loader, optimizer, scheduler, scaler, ema, loss, config, progress, rank, on_step
        )
        metrics = {"epoch": progress.epoch, "step": progress.step, "train_loss": train_loss, **evaluation("", model)}
        if ema is not None:
            metrics |= evaluation("ema_", ema.module)
        metrics["unreadable_images"] = unreadable_images(data, device)
        progress.next_epoch()
        score, source = max((metrics[selection], "model"), (metrics.get(f"ema_{selection}", float("-inf")), "ema"))
        improved = score > best.score
        if improved:
            best = Best(score, selection, source, metrics["epoch"])
        records.epoch(metrics)
        exit_point("epoch-metrics")
        save(checkpoint.LAST)
        if improved:
            save(checkpoint.BEST)
    records.close()
    distributed.check_in_sync(model)
    if rank == 0:
        images, titles, boxes = figure_images(data.test)
        kept_tokens_figure(model, images, titles, run_dir / "kept_tokens.png", boxes)
    log.info("best %s %.2f (%s, epoch %s)", best.metric, best.score, best.source, best.epoch)
    log.info("done: %d processes hold identical parameters; run directory %s", world, run_dir)
    return metrics


def unreadable_images(data: Splits, device: torch.device) -> float:
    """Image reads that failed so far (each replaced by another image), over every process."""
    datasets = [d.dataset if isinstance(d, Subset) else d for d in (data.train, data.test, data.heldout) if d]
    count = torch.tensor([float(sum(getattr(d, "unreadable", 0) for d in datasets))], device=device)
    return distributed.all_reduce_sum(count).item()


def figure_images(test: Dataset, count: int = 4) -> tuple[torch.Tensor, list[str], list | None]:
    """The first test images [count, 3, S, S], their titles, and the objects' boxes when the dataset knows them."""
    images, titles = [], []
    count = min(count, len(test))
    for i in range(count):
        image, target = test[i]
        target = torch.as_tensor(target)
        images.append(image)
        titles.append(f"label {int(target)}" if target.ndim == 0 else f"{int(target.sum())} labels")
    boxes = [test.item(i)[2] for i in range(count)] if isinstance(test, DemoDigits) else None
    return torch.stack(images), titles, boxes


if __name__ == "__main__":
    main()
