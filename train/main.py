"""Fine-tune a token-reducing ViT: `python train/main.py ...` or `torchrun --nproc_per_node=N train/main.py ...`.

Without --data it trains on the embedded demo dataset, so the command runs on a fresh machine.
"""

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402
from timm.utils import ModelEmaV3  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import tokred  # noqa: E402
from train import checkpoint, distributed, optim  # noqa: E402
from train.config import TrainConfig, parse_args  # noqa: E402
from train.data import DemoDigits  # noqa: E402
from train.engine import Progress, evaluate, reseed, train_one_epoch, training_loss  # noqa: E402
from train.figures import kept_tokens_figure  # noqa: E402

log = logging.getLogger("train")


def datasets(config: TrainConfig) -> tuple[DemoDigits, DemoDigits]:
    return (
        DemoDigits("train", length=config.demo_train_size, seed=config.seed),
        DemoDigits("test", length=config.demo_test_size, seed=config.seed),
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    config = parse_args(argv)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world = distributed.init(device)
    if device.type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(message)s")
    try:
        return run(config, device, rank, world)
    finally:
        distributed.shutdown()


def run(config: TrainConfig, device: torch.device, rank: int, world: int) -> dict[str, float]:
    reseed(config, 0, 0)  # the same initial weights (and EMA) in every process
    train_set, test_set = datasets(config)
    global_batch = config.batch_size * config.accum_steps * world
    steps_per_epoch = len(train_set) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} training images are fewer than one global batch of {global_batch}")
    train_sampler = distributed.ShardedSampler(
        len(train_set), rank, world, config.seed, True, global_batch, config.repeated_aug
    )
    test_sampler = distributed.ShardedSampler(len(test_set), rank, world, config.seed, False)
    loader_args = {
        "num_workers": config.workers,
        "pin_memory": device.type == "cuda",
        "generator": torch.Generator().manual_seed(config.seed + rank),  # keeps the global random stream untouched
    }
    train_loader = DataLoader(train_set, config.batch_size, sampler=train_sampler, drop_last=True, **loader_args)
    test_loader = DataLoader(test_set, config.batch_size, sampler=test_sampler, **loader_args)

    model = tokred.create_model(
        config.model,
        config.method,
        config.r,
        config.reduction_loc,
        pretrained=config.pretrained,
        pretrained_path=config.pretrained_path,
        num_classes=train_set.num_classes,
        drop_path_rate=config.drop_path,
    ).to(device)
    ema = ModelEmaV3(model, decay=config.ema_decay) if config.ema_decay > 0 else None
    optimizer, scheduler, lr = optim.build(model, config, steps_per_epoch, world)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    progress, best = Progress(), {"acc1": -1.0}

    run_dir = config.run_dir
    resume_from = checkpoint.find_resume(config.resume, run_dir)
    if resume_from is not None:
        state = checkpoint.load(resume_from)
        model.load_state_dict(state["model"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if not config.eval_only:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            progress, best = Progress(**state["progress"]), state["best"]
        log.info("resumed from %s at epoch %d, step %d", resume_from, progress.epoch, progress.step)
    if config.eval_only:
        metrics = evaluate(model, test_loader, config, rank)
        log.info("evaluation: %s", json.dumps(metrics))
        return metrics

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(config.to_json())
    log.info(
        "%s | %s r=%g | %d processes, global batch %d, lr %.2e, %d steps/epoch | run dir %s",
        config.model,
        config.method,
        config.r,
        world,
        global_batch,
        lr,
        steps_per_epoch,
        run_dir,
    )
    trained = DistributedDataParallel(model) if world > 1 else model
    loss = training_loss(config, model, train_set.num_classes)
    reseed(config, rank, progress.step)

    def save(path: Path) -> None:
        if rank == 0:
            checkpoint.save(
                path,
                {
                    "model": model.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "progress": vars(progress).copy(),
                    "best": best,
                    "config": json.loads(config.to_json()),
                },
            )

    def on_step(p: Progress) -> None:
        if p.step % config.checkpoint_every == 0:
            save(run_dir / checkpoint.LAST)

    metrics: dict[str, float] = {}
    while progress.epoch < config.epochs:
        train_sampler.set_epoch(progress.epoch, skip=progress.micro * config.batch_size)
        train_loss = train_one_epoch(
            trained, model, train_loader, optimizer, scheduler, scaler, ema, loss, config, progress, rank, on_step
        )
        metrics = {
            "epoch": progress.epoch,
            "step": progress.step,
            "train_loss": train_loss,
            **{f"test_{k}": v for k, v in evaluate(model, test_loader, config, rank).items()},
        }
        if ema is not None:
            metrics |= {f"ema_{k}": v for k, v in evaluate(ema.module, test_loader, config, rank).items()}
        progress.epoch, progress.micro = progress.epoch + 1, 0
        improved = max(metrics["test_acc1"], metrics.get("ema_acc1", -1.0)) > best["acc1"]
        if improved:
            best = {"acc1": max(metrics["test_acc1"], metrics.get("ema_acc1", -1.0)), "epoch": metrics["epoch"]}
        if rank == 0:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            save(run_dir / checkpoint.LAST)
            if improved:
                save(run_dir / checkpoint.BEST)
        log.info("epoch %d: %s", metrics["epoch"], json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    distributed.check_in_sync(model)
    if rank == 0:
        kept_tokens_figure(model, test_set, run_dir / "kept_tokens.png")
    log.info("done: %d processes hold identical parameters; run directory %s", world, run_dir)
    return metrics


if __name__ == "__main__":
    main()
