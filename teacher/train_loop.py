"""The stage-1 loop behind `teacher train` (argument handling and DDP setup live in teacher/commands/train.py)."""
from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from teacher.augment import augment
from teacher.checkpoint import build_random_teacher, load_teacher, save_teacher
from teacher.ema import EMA
from teacher.latent import downsample_factor
from teacher.modules import WordTokenizer
from teacher.stage1 import Stage1Loss, StepNoise
from teacher.train_state import load_state, lr_lambda, restore_rng, save_state
from teacher.trainset import BatchOrder, ImageCaptionSet, collate


def _precision(mode: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or mode == "no":
        return None  # fp32 on CPU
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[mode]


def _hparams(args, preset, saved: dict | None = None) -> dict:
    """The run's hyperparameters: a resumed run keeps the recorded ones unless overridden on the command line."""
    d = preset.train
    base = dict(lr=d.lr, min_lr=d.min_lr, weight_decay=d.weight_decay, betas=list(d.betas),
                warmup_steps=d.warmup_steps, grad_clip=d.grad_clip, ema_decay=d.ema_decay, batch_size=d.batch_size,
                imp_loss_weight=d.imp_loss_weight, align_weight=d.align_weight, text_prob=d.text_prob,
                null_prob=d.null_prob, seed=0, init=args.init)
    base.update(saved or {})
    given = dict(lr=args.lr, warmup_steps=args.warmup_steps, grad_clip=args.grad_clip, ema_decay=args.ema_decay,
                 batch_size=args.batch_size, seed=args.seed, align_weight=args.align_weight)
    base.update({k: v for k, v in given.items() if v is not None})
    base.update(augment=not args.no_augment, mixed_precision=args.mixed_precision,
                gradient_checkpointing=args.gradient_checkpointing, total_steps=args.steps)
    return base


def _batches(order: BatchOrder, data: ImageCaptionSet, epoch: int, batch: int, workers: int):
    """(epoch, batch_index, images uint8, captions) from the saved position on, optionally prefetched."""
    if workers <= 0:
        for e, b, idx in order.batches_from(epoch, batch):
            yield (e, b) + collate([data[i] for i in idx])
        return
    while True:
        remaining = order.epoch_batches(epoch)[batch:]
        loader = torch.utils.data.DataLoader(data, batch_sampler=remaining, num_workers=workers,
                                             collate_fn=collate, pin_memory=torch.cuda.is_available())
        for k, (imgs, caps) in enumerate(loader):
            yield epoch, batch + k, imgs, caps
        epoch, batch = epoch + 1, 0


@dataclass
class _Optimisation:
    """What one optimiser step touches: the trainable modules and their parameters, AdamW and its LR schedule,
    the precision (and fp16's gradient scaler), and the EMA of the weights."""
    mods: dict
    params: list
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    amp: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    ema: EMA

    @classmethod
    def build(cls, model, hp: dict, device: torch.device) -> "_Optimisation":
        mods = model.trainable_modules()
        params = [p for m in mods.values() for p in m.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=hp["lr"], betas=tuple(hp["betas"]), weight_decay=hp["weight_decay"])
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(hp["lr"], hp["min_lr"], hp["warmup_steps"], hp["total_steps"]))
        amp = _precision(hp["mixed_precision"], device)
        scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
        return cls(mods, params, opt, sched, amp, scaler, EMA(mods, hp["ema_decay"]))


class _Log:
    """Rank 0's record of the run: a metrics.jsonl row and a progress-bar tick per step."""

    def __init__(self, out: Path, steps: int, step: int):
        out.mkdir(parents=True, exist_ok=True)
        self.metrics_f = open(out / "metrics.jsonl", "a")
        from runtime.progress import progress

        self.bar = progress(steps, "teacher train", initial=step)

    def step(self, step: int, epoch: int, vals: torch.Tensor, gnorm, lr: float, ips: float) -> dict:
        """Writes the step's row -> its losses by name."""
        last = dict(zip(("loss", "l_diff", "l_imp", "l_align"), vals.tolist()))
        row = {"step": step, **last, "lr": lr, "grad_norm": float(gnorm),
               "images_per_s": round(ips, 2), "epoch": epoch, "time": round(time.time(), 3)}
        self.metrics_f.write(json.dumps(row) + "\n")
        self.metrics_f.flush()
        self.bar.set_postfix(loss=f"{last['loss']:.4f}", img_s=f"{ips:.1f}")
        self.bar.update(1)
        return last

    def close(self) -> None:
        self.bar.close()
        self.metrics_f.close()


