"""Mixed-precision training parity: the runners' ``--fp16`` / ``--bf16`` (torch.amp) against their fp32 run.

The same training (``bert_torch.run_classifier.train_loop``: real MiniLM-L6 with a seeded head, dropout 0,
MRPC sample pairs, BertAdam with the official schedule), once in fp32 and once mixed:

- **loss curve**: per step, ``|loss_amp - loss_fp32| <= LOSS_K * u * |loss_fp32|``, u the tier's unit
  roundoff (2^-8 bf16, 2^-11 fp16): the loss is a mean of softmax cross-entropies whose inputs the tier
  rounds; measured on 8 steps of 8 x 64: 0.10 u (bf16) and 0.06 u (fp16) at the worst step, so LOSS_K = 2
  leaves a factor of 10-30 while a real fault (below) is off by far more;
- **skipped steps** (fp16): a step whose scaled gradients overflow is skipped by the GradScaler; then the
  optimizer's step count must equal the steps applied and every applied step must use the official
  learning rate of its own index (the schedule does not move on a skipped step).

``planted``: ``advance_on_skip`` (the schedule advanced on skipped steps, as a scheduler stepped
unconditionally does) and ``clip_scaled`` (gradients clipped while still scaled) must fail.
"""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Callable, Optional

import numpy as np
import torch

from bert_torch import run_classifier as runner
from bert_torch.optimization import official_lr

from parity.finetune.features import mrpc_batches
from parity.inputs import SAMPLE
from parity.minilm import minilm_dir
from parity.numerics.precision import UNIT_ROUNDOFF

LOSS_K = 2.0
KEYS = ("input_ids", "segment_ids", "input_mask", "label_ids")


class _AdvanceOnSkip(runner.MixedPrecision):
    """Planted: the schedule moves on a skipped step too (a scheduler stepped whatever the scaler did)."""

    def step(self, opt) -> bool:
        applied = super().step(opt)
        if not applied:
            opt.global_step += 1
        return applied


class _ClipScaled(runner.MixedPrecision):
    """Planted: gradients clipped to global norm 1 before unscaling (so at scale x the threshold)."""

    def step(self, opt) -> bool:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        return super().step(opt)


PLANTED = {"advance_on_skip": _AdvanceOnSkip, "clip_scaled": _ClipScaled}


def train(tier: str, steps: int, planted: Optional[str] = None, init_scale: Optional[float] = None,
          lr: float = 1e-4, model: Optional[Callable[[], torch.nn.Module]] = None) -> dict:
    """Per-step losses and learning rates of the runners' training loop in ``tier`` (fp32, bf16, fp16).
    ``model``: builds the classifier to train (default: real MiniLM-L6 with a seeded head, ``ddp_check``)."""
    from parity.checks.ddp import build_model
    build_model = model or build_model
    arrays = mrpc_batches(None, os.path.join(minilm_dir(), "vocab.txt"), "dev", 64, sample_tsv=SAMPLE)
    # The runner's functions read the official run_classifier.py's FLAGS object (bert_torch mirrors it on purpose):
    # this check has no command line of its own, so the runner's flags are built here, at that boundary.
    runner_flags = SimpleNamespace(train_batch_size=8, num_train_epochs=steps * 8 / len(arrays["label_ids"]),
                                   warmup_proportion=0.25, learning_rate=lr, gradient_accumulation_steps=1, seed=0,
                                   no_progress=True, fp16=tier == "fp16", bf16=tier == "bf16")
    amp = runner.mixed_precision(runner_flags, "cpu")   # checks the tier's kernels run here
    if planted:
        amp = PLANTED[planted](amp.dtype, "cpu")
    if amp.scaler is not None and init_scale:   # a scale that overflows: the first steps are skipped, and each
        # skip divides it by 2**12 (not 2), so that a few steps later the scale fits and steps are applied
        amp.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, backoff_factor=2.0 ** -12)
    out = runner.train_loop(build_model(), arrays, KEYS, runner_flags, "cpu",
                            lambda m, b: m(b[0], b[1], b[2], labels=b[3]), amp=amp)
    return {"tier": tier, "losses": out["step_losses"], "lrs": out["step_lrs"], "steps": out["steps"],
            "skipped": out["skipped_steps"], "optimizer_steps": out["optimizer_steps"],
            "warmup_steps": out["warmup_steps"], "lr": lr}


def judge(fp32: dict, amp: dict) -> dict:
    """The loss-curve rule and the schedule's bookkeeping of ``amp`` against ``fp32``."""
    u = UNIT_ROUNDOFF[amp["tier"]]
    a, b = np.asarray(fp32["losses"]), np.asarray(amp["losses"])
    allowed = LOSS_K * u * np.abs(a)
    use = np.abs(b - a) / allowed
    applied = amp["steps"] - amp["skipped"]
    used = [lr for lr in amp["lrs"] if lr is not None]   # the applied steps' rates, in order
    schedule_ok = amp["optimizer_steps"] == applied == len(used) and all(
        abs(lr - official_lr(i, amp["lr"], amp["steps"], amp["warmup_steps"])) <= 1e-9 * amp["lr"]
        for i, lr in enumerate(used))
    # A skipped step changes nothing, so the curve is compared only while no step was skipped.
    compared = len(a) if amp["skipped"] == 0 else 0
    curve_ok = bool(np.all(use[:compared] <= 1)) if compared else True
    return {"name": f"mixed_precision_{amp['tier']}", "verdict": "pass" if curve_ok and schedule_ok else "fail",
            "summary": (f"{amp['tier']}: {amp['steps']} steps, {amp['skipped']} skipped; worst step uses "
                        f"{float(use[:compared].max()) if compared else 0:.3g} of |dloss| <= {LOSS_K:g} u |loss| "
                        f"(u = {u:.3g}); optimizer steps {amp['optimizer_steps']} for {applied} applied; "
                        f"schedule {'official' if schedule_ok else 'WRONG'}"),
            "max_rel_loss_diff": float((np.abs(b - a) / np.abs(a)).max()), "curve_passed": curve_ok,
            "schedule_passed": schedule_ok, "skipped": amp["skipped"]}
