"""Stage 2 (§4.7, Table 9): train the mask head on frozen t=50 features (`teacher finetune`,
teacher/commands/finetune.py, writes CKPT/head/).

    teacher finetune --checkpoint CKPT --data D/manifest.jsonl --steps N [--json]
    torchrun --nproc_per_node 8 -m teacher finetune --checkpoint CKPT --data D/manifest.jsonl --steps N

Under torchrun (RANK set) every rank trains on its own shard of the train records (records[rank::world])
with the head wrapped in DistributedDataParallel; --batch-size is per rank; only rank 0 logs, calibrates
and writes the head (its loss figures are over its shard).

L = L_mask + 0.5·L_cls/ground (Eq. 16); L_mask = BCE (Eq. 11) + Dice on Hungarian-matched queries,
L_cls = Eq. (12) over all queries (unmatched -> no-object), L_ground = Eq. (13)–(14) for caption-only
records (defects with a caption but no mask: caption nouns are the pseudo-labels). Every decoder
layer's prediction is supervised (Mask2Former's deep supervision). Ground-truth regions are the
connected components of a record's mask, each labelled with its defect_type; good images have none.

Optimiser per Table 9: AdamW (weight decay 1e-4), polynomial decay (power 0.9) after a linear warmup
of min(500, steps/10) steps, gradient clipping at max-norm 0.01, mixed precision on GPU (bf16 where
supported, else fp16 with a GradScaler), diffusion model frozen (features under no_grad). Learning rate
5e-5 for sd15 (Table 9); the tiny preset trains from scratch in a few hundred steps at 1e-3.
Features are extracted once per image with a fixed seed when the dataset's features fit in
``CACHE_LIMIT_BYTES`` (extract_features is deterministic for a seed, so this is the same as
extracting every step), else per batch. The decision threshold on the head's image score is
calibrated F1-max on the val split when it has both classes, else 0.5.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from teacher.data.pseudo_defects import PSEUDO_LABEL
from teacher.head.losses import classification_loss, dice_loss, grounding_loss, mask_bce_loss
from teacher.head.matcher import HungarianMatcher
from teacher.head.model import HeadState, MaskHead, defect_probability_map, head_preset
from teacher.head.targets import caption_nouns, downsample_masks, regions_from_mask

CACHE_LIMIT_BYTES = 2 << 30
CLS_WEIGHT = 0.5  # Eq. (16)
LR = {"sd15": 5e-5, "tiny": 1e-3}
WEIGHT_DECAY = 1e-4
WARMUP_STEPS = 500
POLY_POWER = 0.9
CLIP_NORM = 0.01
FEATURE_SEED = 0


@dataclass
class Sample:
    image: np.ndarray  # uint8 RGB
    labels: list[int] = field(default_factory=list)  # class index per region
    masks: np.ndarray | None = None  # (M, P, P) soft targets at the loss resolution
    words: torch.Tensor | None = None  # (K_w, D) caption-noun embeddings (caption-only samples)
    is_defect: bool = False

    @property
    def caption_only(self) -> bool:
        return self.words is not None


def build_samples(ds, records, vocabulary: list[str], teacher, loss_size: int, log=print) -> list[Sample]:
    """Records -> samples: regions (connected components, labelled by defect_type) or caption nouns."""
    out, skipped = [], 0
    index = {c: i for i, c in enumerate(vocabulary)}
    for r in records:
        img = ds.read_image(r)
        if not r.is_defect:
            out.append(Sample(image=img, masks=np.zeros((0, loss_size, loss_size), np.float32)))
        elif r.mask is not None:
            if r.defect_type not in index:
                raise ValueError(f"{r.image}: defect_type {r.defect_type!r} is not in the vocabulary {vocabulary}")
            comps = regions_from_mask(ds.read_mask(r))
            out.append(Sample(image=img, labels=[index[r.defect_type]] * len(comps),
                              masks=downsample_masks(comps, loss_size), is_defect=True))
        elif r.caption:
            words = caption_nouns(r.caption, vocabulary)
            if not words:
                skipped += 1
                continue
            with torch.no_grad():
                emb = F.normalize(teacher.embed_texts(words).float(), dim=-1).cpu()
            out.append(Sample(image=img, words=emb, is_defect=True))
        else:
            skipped += 1
    if skipped:
        log(f"finetune: {skipped} defect records have neither mask nor caption nouns; skipped")
    return out


def pseudo_samples(images: list[np.ndarray], per_image: int, seed: int, label: int, loss_size: int
                   ) -> list[Sample]:
    """Good images -> samples of pseudo-defects planted on them (teacher/data/pseudo_defects.py)."""
    from teacher.data.pseudo_defects import pseudo_defect_images

    out = []
    for img, mask, _ in pseudo_defect_images(images, per_image, seed):
        comps = regions_from_mask(mask)
        out.append(Sample(image=img, labels=[label] * len(comps), masks=downsample_masks(comps, loss_size),
                          is_defect=bool(comps)))
    return out


def lr_lambda(warmup: int, steps: int):
    """Linear warmup, then polynomial decay (power 0.9) to 0 at ``steps`` (Table 9)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1 - (step - warmup) / max(1, steps - warmup)) ** POLY_POWER
    return f


