"""Optimizer parity: BertAdam against the official AdamWeightDecayOptimizer, step by step, and the
planted faults the original port's users hit (each must fail)."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

import numpy as np
import torch

from bert_torch.optimization import BertAdam, decays_tf

from parity.finetune.tolerances import LR_ATOL, LR_RTOL, OPT_ATOL, OPT_RTOL, _close


class PerParameterClipping(BertAdam):
    """The original port's clip: clip_grad_norm_ on each tensor separately."""

    def clip_gradients(self, grads):
        clip = self.defaults["max_grad_norm"]
        out = []
        for g in grads:
            norm = g.norm()
            out.append(g * (clip / norm) if norm > clip else g)
        return out


class BiasCorrection(BertAdam):
    """Textbook Adam: m and v divided by (1 - b^t)."""

    def update(self, p, g, state, group, lr):
        b1, b2, e, wd = group["b1"], group["b2"], group["e"], group["weight_decay"]
        if not state:
            state["next_m"], state["next_v"], state["t"] = torch.zeros_like(p), torch.zeros_like(p), 0
        state["t"] += 1
        m = b1 * state["next_m"] + (1.0 - b1) * g
        v = b2 * state["next_v"] + (1.0 - b2) * torch.square(g)
        u = (m / (1 - b1 ** state["t"])) / (torch.sqrt(v / (1 - b2 ** state["t"])) + e)
        if wd:
            u = u + wd * p
        p.sub_(lr * u)
        state["next_m"], state["next_v"] = m, v


class DecayEverything(BertAdam):
    """Weight decay on LayerNorm and biases too (one param group for all)."""

    def update(self, p, g, state, group, lr):
        super().update(p, g, state, {**group, "weight_decay": self.defaults["weight_decay"]}, lr)


class WarmupV06(BertAdam):
    """The original port's v0.6 WarmupLinearSchedule (lr(t+1), decay rescaled after warmup)."""

    def schedule_lr(self, group, step):
        return super().schedule_lr({**group, "schedule": "warmup_linear_v06"}, step)


PLANTED_FAULTS: dict[str, type] = {
    "per-parameter clipping instead of global": PerParameterClipping,
    "Adam bias correction on": BiasCorrection,
    "weight decay applied to LayerNorm and bias": DecayEverything,
    "the original port's v0.6 warmup formula": WarmupV06,
}


class optimizer_inputs:
    """Gradients for ``steps`` steps, made on demand (the real MiniLM's would be 88 MB a step):
    seeded normals, scaled so that the global norm is 5.0 (clipping active, and single tensors
    above 1.0, so per-tensor clipping differs from global) on two steps out of three, and 0.3
    (clipping inactive) on the third."""

    def __init__(self, variables: dict[str, np.ndarray], steps: int = 20, seed: int = 0):
        self.variables, self.steps, self.seed = variables, steps, seed
        self.total = sum(v.size for v in variables.values())

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> dict:
        if not 0 <= step < self.steps:
            raise IndexError(step)
        rng = np.random.default_rng([self.seed, step])
        scale = (5.0 if step % 3 != 2 else 0.3) / np.sqrt(self.total)
        return {n: (rng.standard_normal(v.shape, dtype=np.float32) * np.float32(scale))
                for n, v in self.variables.items()}


