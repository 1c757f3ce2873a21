"""Precision tiers of the candidate: the arithmetic a PyTorch BERT runs in, while the reference stays float32.

    fp32   float32 everywhere; TF32 explicitly off on CUDA.
    tf32   float32 storage, matmul operands rounded to TF32's 10-bit mantissa, float32 accumulation:
           ``torch.backends.cuda.matmul.allow_tf32`` on CUDA; on CPU an exact emulation (every matmul /
           linear operand rounded to nearest-even on its 13 low mantissa bits), so the tier is testable
           on a machine without a GPU.
    bf16   bfloat16, as users run it: ``torch.autocast`` (mode "autocast", the default) or the whole
    fp16   model cast for inference (mode "cast"). fp16 the same, in float16.

Why a tier's tolerance can be derived on the spot (docs/precision.md): for every element,
``|c_t - r| <= |c_t - c64| + |c64 - r|``, where ``c64`` is the candidate's float64 twin (the same model,
same inputs, float64 arithmetic). The second term is the fp32 question (is the formula the official one?)
and keeps the fp32 profile's tolerance; the first is the tier's own rounding, measured, not assumed:
``e_t = max |c_t - c64|`` over the tap. So the tap's atol grows by ``MARGIN * e_t``. That alone would let an
overflow or a saturated fp16 value excuse itself, so ``e_t`` is held to what the tier's unit roundoff
predicts: ``e_t <= CEILING * (u_t / u_fp32) * max(e_32, u_fp32 * max|r|)``, where ``e_32`` is the same
model's float32 rounding (its float32 twin): rounding error scales with the unit roundoff for the same
conditioning. A tap past its ceiling fails, whatever the reference says.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from parity.numerics.metrics import MARGIN

# u = 2**-(p) for a p-bit significand (implicit bit included): half the spacing of 1.0.
UNIT_ROUNDOFF = {"fp32": 2.0 ** -24, "tf32": 2.0 ** -11, "bf16": 2.0 ** -8, "fp16": 2.0 ** -11}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("autocast", "cast")
# How far a tap's tier rounding may exceed (u_t / u_fp32) x its float32 rounding before it is called
# overflow / saturation / lost precision. Measured on MiniLM (docs/precision.md) the clean tiers
# use at most a small fraction of it; an Inf, a NaN or a saturated fp16 value use millions.
CEILING = 16.0
# The tier's atol term is MARGIN x e_t (defined in parity.numerics.metrics, which applies it). MARGIN 1 is the exact
# triangle bound, but then a clean run sits at ~0.99 of its tolerance (the worst element is where e_t is
# attained) and "fraction of the tolerance" stops saying anything; with 2, a clean run reads ~0.5: half the
# allowance is the candidate's own measured rounding.


class PrecisionError(ValueError):
    """A tier this machine cannot run (fp16 kernels missing, TF32 on a device without it): exit 2."""


@dataclass(frozen=True)
class Tier:
    name: str = "fp32"
    mode: str = "autocast"     # for bf16/fp16: autocast, or the whole model cast

    def __post_init__(self):
        if self.name not in UNIT_ROUNDOFF:
            raise PrecisionError(f"--precision {self.name}: unknown tier; choose one of "
                                 f"{', '.join(UNIT_ROUNDOFF)}")
        if self.mode not in MODES:
            raise PrecisionError(f"--precision-mode {self.mode}: choose autocast or cast")
        if self.mode == "cast" and self.name not in DTYPES:   # a float32 tier has nothing to cast to
            raise PrecisionError(f"--precision-mode cast applies to bf16 and fp16, not to --precision {self.name}")

    margin = MARGIN

    @property
    def unit_roundoff(self) -> float:
        return UNIT_ROUNDOFF[self.name]

    @property
    def reduced(self) -> bool:
        return self.name != "fp32"

    @property
    def cast_dtype(self) -> Optional[torch.dtype]:
        """The dtype the whole model is cast to (mode "cast" of bf16/fp16), else None."""
        return DTYPES.get(self.name) if self.mode == "cast" else None

    def ceiling(self, e32: float, ref_max: float) -> float:
        """The largest tier rounding (max |c_t - c64|) a tap may show: CEILING x what u_t predicts."""
        scale = self.unit_roundoff / UNIT_ROUNDOFF["fp32"]
        return CEILING * scale * max(e32, UNIT_ROUNDOFF["fp32"] * ref_max)

    def describe(self, device: str) -> str:
        if self.name == "fp32":
            return "fp32 (TF32 off)"
        if self.name == "tf32":
            return "tf32 (cuda allow_tf32)" if device.startswith("cuda") else "tf32 (emulated on CPU: operands rounded to 10 mantissa bits)"
        return f"{self.name} ({'torch.autocast' if self.mode == 'autocast' else 'whole model cast'})"

    def to_dict(self, device: str) -> dict:
        return {"tier": self.name, "mode": self.mode if self.name in DTYPES else None, "device": device,
                "unit_roundoff": self.unit_roundoff, "description": self.describe(device), "ceiling": CEILING,
                "margin": self.margin}


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 rounded to nearest-even on TF32's 10-bit mantissa (the low 13 bits cleared).

    Done on the bit pattern, as the hardware does, because no PyTorch dtype is TF32. NaN and Inf
    pass through unchanged; a finite value that rounds past the float32 maximum becomes Inf, as in
    hardware."""
    if x.dtype != torch.float32:
        return x
    bits = x.contiguous().view(torch.int32)
    lsb = (bits >> 13) & 1
    rounded = ((bits + 0x0FFF + lsb) & ~0x1FFF).view(torch.float32)
    return torch.where(torch.isfinite(x), rounded, x)