def stage2_loss(head: MaskHead, outs: list[dict], text_emb: torch.Tensor, batch: list[Sample],
                matcher: HungarianMatcher, loss_size: int) -> tuple[torch.Tensor, dict]:
    """Eq. (16) summed over the decoder's predictions (deep supervision). Returns (loss, figures of the
    final prediction: mask_bce, mask_dice, mask (= bce + dice), cls, ground)."""
    dev = text_emb.device
    k = text_emb.shape[0]
    lab = [i for i, s in enumerate(batch) if not s.caption_only]
    cap = [i for i, s in enumerate(batch) if s.caption_only]
    total = torch.zeros((), device=dev)
    figs = {}
    for li, out in enumerate(outs):
        masks = F.interpolate(out["masks"].float(), size=(loss_size, loss_size), mode="bilinear",
                              align_corners=False).flatten(2)  # (B, N, P)
        logits = out["logits"] if "logits" in out else head.class_logits(out["embeds"], text_emb)  # (B, N, K+1)
        pm, tm = [], []
        tgt = torch.full(logits.shape[:2], k, dtype=torch.long, device=dev)  # unmatched -> no-object
        for b in lab:
            s = batch[b]
            labels = torch.as_tensor(s.labels, dtype=torch.long, device=dev)
            t = torch.as_tensor(s.masks, device=dev).flatten(1)
            qi, ti = matcher(logits[b], masks[b], labels, t)
            if len(qi):
                tgt[b, qi] = labels[ti]
                pm.append(masks[b, qi])
                tm.append(t[ti])
        pm = torch.cat(pm) if pm else masks.new_zeros((0, masks.shape[-1]))
        tm = torch.cat(tm) if tm else masks.new_zeros((0, masks.shape[-1]))
        bce, dice = mask_bce_loss(pm, tm), dice_loss(pm, tm)  # Eq. (11) + Dice
        cls = classification_loss(logits[lab], tgt[lab]) if lab else total * 0  # Eq. (12)
        ground = total * 0
        if len(cap) >= 2:  # Eq. (13)-(14) need at least one negative caption in the batch
            z = F.normalize(out["embeds"][cap].float(), dim=-1)
            ground = grounding_loss(z, [batch[i].words.to(dev) for i in cap], head.tau)
        total = total + bce + dice + CLS_WEIGHT * (cls + ground)  # Eq. (16)
        if li == len(outs) - 1:
            figs = {"mask_bce": bce.item(), "mask_dice": dice.item(), "mask": (bce + dice).item(),
                    "cls": cls.item(), "ground": ground.item()}
    return total, figs


class FeatureSource:
    """Features of the samples: cached once (fixed seed) when they fit, else extracted per batch."""

    def __init__(self, teacher, samples: list[Sample], batch_size: int, cache: bool | None = None):
        from teacher.model import to_teacher_batch

        self.teacher, self.samples, self._to = teacher, samples, to_teacher_batch
        spec = teacher.feature_spec
        per = sum(lv.channels * spec.grid(lv) ** 2 * 4 for lv in spec.levels)
        self.cached = (per * len(samples) <= CACHE_LIMIT_BYTES) if cache is None else cache
        self.cache = None
        if self.cached:
            parts: dict[str, list] = {}
            for s in range(0, len(samples), batch_size):
                f = self._extract(list(range(s, min(s + batch_size, len(samples)))))
                for n, v in f.items():
                    parts.setdefault(n, []).append(v.cpu())
            self.cache = {n: torch.cat(v) for n, v in parts.items()}

    @torch.no_grad()
    def _extract(self, idx: list[int]) -> dict[str, torch.Tensor]:
        x = self._to([self.samples[i].image for i in idx], self.teacher.feature_spec.image_size)
        return self.teacher.extract_features(x.to(self.teacher.device), seed=FEATURE_SEED)

    def get(self, idx: list[int], device) -> dict[str, torch.Tensor]:
        if self.cache is not None:
            return {n: v[idx].to(device) for n, v in self.cache.items()}
        return {n: v.to(device) for n, v in self._extract(idx).items()}