def optimizer_variables(source: str = "synthetic", seed: int = 0, minilm_weights: Optional[str] = None) -> dict:
    """Variables (TF names) to optimize: "synthetic" (small tensors under real BERT names: kernels,
    biases, LayerNorm gamma/beta, embeddings, the classifier head) or "minilm" (every variable of
    the real MiniLM-L6 checkpoint plus a classifier head)."""
    rng = np.random.default_rng(seed)
    if source == "minilm":
        from bert_torch.convert import file_to_tf_name
        from bert_torch.weights import read_weights
        from parity.minilm import minilm_dir
        tensors = read_weights(minilm_weights or os.path.join(minilm_dir(), "model.safetensors"))
        out = {}
        for name, value in tensors.items():
            tf_name, transpose = file_to_tf_name(name)
            # torch Linear weights are [out, in]; TF kernels [in, out].
            out[tf_name] = np.ascontiguousarray(value.T if transpose else value).astype(np.float32)
        hidden = out["bert/pooler/dense/bias"].shape[0]
        out["output_weights"] = (rng.standard_normal((2, hidden)) * 0.02).astype(np.float32)
        out["output_bias"] = np.zeros(2, np.float32)
        return out
    H, I = 16, 32
    shapes = {"bert/embeddings/word_embeddings": (50, H), "bert/embeddings/LayerNorm/gamma": (H,),
              "bert/embeddings/LayerNorm/beta": (H,),
              "bert/encoder/layer_0/attention/self/query/kernel": (H, H),
              "bert/encoder/layer_0/attention/self/query/bias": (H,),
              "bert/encoder/layer_0/intermediate/dense/kernel": (H, I),
              "bert/encoder/layer_0/intermediate/dense/bias": (I,),
              "bert/encoder/layer_0/output/LayerNorm/gamma": (H,),
              "bert/pooler/dense/kernel": (H, H), "output_weights": (2, H), "output_bias": (2,)}
    out = {n: (rng.standard_normal(s) * 0.5).astype(np.float32) for n, s in shapes.items()}
    for n in out:
        if n.endswith("gamma"):
            out[n] = (1.0 + 0.1 * rng.standard_normal(out[n].shape)).astype(np.float32)
    return out


@dataclasses.dataclass(frozen=True)
class OfficialHistory:
    """The official optimizer's run, recorded once so that several PyTorch optimizers (the planted
    faults) can be judged against it: the variables and learning rate after each step, the final Adam
    slots, and the order TF applied the global step in (``OfficialOptimizer.global_step_order``)."""
    variables: list
    lrs: list
    slots: dict
    order: str


def official_history(source: str = "synthetic", steps: int = 20, lr: float = 1e-3, warmup: float = 0.25,
                     t_total: int = 20, seed: int = 0) -> OfficialHistory:
    """Run AdamWeightDecayOptimizer alone for ``steps`` steps on ``optimizer_check``'s inputs."""
    from reference_tf.finetune import OfficialOptimizer
    variables = optimizer_variables(source, seed)
    opt = OfficialOptimizer(variables, lr, t_total, int(t_total * warmup))
    try:
        lrs, history = [], []
        for g in optimizer_inputs(variables, steps, seed):
            lrs.append(opt.apply(g))
            history.append(opt.variables())
        return OfficialHistory(history, lrs, opt.slots(), opt.global_step_order())
    finally:
        opt.close()