class _TF32Emulation(torch.overrides.TorchFunctionMode):
    """Rounds both operands of every float32 matmul to TF32 before it runs (any nn.Module: HF too)."""

    MATMULS = {torch.matmul, torch.mm, torch.bmm, torch.nn.functional.linear, torch.Tensor.matmul,
               torch.Tensor.__matmul__, torch.einsum, torch.addmm, torch.baddbmm}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.MATMULS:
            if func is torch.nn.functional.linear:   # F.linear(x, W, b): the bias is added in float32
                args = (round_to_tf32(args[0]), round_to_tf32(args[1]), *args[2:])
            elif func in (torch.addmm, torch.baddbmm):   # (bias, a, b): only the product's operands
                args = (args[0], round_to_tf32(args[1]), round_to_tf32(args[2]), *args[3:])
            elif func is torch.einsum:
                args = (args[0], *[round_to_tf32(a) if isinstance(a, torch.Tensor) else a for a in args[1:]])
            else:
                args = tuple(round_to_tf32(a) if isinstance(a, torch.Tensor) else a for a in args)
        return func(*args, **kwargs)


@contextlib.contextmanager
def _cuda_tf32(enabled: bool) -> Iterator[None]:
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def arithmetic(tier: Tier, device: str) -> Iterator[None]:
    """The context a candidate's forward runs in for ``tier`` on ``device`` (model already cast for "cast")."""
    cuda = device.startswith("cuda")
    with contextlib.ExitStack() as stack:
        if cuda:   # TF32 is on or off by the tier, never by whatever the process had set
            stack.enter_context(_cuda_tf32(tier.name == "tf32"))
        if tier.name == "tf32" and not cuda:
            stack.enter_context(_TF32Emulation())
        if tier.name in DTYPES and tier.mode == "autocast":
            stack.enter_context(torch.autocast("cuda" if cuda else "cpu", dtype=DTYPES[tier.name]))
        yield


def check_supported(tier: Tier, device: str) -> None:
    """Runs the tier's kernels once on a tiny input: a build or device without them is exit 2, not a crash later."""
    if not tier.reduced:
        return
    if tier.name == "tf32" and device.startswith("cuda"):
        major, _ = torch.cuda.get_device_capability(torch.device(device))
        if major < 8:
            raise PrecisionError(f"--precision tf32: {torch.cuda.get_device_name(torch.device(device))} "
                                 f"(compute capability {major}.x) has no TF32 (Ampere, 8.0, and later)")
        return
    dtype = DTYPES.get(tier.name, torch.float32)
    try:
        x = torch.ones(2, 4, device=device)
        w = torch.ones(3, 4, device=device)
        with arithmetic(tier, device):
            xs, ws = (x.to(dtype), w.to(dtype)) if tier.mode == "cast" else (x, w)
            y = torch.nn.functional.linear(xs, ws)
            torch.softmax(torch.tanh(y), -1)
            torch.erf(y)
            torch.nn.functional.layer_norm(y, (3,))
    except (RuntimeError, NotImplementedError) as e:
        raise PrecisionError(f"--precision {tier.name} on {device}: this torch build has no {tier.name} "
                             f"kernels here ({str(e).splitlines()[0]})") from None


# ---------------------------------------------------------------------------------------------
# The precision traps diagnose and compare name (hint causes ``fp16_overflow``, ``reduced_precision``,
# ``tf32_reference``): each read off the candidate's taps ``cand``, its plain float32 twin ``c32`` and its
# float64 twin ``c64``, and the reference ``ref``.

FP16_MAX = float(torch.finfo(torch.float16).max)   # 65504
# The reference's error at the first matmul output is TF32's when it exceeds the candidate's float32 rounding
# this many times while staying under what TF32's unit roundoff allows (its ceiling): 2**13 x apart.
TF32_BAND = 64.0
MATMUL_TAPS = ("/attention/query", "/attention/key", "/attention/value")


def _finite_max(a) -> float:
    a = np.abs(np.asarray(a, np.float64))
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else 0.0


