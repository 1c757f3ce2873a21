"""BertAdam: the official ``AdamWeightDecayOptimizer`` + ``create_optimizer``, step for step.

What the official ``optimization.create_optimizer(loss, lr, num_train_steps, num_warmup_steps)``
does at step t (t = 0, 1, ...), and so what ``BertAdam.step`` does:

    g      = clip_by_global_norm(grads, 1.0)          # ONE norm over all variables, not per tensor
    lr(t)  = t < W ? init_lr * t / W                   # linear warmup, from 0
                   : init_lr * (1 - min(t, T) / T)     # polynomial decay (power 1) over ALL T steps
    m      = b1 * m + (1 - b1) * g
    v      = b2 * v + (1 - b2) * g^2
    u      = m / (sqrt(v) + eps)                       # NO bias correction
    u     += wd * p      unless the name matches LayerNorm|layer_norm|bias
    p     -= lr(t) * u

The decay after warmup is *not* rescaled to start at 1 when warmup ends (the original port's
v0.6 ``warmup_linear`` did rescale: ``(1 - x) / (1 - warmup)``), and step t uses lr(t): a zero
first step under warmup. The official graph intends that order but does not enforce it
(see ``reference_tf.finetune``: its ``global_step`` read races with the increment).
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from torch.optim import Optimizer

# The official exclude_from_weight_decay list, searched (re.search) in the TF variable name.
NO_DECAY_PATTERNS = ("LayerNorm", "layer_norm", "bias")


def num_train_steps(num_examples: int, train_batch_size: int, num_train_epochs: float) -> int:
    """The official count: ``int(len(train_examples) / train_batch_size * num_train_epochs)``.

    A float division then truncation, not ceil(examples / batch) * epochs: the official
    input_fn repeats the data and drops the remainder, so the last partial batch of an epoch
    rolls into the next one.
    """
    return int(num_examples / train_batch_size * num_train_epochs)


def num_warmup_steps(train_steps: int, warmup_proportion: float) -> int:
    """The official ``int(num_train_steps * warmup_proportion)``."""
    return int(train_steps * warmup_proportion)


def official_lr(step: int, init_lr: float, num_train_steps: int, num_warmup_steps: int) -> float:
    """lr(step) as the official graph computes it, in float32 and in its op order."""
    f = np.float32
    # tf.train.polynomial_decay(lr, step, T, end=0, power=1, cycle=False)
    t = f(min(step, num_train_steps))
    p = t / f(num_train_steps)
    lr = (f(init_lr) - f(0.0)) * np.power(f(1.0) - p, f(1.0)) + f(0.0)
    if num_warmup_steps:
        warm = f(init_lr) * (f(step) / f(num_warmup_steps))
        is_warmup = f(1.0) if step < num_warmup_steps else f(0.0)
        lr = (f(1.0) - is_warmup) * lr + is_warmup * warm
    return float(lr)


def warmup_linear_v06(step: int, init_lr: float, num_train_steps: int, num_warmup_steps: int) -> float:
    """The original port's v0.6 ``WarmupLinearSchedule``, for comparison only (a known drift).

    Progress x = (step + 1) / T (its step counter is incremented before use); after warmup it
    decays as (x - 1) / (w - 1), i.e. rescaled to 1 at the end of warmup. Not what TF does.
    """
    x, w = (step + 1) / num_train_steps, num_warmup_steps / num_train_steps
    return init_lr * (x / w if x < w else max((x - 1.0) / (w - 1.0), 0.0))


SCHEDULES = {"warmup_linear": official_lr, "warmup_linear_v06": warmup_linear_v06,
             "none": lambda step, init_lr, T, W: init_lr}


def tf_name(torch_name: str) -> str:
    """The TF variable name of a model parameter: the official regex is matched against TF names
    (``.../LayerNorm/gamma``, ``output_bias``), so that is what we match too."""
    from .convert import file_to_tf_name   # local: keeps `import bert_torch.optimization` light
    from .weights import file_name
    try:
        return file_to_tf_name(file_name(torch_name))[0]
    except Exception:   # not a BERT parameter (a user's own module): match its dotted path
        return torch_name.replace(".", "/")


def decays(name: str) -> bool:
    """Whether the official optimizer applies weight decay to the model parameter ``name``."""
    return decays_tf(tf_name(name))


def decays_tf(tf_variable_name: str) -> bool:
    """The official ``_do_use_weight_decay`` for a TF variable name."""
    return not any(re.search(p, tf_variable_name) for p in NO_DECAY_PATTERNS)


def grouped_parameters(model: torch.nn.Module, weight_decay: float = 0.01) -> list[dict]:
    """Two param groups as the official regex splits them: decayed, and LayerNorm/bias with 0."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if decays(n)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0}]