def optimizer_check(optimizer_cls=BertAdam, steps: int = 20, source: str = "synthetic", lr: float = 1e-3,
                    warmup: float = 0.25, t_total: int = 20, seed: int = 0,
                    history: Optional[OfficialHistory] = None) -> dict:
    """BertAdam against the official AdamWeightDecayOptimizer: ``steps`` steps from identical
    weights and gradients; every variable and slot after every step, and every step's rate.

    warmup 0.25 of t_total 20 puts steps 0-4 in warmup (step 0 at lr 0) and 15 in decay;
    the gradients make clipping active on 2 steps out of 3. Without ``history`` the two sides run in
    lockstep and are compared step by step (so the real MiniLM's 22M parameters need no stored
    history); with it (``official_history``, same arguments), TF is not run again.
    """
    from reference_tf.finetune import OfficialOptimizer
    variables = optimizer_variables(source, seed)
    grads = optimizer_inputs(variables, steps, seed)
    t0 = time.time()
    opt = None
    if history is None:
        opt = OfficialOptimizer(variables, lr, t_total, int(t_total * warmup))
        order = opt.global_step_order()
    else:
        order = history.order
    params = {n: torch.nn.Parameter(torch.from_numpy(v.copy())) for n, v in variables.items()}
    groups = [{"params": [p for n, p in params.items() if decays_tf(n)], "weight_decay": 0.01},
              {"params": [p for n, p in params.items() if not decays_tf(n)], "weight_decay": 0.0}]
    pt = optimizer_cls([g for g in groups if g["params"]], lr=lr, warmup=warmup, t_total=t_total)
    rows, first_bad = [], None
    try:
        for step, g in enumerate(grads):
            if opt is not None:
                lr_tf, ref = opt.apply(g), opt.variables()
            else:
                lr_tf, ref = history.lrs[step], history.variables[step]
            for n, p in params.items():
                p.grad = torch.from_numpy(g[n])
            lr_pt = pt.get_lr()[0]
            pt.step()
            lr_ok = abs(lr_pt - lr_tf) <= LR_RTOL * abs(lr_tf) + LR_ATOL * lr
            worst_name, worst_err, ok_all = None, 0.0, lr_ok
            for n, p in params.items():
                ok, err = _close(p.detach().numpy(), ref[n], OPT_ATOL, OPT_RTOL)
                ok_all &= ok
                if err >= worst_err:
                    worst_name, worst_err = n, err
            rows.append({"step": step, "lr_tf": lr_tf, "lr_torch": lr_pt, "lr_ok": lr_ok,
                         "max_abs_param_diff": worst_err, "worst_variable": worst_name, "passed": ok_all})
            if not ok_all and first_bad is None:
                first_bad = step
        tf_slots = opt.slots() if opt is not None else history.slots
    finally:
        if opt is not None:
            opt.close()
    pt_slots = {}
    for n, p in params.items():
        st = pt.state[p]
        pt_slots[f"{n}/adam_m"], pt_slots[f"{n}/adam_v"] = st["next_m"].numpy(), st["next_v"].numpy()
    slot_err = max(_close(pt_slots[n], tf_slots[n], OPT_ATOL, OPT_RTOL)[1] for n in tf_slots)
    slots_ok = all(_close(pt_slots[n], tf_slots[n], OPT_ATOL, OPT_RTOL)[0] for n in tf_slots)
    passed = first_bad is None and slots_ok
    name = optimizer_cls.__name__
    worst = max(r["max_abs_param_diff"] for r in rows)
    return {"name": "optimizer", "optimizer": name, "verdict": "pass" if passed else "fail",
            "summary": (f"{name} vs official AdamWeightDecayOptimizer, {steps} steps on {len(variables)} "
                        f"{source} variables: " + ("all steps within tolerance" if passed else
                                                   f"first divergence at step {first_bad}")
                        + f", max |param diff| {worst:.3g}, max |slot diff| {slot_err:.3g}"),
            "first_divergent_step": first_bad, "steps": rows, "max_abs_slot_diff": slot_err,
            "tolerance": {"atol": OPT_ATOL, "rtol": OPT_RTOL, "lr_rtol": LR_RTOL, "lr_atol_of_init_lr": LR_ATOL},
            "tf_global_step_order": order, "seconds": round(time.time() - t0, 2)}


def planted_fault_checks(source: str = "synthetic") -> dict:
    """Each planted optimizer fault against the same official run: each must fail."""
    history = official_history(source)
    clean = optimizer_check(BertAdam, source=source, history=history)
    rows = [{"fault": "none (BertAdam)", "verdict": clean["verdict"], "first_divergent_step": None,
             "caught": clean["verdict"] == "pass"}]
    for fault, cls in PLANTED_FAULTS.items():
        r = optimizer_check(cls, source=source, history=history)
        rows.append({"fault": fault, "verdict": r["verdict"], "first_divergent_step": r["first_divergent_step"],
                     "caught": r["verdict"] == "fail"})
    ok = all(r["caught"] for r in rows)
    return {"name": "planted_optimizer_faults", "verdict": "pass" if ok else "fail",
            "summary": f"{sum(r['caught'] for r in rows[1:])}/{len(rows) - 1} planted optimizer faults caught"
                       + ("" if rows[0]["caught"] else "; the clean BertAdam FAILED"),
            "faults": rows}