def fp16_overflow_hint(names, cand: dict, c64: dict, tier: Optional[Tier]) -> Optional[dict]:
    """The first tap where the fp16 candidate holds Inf/NaN or sits at fp16's maximum while its float64
    twin is finite: the magnitude that overflowed, and where."""
    from parity.numerics.hints import hint
    if tier is None or tier.name != "fp16":
        return None
    for n in names:
        if n not in cand or n not in c64:
            continue
        c, ref64 = np.asarray(cand[n], np.float64), np.asarray(c64[n], np.float64)
        bad = ~np.isfinite(c) | (np.abs(c) >= FP16_MAX)
        if bad.any() and np.isfinite(ref64).all():
            at = [int(i) for i in np.argwhere(bad)[0]]
            need = _finite_max(ref64)
            return hint("fp16_overflow", None,
                        f"{n}: {int(bad.sum())} of {c.size} values are Inf/NaN or saturated at fp16's maximum "
                        f"{FP16_MAX:g} (first at {at}) where the float64 twin is finite, with magnitudes up to "
                        f"{need:.4g}: run this tap's block in bf16 or fp32, or rescale it",
                        tap=n, first_index=at, count=int(bad.sum()), float64_max=need, fp16_max=FP16_MAX)
    return None


def reduced_precision_hint(names, cand: dict, c32: dict, c64: dict, tier: Optional[Tier]) -> Optional[dict]:
    """fp32 was asked for, yet the candidate rounds far past its own float32 twin: it runs in bf16/fp16."""
    from parity.numerics.hints import hint
    if tier is None or tier.reduced or cand is c32:
        return None
    for n in names:
        if not all(n in d for d in (cand, c32, c64)) or np.shape(cand[n]) != np.shape(c64[n]):
            continue
        e_t = _finite_max(np.asarray(cand[n], np.float64) - np.asarray(c64[n], np.float64))
        e32 = _finite_max(np.asarray(c32[n], np.float64) - np.asarray(c64[n], np.float64))
        floor = max(e32, UNIT_ROUNDOFF["fp32"] * _finite_max(c64[n]))
        if e_t > Tier("fp32").ceiling(e32, _finite_max(c64[n])):
            ratio = e_t / floor
            like = min(("bf16", "fp16"), key=lambda t: abs(np.log2(ratio) - np.log2(
                UNIT_ROUNDOFF[t] / UNIT_ROUNDOFF["fp32"])))
            return hint("reduced_precision", None,
                        f"{n}: the candidate's own rounding (|candidate - float64 twin| {e_t:.3g}) is {ratio:.3g}x "
                        f"its float32 twin's ({floor:.3g}): it computes below float32 (closest: {like}) while "
                        f"--precision fp32 was asked; remove its autocast/half cast, or compare with --precision {like}",
                        tap=n, candidate_rounding=e_t, float32_rounding=floor, ratio=ratio, closest=like)
    return None


def tf32_reference_hint(names, ref: dict, c32: dict, c64: dict) -> Optional[dict]:
    """The reference was recorded with TF32 on (TF's default on Ampere and later GPUs): its error at the
    first matmul outputs is ~2**13 x float32 rounding while the lookups and the embedding LayerNorm agree."""
    from parity.numerics.hints import hint
    first = [n for n in names if n.startswith("layer_0") and n.endswith(MATMUL_TAPS)]
    if not first or any(n not in ref or n not in c32 or n not in c64 for n in first):
        return None
    emb = "embeddings/output"
    if emb in ref and emb in c64 and _finite_max(np.asarray(ref[emb], np.float64) - c64[emb]) > \
            Tier("fp32").ceiling(_finite_max(np.asarray(c32[emb], np.float64) - c64[emb]), _finite_max(c64[emb])):
        return None   # already off before any matmul: not TF32's signature
    tf32 = Tier("tf32")
    for n in first:
        e_ref = _finite_max(np.asarray(ref[n], np.float64) - np.asarray(c64[n], np.float64))
        e32 = _finite_max(np.asarray(c32[n], np.float64) - np.asarray(c64[n], np.float64))
        floor = max(e32, UNIT_ROUNDOFF["fp32"] * _finite_max(c64[n]))
        if not TF32_BAND * floor < e_ref <= tf32.ceiling(e32, _finite_max(c64[n])):
            return None
    return hint("tf32_reference", "layer_0/attention",
                f"{first[0]}: the reference is {e_ref / floor:.3g}x further from the float64 twin than float32 "
                f"rounding ({e_ref:.3g} vs {floor:.3g}), within what TF32's 10-bit mantissa gives, while the "
                f"embeddings agree: the reference was recorded with TF32 matmuls (TensorFlow's default on Ampere "
                f"and later GPUs); record it again with tf.config.experimental.enable_tensor_float_32_execution(False) "
                f"or compare with --precision tf32", tap=first[0], reference_error=e_ref, float32_rounding=floor)


def precision_hints(names, ref: dict, cand: dict, c32: dict, c64: dict, tier: Optional[Tier]) -> list[dict]:
    found = [fp16_overflow_hint(names, cand, c64, tier), reduced_precision_hint(names, cand, c32, c64, tier),
             tf32_reference_hint(names, ref, c32, c64)]
    return [h for h in found if h]