def new_head(teacher, embed_dim: int, **overrides) -> MaskHead:
    spec = teacher.feature_spec
    cfg = head_preset(teacher.preset)
    cfg.update(overrides)
    return MaskHead(level_names=tuple(spec.names), in_channels=tuple(lv.channels for lv in spec.levels),
                    embed_dim=embed_dim, image_size=spec.image_size, feature_spec=spec.to_dict(), **cfg)


def loss_size_for(image_size: int) -> int:
    """Masks are supervised at image/4 (at most 128 px): finer than the s8 prediction grid, so
    thin defects keep some area, at a bounded cost (Mask2Former samples points for the same reason)."""
    return int(min(128, max(16, image_size // 4)))


@torch.no_grad()
def evaluate_loss(head: MaskHead, feats: FeatureSource, text_emb: torch.Tensor, samples: list[Sample],
                  loss_size: int, batch_size: int = 8) -> dict:
    """Mean final-layer loss figures over ``samples`` (eval mode)."""
    was = head.training
    head.eval()
    matcher = HungarianMatcher()
    acc: dict[str, float] = {}
    n = 0
    for s in range(0, len(samples), batch_size):
        idx = list(range(s, min(s + batch_size, len(samples))))
        outs = head(feats.get(idx, text_emb.device))
        _, figs = stage2_loss(head, outs[-1:], text_emb, [samples[i] for i in idx], matcher, loss_size)
        for key, v in figs.items():
            acc[key] = acc.get(key, 0.0) + v * len(idx)
        n += len(idx)
    head.train(was)
    return {key: v / max(n, 1) for key, v in acc.items()}


def finetune_head(head: MaskHead, feats: FeatureSource, text_emb: torch.Tensor, samples: list[Sample], *,
                  steps: int, batch_size: int, lr: float, seed: int = 0, warmup: int | None = None,
                  log=None, log_every: int = 10) -> list[dict]:
    """The training loop; returns per-logged-step figures. Wraps the head in DDP when a process
    group is initialised (torchrun)."""
    import torch.distributed as dist

    dev = text_emb.device
    head.to(dev).train()
    model = head
    if dist.is_available() and dist.is_initialized():
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(head, device_ids=[dev.index] if dev.type == "cuda" else None)
    batch_size = min(batch_size, len(samples))
    g = np.random.default_rng(seed)
    torch.manual_seed(seed)
    warmup = min(WARMUP_STEPS, max(1, steps // 10)) if warmup is None else warmup
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=lr, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup, steps))
    use_amp = dev.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    matcher = HungarianMatcher()
    loss_size = loss_size_for(head.config.image_size)
    hist = []
    order = g.permutation(len(samples))
    pos = 0
    t0 = time.time()
    for step in range(steps):
        if pos + batch_size > len(order):
            order, pos = g.permutation(len(samples)), 0
        idx = sorted(order[pos:pos + batch_size].tolist())
        pos += batch_size
        batch = [samples[i] for i in idx]
        f = feats.get(idx, dev)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
            outs = model(f, text_emb)
        loss, figs = stage2_loss(head, outs, text_emb, batch, matcher, loss_size)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        gn = torch.nn.utils.clip_grad_norm_(head.parameters(), CLIP_NORM)
        scaler.step(opt)
        scaler.update()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            rec = {"step": step, "loss": loss.item(), "grad_norm": gn.item(), "lr": sched.get_last_lr()[0], **figs}
            hist.append(rec)
            if log:
                log(f"finetune step {step}/{steps} loss {rec['loss']:.4f} mask {figs['mask']:.4f} "
                    f"cls {figs['cls']:.4f} ground {figs['ground']:.4f} ({time.time() - t0:.1f}s)")
    head.eval()
    return hist


@torch.no_grad()
def calibrate_head(head: MaskHead, feats: FeatureSource, text_emb: torch.Tensor, labels: list[int],
                   batch_size: int = 8) -> tuple[float, str]:
    """Decision threshold on the head's image score (max defect probability), as the bank calibrates
    (teacher.bank.calibrate_threshold): F1-max on val with defects in it; with good val images only, a
    high percentile of their scores, so false rejects stay rare (a threshold tuned on pseudo-defects
    rejected ~90 % of real good parts on the public evaluation set)."""
    from teacher.bank import calibrate_threshold

    if not labels:
        return 0.5, "default 0.5 (no val split)"
    if not any(y == 0 for y in labels):
        return 0.5, "default 0.5 (val split has no good images)"
    scores = []
    for s in range(0, len(labels), batch_size):
        idx = list(range(s, min(s + batch_size, len(labels))))
        out = head(feats.get(idx, text_emb.device))[-1]
        probs = head.class_logits(out["embeds"], text_emb).softmax(-1)
        scores += defect_probability_map(probs, out["masks"].float().sigmoid()).flatten(1).amax(1).tolist()
    y, s_ = np.asarray(labels), np.asarray(scores)
    thr, _, how = calibrate_threshold(s_[y == 0], s_[y == 1] if y.any() else None)
    return float(thr), how


def embed_vocabulary(teacher, vocab: list[str], device, log=print) -> torch.Tensor:
    """(K, D) float32 text embeddings of the category names, with a WARNING when two are near-identical."""
    with torch.no_grad():
        text_emb = teacher.embed_texts(vocab).float().to(device)
    cos = F.normalize(text_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    if len(vocab) > 1 and (cos - torch.eye(len(vocab), device=device)).max() > 0.999:
        log("WARNING: some category names have near-identical text embeddings (unknown words to the text "
            "encoder?); classification among them is not learnable")
    return text_emb


def training_samples(ds, train, vocab: list[str], teacher, pseudo_defects: int = 0, seed: int = 0,
                     log=print) -> list[Sample]:
    """The train records' samples, plus ``pseudo_defects`` pseudo-defects planted on each good one (labelled
    PSEUDO_LABEL, which must then be in ``vocab``). Raises ValueError for a defect_type outside ``vocab``."""
    loss_size = loss_size_for(teacher.feature_spec.image_size)
    samples = build_samples(ds, train, vocab, teacher, loss_size, log)
    if pseudo_defects:
        goods = [ds.read_image(r) for r in train if not r.is_defect]
        samples += pseudo_samples(goods, pseudo_defects, seed, vocab.index(PSEUDO_LABEL), loss_size)
    return samples


def train_head(teacher, ds, samples: list[Sample], val, vocab: list[str], text_emb: torch.Tensor, *, steps: int,
               batch_size: int | None = None, lr: float | None = None, warmup: int | None = None, seed: int = 0,
               rank: int = 0, world: int = 1, pseudo_defects: int = 0, device=None, log=print) -> HeadState | None:
    """Stage 2 from samples to a calibrated head: a new head trained on frozen features (DDP when a process group
    is up), its threshold calibrated on ``val`` records. Rank 0 returns the HeadState (``info`` holds the run's
    figures); under torchrun the other ranks return None once trained. ``device``: where the head trains
    (default: the text embeddings')."""
    device = text_emb.device if device is None else device
    loss_size = loss_size_for(teacher.feature_spec.image_size)
    bs = batch_size or (8 if teacher.preset == "tiny" else 16)
    lr = lr or LR.get(teacher.preset, LR["sd15"])
    head = new_head(teacher, text_emb.shape[1]).to(device)
    log(f"finetune: {len(samples)} train samples, vocabulary {vocab}, head "
        f"{sum(p.numel() for p in head.parameters()) / 1e6:.2f}M params, lr {lr}, batch {bs}, device {device}")
    feats = FeatureSource(teacher, samples, bs)
    before = evaluate_loss(head, feats, text_emb, samples, loss_size)
    hist = finetune_head(head, feats, text_emb, samples, steps=steps, batch_size=bs, lr=lr,
                         seed=seed + rank, warmup=warmup, log=log)
    if world > 1 and rank != 0:
        return None
    after = evaluate_loss(head, feats, text_emb, samples, loss_size)
    thr, how = 0.5, "default 0.5 (no val split)"
    if val:
        vs = [Sample(image=ds.read_image(r), is_defect=r.is_defect) for r in val]  # only images and labels
        thr, how = calibrate_head(head, FeatureSource(teacher, vs, bs), text_emb, [int(s.is_defect) for s in vs])
    info = {"teacher_hash": teacher.checkpoint_hash, "dataset_hash": ds.content_hash(), "steps": steps,
            "pseudo_defects_per_image": pseudo_defects,
            "lr": lr, "batch_size": bs, "train_loss_before": before, "train_loss_after": after,
            "calibration": how, "history": hist[-20:]}
    return HeadState(head=head, vocabulary=vocab, text_emb=text_emb, threshold=thr, info=info)