def train(args, preset, ds, records, texts, *, rank: int, world: int, device: torch.device) -> dict:
    out = Path(args.out)
    image_size = args.image_size or preset.image_size
    model, state, hp = _build_model(args, preset, texts, image_size, rank)
    model.to(device)
    if args.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    o = _Optimisation.build(model, hp, device)
    if rank == 0:
        _say_setup(world, device, o.amp, hp)
    step, epoch, batch = 0, 0, 0
    if state is not None:
        step, epoch, batch = _restore(state, out, o.opt, o.sched, o.scaler, o.ema, hp, args.steps, rank, world)
    data = ImageCaptionSet(ds, records, image_size)
    net = _loss_net(model, hp, data, records, device, world)
    order = BatchOrder(len(data), hp["batch_size"], world, rank, hp["seed"])
    down = downsample_factor(model.vae)
    latent = (model.vae.config.latent_channels, image_size // down, image_size // down)
    T = model.scheduler.config.num_train_timesteps
    stop = min(args.steps, args.stop_after) if args.stop_after else args.steps
    run_cfg = {"train": hp, "world_size": world, "global_batch_size": hp["batch_size"] * world,
               "dataset": {"manifest": str(Path(ds.manifest).resolve()), "hash": ds.content_hash(),
                           "n_train": len(records)}}
    log = _Log(out, args.steps, step) if rank == 0 else None
    model.train()
    model.vae.eval()
    last = {"loss": float("nan"), "l_diff": float("nan"), "l_imp": float("nan"), "l_align": float("nan")}
    it = _batches(order, data, epoch, batch, args.num_workers)
    t_start = time.time()
    while step < stop:
        e, b, imgs, caps = next(it)
        t0 = time.time()
        x, noise = _inputs(imgs, hp, step, rank, latent, T, device)
        vals, gnorm = _step(net, x, caps, noise, o.amp, o.opt, o.scaler, o.params, hp["grad_clip"], o.sched, o.ema,
                            o.mods, world)
        step += 1
        epoch, batch = (e, b + 1)
        if log is not None:
            ips = x.shape[0] * world / max(time.time() - t0, 1e-9)
            last = log.step(step, e, vals, gnorm, o.sched.get_last_lr()[0], ips)
        if (args.save_every and step % args.save_every == 0) or step == stop:
            if rank == 0:
                _save(model, o.ema, out, run_cfg, step, epoch, batch, o.opt, o.sched, o.scaler)
    summary = {"checkpoint": str(out.resolve()), "step": step, "steps": args.steps, **last,
               "images_per_s": round(hp["batch_size"] * world * step / max(1e-9, time.time() - t_start), 2)
               if step else 0.0, "preset": preset.name, "feature_spec": model.feature_spec.to_dict()}
    if log is not None:
        log.close()
        from teacher.plots import loss_curve

        summary["loss_curve"] = loss_curve(out / "metrics.jsonl", out / "loss.png")
        summary["checkpoint_hash"] = json.loads((out / "config.json").read_text())["checkpoint_hash"]
    return summary


def _say_setup(world: int, device: torch.device, amp: torch.dtype | None, hp: dict) -> None:
    why = "" if device.type == "cuda" else " (no CUDA GPU in use)" if not torch.cuda.is_available() else ""
    print(f"teacher train: {world} process(es) on {device}{why}, precision "
          f"{str(amp).replace('torch.', '') if amp else 'fp32'}, batch {hp['batch_size']} per process",
          file=sys.stderr)


def _inputs(imgs: torch.Tensor, hp: dict, step: int, rank: int, latent: tuple, T: int, device: torch.device):
    """The step's images in [0, 1] (augmented) and its noise draw, both from the step's own generator (so a
    resumed run draws what an unbroken one would) -> (x (B, 3, S, S), StepNoise)."""
    g = torch.Generator().manual_seed((hp["seed"] * 1_000_003 + step) * 4099 + rank)
    x = imgs.to(device, non_blocking=True).float() / 255.0
    if hp["augment"]:
        x = augment(x, g)
    noise = StepNoise.draw(g, x.shape[0], latent, T, hp["text_prob"], hp["null_prob"]).to(device)
    return x, noise


def _build_model(args, preset, texts, image_size: int, rank: int):
    """(model, saved training state or None, hyperparameters): the run in --out when resuming, else the weights
    of --init-from, else a random-init teacher (seeded) over the given or random-init frozen parts."""
    out = Path(args.out)
    if args.resume:
        model = load_teacher(out, use_ema=False, for_training=True)
        return model, load_state(out), _hparams(args, preset, model.info["config"].get("train"))
    if args.init_from:
        from teacher.init_from import init_teacher

        hp = _hparams(args, preset)
        model = init_teacher(args.init_from, preset, image_size, hp["seed"])
        hp["init"] = model.info["init"]  # recorded in config.json: where the weights started
        return model, None, hp
    hp = _hparams(args, preset)
    tok = WordTokenizer.from_texts(texts, max_length=preset.text_max_length)
    model = build_random_teacher(preset, image_size=image_size, seed=hp["seed"], vae_dir=args.vae,
                                 text_encoder_dir=args.text_encoder, image_encoder_dir=args.image_encoder,
                                 tokenizer=tok, init=args.init)
    if rank == 0 and model.info["sources"]["vae"] == "random-init":
        print("teacher train: WARNING no --vae given: the frozen VAE is random-init (run `teacher train-vae` "
              "first for a useful latent space)", file=sys.stderr)
    return model, None, hp


def _restore(state: dict, out: Path, opt, sched, scaler, ema, hp: dict, steps: int, rank: int, world: int
             ) -> tuple[int, int, int]:
    """Optimiser, schedule, scaler, EMA and RNG as the saved run left them -> (step, epoch, batch) to go on from;
    says where the resumed run differs from an unbroken one."""
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    ema.load_from(load_teacher(out, use_ema=True).trainable_modules(), state["ema_updates"])
    restore_rng(state)
    was = (state.get("world_size"), state.get("batch_size"))
    if rank == 0 and was != (world, hp["batch_size"]):
        print(f"teacher train: WARNING resuming with {world} process(es) x batch {hp['batch_size']} where the "
              f"run had {was[0]} x {was[1]}: the data order differs from an unbroken run", file=sys.stderr)
    if rank == 0 and state.get("total_steps") not in (None, steps):
        print(f"teacher train: WARNING --steps {steps} differs from the run's {state['total_steps']}: the "
              f"cosine LR schedule is stretched from here on", file=sys.stderr)
    return state["step"], state["sampler"]["epoch"], state["sampler"]["batch"]


def _loss_net(model, hp: dict, data: ImageCaptionSet, records, device: torch.device, world: int):
    """Stage1Loss (with the representation alignment when its weight is above 0, fitted on the run's images),
    wrapped in DDP under torchrun."""
    align = None
    if hp["align_weight"] > 0:
        from teacher.align import ALIGN_ENCODER, FIT_IMAGES, FeatureAlignment

        pick = range(0, len(records), max(1, len(records) // FIT_IMAGES))  # see FIT_IMAGES; no augmentation
        align = FeatureAlignment().to(device).fit(
            torch.stack([data.load(i) for i in pick]).to(device).float() / 255.0,
            {lv.name: lv.channels for lv in model.feature_spec.levels})
        hp["align_encoder"] = ALIGN_ENCODER
    loss_fn = Stage1Loss(model, hp["imp_loss_weight"], align, hp["align_weight"])
    if world == 1:
        return loss_fn
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(loss_fn, device_ids=[device.index] if device.type == "cuda" else None)


def _step(net, x, caps, noise, amp, opt, scaler, params, grad_clip: float, sched, ema, mods, world: int):
    """One optimiser step (mixed precision with a scaler for fp16, gradient clipping, LR schedule, EMA) ->
    ((loss, l_diff, l_imp, l_align) averaged over the ranks, gradient norm)."""
    ctx = torch.autocast(device_type="cuda", dtype=amp) if amp is not None else contextlib.nullcontext()
    with ctx:
        loss, l_diff, l_imp, l_align = net(x, caps, noise)
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    sched.step()
    ema.update(mods)
    vals = torch.stack([loss.detach().float(), l_diff.float(), l_imp.float(), l_align.float()])
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(vals)
        vals /= world
    return vals, gnorm


def _save(model, ema, out: Path, run_cfg: dict, step, epoch, batch, opt, sched, scaler) -> None:
    cfg = dict(run_cfg, step=step)
    save_teacher(model, out, cfg, ema=ema)
    save_state(out, optimizer=opt, scheduler=sched, scaler=scaler, step=step, epoch=epoch, batch=batch,
               ema_updates=ema.num_updates, world_size=run_cfg["world_size"],
               batch_size=run_cfg["train"]["batch_size"], total_steps=run_cfg["train"]["total_steps"])