def micro_batches(batch_size: int, micro: int) -> list[slice]:
    """The micro-batches of one optimizer step: ``micro`` rows each, the last one shorter when
    ``micro`` does not divide ``batch_size``."""
    if batch_size < 1 or micro < 1:
        raise ValueError(f"batch size {batch_size} and micro-batch size {micro} must be positive")
    return [slice(k, min(k + micro, batch_size)) for k in range(0, batch_size, micro)]


def accumulate_gradients(losses: Iterable[Callable[[], torch.Tensor]], sizes: Sequence[int],
                         scale: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> float:
    """Backpropagates the full batch's mean loss through its micro-batches; returns that loss.

    ``losses[i]()`` computes micro-batch i's mean loss (a fresh forward, so only one micro-batch's
    activations are alive at a time); it is weighted by the micro-batch's share of the examples,
    ``n_i / N``, so that the gradients add up to the full batch's. Dividing each by the *number* of
    micro-batches instead, the common mistake, over-weights a short last micro-batch (and is exact only
    when all are equal). ``scale``: fp16's loss scaling (``GradScaler.scale``), applied to what is
    backpropagated, not to the loss returned.
    """
    total = sum(sizes)
    out = 0.0
    for loss_fn, n in zip(losses, sizes):
        loss = loss_fn() * (n / total)
        (scale(loss) if scale else loss).backward()
        out += float(loss.detach())
    return out


class BertAdam(Optimizer):
    """Adam with decoupled weight decay, the official schedule and global-norm clipping.

    The original port's constructor: ``warmup`` is the fraction of ``t_total`` steps spent
    warming up (-1: no warmup), ``t_total`` the total number of optimizer steps (-1: constant
    lr), ``schedule`` one of ``SCHEDULES``. Parameter groups may set their own ``weight_decay``
    (``grouped_parameters`` gives the official split). ``max_grad_norm`` clips the gradient of
    all groups together by its global norm (<= 0: no clipping). Step t uses lr(t) with t
    counted from 0, as the official graph intends.
    """

    def __init__(self, params, lr: float, warmup: float = -1, t_total: int = -1, schedule: str = "warmup_linear",
                 b1: float = 0.9, b2: float = 0.999, e: float = 1e-6, weight_decay: float = 0.01,
                 max_grad_norm: float = 1.0):
        if not lr >= 0.0:
            raise ValueError(f"BertAdam: invalid learning rate {lr!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"BertAdam: unknown schedule {schedule!r}, expected one of {sorted(SCHEDULES)}")
        if not (0.0 <= warmup < 1.0 or warmup == -1):
            raise ValueError(f"BertAdam: warmup {warmup!r} must be in [0, 1) or -1")
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"BertAdam: b1 {b1!r} and b2 {b2!r} must be in [0, 1)")
        if not e >= 0.0:
            raise ValueError(f"BertAdam: invalid epsilon {e!r}")
        if t_total != -1 and t_total < 1:
            raise ValueError(f"BertAdam: t_total {t_total!r} must be positive or -1")
        defaults = dict(lr=lr, warmup=warmup, t_total=t_total, schedule=schedule, b1=b1, b2=b2, e=e,
                        weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)
        self.global_step = 0   # the official graph's global_step: steps taken so far

    # -- the three pieces, separately overridable (the gate plants faults by overriding them) --

    def schedule_lr(self, group: dict, step: int) -> float:
        """The learning rate step ``step`` (from 0) uses."""
        if group["t_total"] == -1:
            return group["lr"]
        warmup_steps = int(group["t_total"] * group["warmup"]) if group["warmup"] > 0 else 0
        return SCHEDULES[group["schedule"]](step, group["lr"], group["t_total"], warmup_steps)

    def clip_scale(self, grads: list[torch.Tensor]) -> Optional[torch.Tensor]:
        """The factor ``tf.clip_by_global_norm(grads, max_grad_norm)`` multiplies every gradient by
        (None: no clipping configured).

        TF always multiplies by ``clip * min(1/norm, 1/clip)`` (exactly 1 below the threshold),
        and a NaN/Inf norm makes every gradient NaN rather than skipping the step; both copied.
        """
        clip = self.defaults["max_grad_norm"]
        if clip is None or clip <= 0 or not grads:
            return None
        # global_norm = sqrt(sum_i 2 * l2_loss(g_i)), l2_loss = sum(g^2) / 2, in float32. g^2 goes into the
        # scratch buffer: the same values as g.square(), without a fresh gradient-sized tensor per variable.
        norm = torch.sqrt(torch.stack([(torch.square(g.float(), out=self._scratch(g, 0, torch.float32)).sum() / 2) * 2
                                       for g in grads]).sum())
        scale = clip * torch.minimum(1.0 / norm, torch.tensor(1.0 / clip, dtype=norm.dtype, device=norm.device))
        if not torch.isfinite(norm):
            scale = torch.tensor(float("nan"), dtype=norm.dtype, device=norm.device)
        return scale

    def clip_gradients(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """The clipped gradients: each one times ``clip_scale(grads)``."""
        scale = self.clip_scale(grads)
        return grads if scale is None else [g * scale.to(g.dtype) for g in grads]

    def _scratch(self, like: torch.Tensor, slot: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """A reusable buffer shaped like ``like`` (``slot`` 0, 1, 2: three may be live at once).

        Why: the update below is a chain of elementwise ops on every variable; written out of place it
        allocates six variable-sized tensors per variable per step (BERT-base: 6 x 440 MB of fresh memory
        a step, which the CPU must page in and zero). In place, into one buffer per slot that grows to the
        largest variable (kept between steps: 3 x the largest variable, the word embeddings), it computes
        the same float32 values in the same order, bit for bit (tests/test_optimization.py).
        """
        dtype = dtype or like.dtype
        key = (slot, dtype, like.device)
        # Not the optimizer's state: made on first use (also after unpickling, which restores the state only).
        buffers = self.__dict__.setdefault("_buffers", {})
        buf = buffers.get(key)
        if buf is None or buf.numel() < like.numel():
            buf = buffers[key] = torch.empty(like.numel(), dtype=dtype, device=like.device)
        return buf[:like.numel()].view(like.shape)

    def update(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict, lr: float) -> None:
        """The AdamWeightDecayOptimizer update of one parameter, in the official op order."""
        b1, b2, e, wd = group["b1"], group["b2"], group["e"], group["weight_decay"]
        if not state:
            state["next_m"] = torch.zeros_like(p)   # TF: <var>/adam_m
            state["next_v"] = torch.zeros_like(p)   # TF: <var>/adam_v
        m, v = state["next_m"], state["next_v"]
        t = self._scratch(p, 0)
        # In place, each line one rounding of the official expression (see _scratch for why):
        m.mul_(b1).add_(torch.mul(g, 1.0 - b1, out=t))               # m = b1 * m + (1 - b1) * g
        v.mul_(b2).add_(torch.mul(g, g, out=t).mul_(1.0 - b2))       # v = b2 * v + (1 - b2) * g^2
        u = torch.div(m, torch.sqrt(v, out=t).add_(e), out=t)        # u = m / (sqrt(v) + e): no bias correction,
        if wd:                                                       #   on purpose: the official optimizer has none
            u.add_(torch.mul(p, wd, out=self._scratch(p, 1)))        # u += wd * p
        p.sub_(u.mul_(lr))                                           # p -= lr * u

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [(p, group) for group in self.param_groups for p in group["params"] if p.grad is not None]
        for p, _ in params:
            if p.grad.is_sparse:
                raise RuntimeError("BertAdam does not support sparse gradients")
        raw = [p.grad for p, _ in params]
        if type(self).clip_gradients is BertAdam.clip_gradients:
            # clip_gradients' products, made one at a time into a reused buffer as each update needs them:
            # the list would be a second, freshly allocated copy of every gradient.
            scale = self.clip_scale(raw)
            if scale is not None and bool(scale == 1.0):
                scale = None   # below the threshold TF multiplies by exactly 1.0, which changes no value: skip the pass
            grads = (g if scale is None else torch.mul(g, scale.to(g.dtype), out=self._scratch(g, 2)) for g in raw)
        else:   # a subclass's own clipping (the gate's planted faults)
            grads = self.clip_gradients(raw)
        for (p, group), g in zip(params, grads):
            lr = self.schedule_lr(group, self.global_step)
            self.update(p, g, self.state[p], group, lr)
        self.last_lr = [self.schedule_lr(group, self.global_step) for group in self.param_groups]
        self.global_step += 1
        return loss

    def get_lr(self) -> list[float]:
        """The rate the next step will use, per group (the original port's method)."""
        return [self.schedule_lr(group, self.global_step) for group in self.param_groups]

    def state_dict(self):
        d = super().state_dict()
        d["global_step"] = self.global_step
        return d

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        self.global_step = int(state_dict.pop("global_step", 0))
        super().load_state_dict(state_dict)


__all__ = ["BertAdam", "NO_DECAY_PATTERNS", "SCHEDULES", "decays", "decays_tf", "grouped_parameters", "num_train_steps",
           "num_warmup_steps", "official_lr", "warmup_linear_v06"]
