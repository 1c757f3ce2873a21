"""Data-parallel parity: N processes x b rows under ``torchrun`` (DistributedDataParallel, gloo on CPU)
compute what one process computes on the N*b batch, the official single-device step.

    torchrun --nproc_per_node 2 -m parity.checks.ddp --output ddp.json [--planted sum] [--device cpu]

Real MiniLM-L6 weights with a seeded classification head, dropout 0, MRPC sample pairs. Each process takes
its shard of the batch the way the runners do (``bert_torch.distributed.shard``, micro-batches of
``--micro`` rows through ``accumulate_gradients``, ``no_sync`` until the last one); DDP averages. Rank 0
compares, variable by variable, the averaged gradients with the single-process gradients of the whole
batch (the rule of ``parity.finetune.gradient_check``: max|diff| <= 1e-4 x max|g| + 1e-7, cosine >=
0.9999), then the parameters after ``--steps`` BertAdam steps (within 1e-5 x max|p| + 1e-7: float32
rounding of two summation orders). The single-process gradients are the ones ``gradient_check`` proves
against TensorFlow's ``tf.gradients``. ``--planted sum`` plants the classic fault: gradients summed across
processes instead of averaged. Rank 0 writes ``--output`` (JSON); exit 0 pass, 1 fail, 2 bad input.
"""
from __future__ import annotations

import copy
import os
import sys
from typing import Optional

import numpy as np
import torch

from bert_torch import distributed
from bert_torch._io import write_json
from bert_torch.commands import run_main
from bert_torch.modeling import BertConfig, BertForSequenceClassification
from bert_torch.optimization import BertAdam, accumulate_gradients, grouped_parameters, micro_batches
from bert_torch.weights import model_from_tensors, read_weights

from parity.checks.options import DdpOptions
from parity.finetune.tolerances import gradient_row
from parity.finetune.features import mrpc_batches
from parity.inputs import SAMPLE
from parity.minilm import minilm_dir

PARAM_RTOL, PARAM_ATOL = 1e-5, 1e-7


def build_model(seed: int = 0) -> BertForSequenceClassification:
    """MiniLM's real body (the installed weights, read as is) and a classification head drawn from ``seed``."""
    root = minilm_dir()
    config = BertConfig.from_json_file(os.path.join(root, "config.json"))
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0   # deterministic: the gradients must agree
    body = model_from_tensors(read_weights(os.path.join(root, "model.safetensors")), config, head=None)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config, num_labels=2)
    model.bert.load_state_dict(body.state_dict())
    return model


def gradients(model, batch: dict, rows, micro: int, ddp=None) -> float:
    """Backward of the mean loss over ``rows`` of ``batch`` in micro-batches (the runners' loop)."""
    net = ddp or model
    parts = [rows[s] for s in micro_batches(len(rows), micro)]

    def loss(part, last):
        with distributed.no_sync(net, last):
            t = [torch.from_numpy(batch[k][part]) for k in ("input_ids", "segment_ids", "input_mask", "label_ids")]
            return net(t[0], t[1], t[2], labels=t[3])
    return accumulate_gradients([lambda p=p, last=(i == len(parts) - 1): loss(p, last) for i, p in enumerate(parts)],
                                [len(p) for p in parts])


def compare_gradients(single, ddp) -> list[dict]:
    """Every variable's DDP gradient against the single process's (the reference: ``max_abs_tf`` is its
    scale here), by ``finetune.gradient_row``; worst first."""
    rows = [gradient_row(name, b.grad.detach().numpy(), a.grad.detach().numpy())
            for (name, a), (_, b) in zip(single.named_parameters(), ddp.named_parameters()) if a.grad is not None]
    return sorted(rows, key=lambda r: -r["tol_ratio"])


def run(opts: DdpOptions) -> dict:
    """This process's part of the check (every process runs it); rank 0 compares and writes ``--output``."""
    world = distributed.world_from_env()
    device = distributed.init(world, opts.device)
    if opts.batch_size < world.size or opts.batch_size % world.size or opts.micro < 1 or opts.steps < 1:
        raise ValueError(f"--batch-size {opts.batch_size} must be a multiple of the {world.size} processes, "
                         f"--micro {opts.micro} and --steps {opts.steps} positive")
    batch = mrpc_batches(None, os.path.join(minilm_dir(), "vocab.txt"), "dev", 64, limit=opts.batch_size,
                         sample_tsv=SAMPLE)
    rows = np.arange(opts.batch_size)
    single = build_model()
    ours = copy.deepcopy(single)
    ddp = distributed.wrap(ours, world, device)
    opt_single = BertAdam(grouped_parameters(single), lr=1e-4, warmup=-1, t_total=opts.steps)
    opt_ddp = BertAdam(grouped_parameters(ours), lr=1e-4, warmup=-1, t_total=opts.steps)
    out = {"processes": world.size, "batch_size": opts.batch_size, "micro_batch": opts.micro,
           "planted": opts.planted}
    for step in range(opts.steps):
        opt_single.zero_grad(set_to_none=True)
        opt_ddp.zero_grad(set_to_none=True)
        loss_single = gradients(single, batch, rows, opts.batch_size)
        loss_ddp = distributed.mean_over_processes(gradients(ours, batch, distributed.shard(rows, world),
                                                             opts.micro, ddp), world)
        if opts.planted == "sum":   # all-reduce SUM instead of the average: world.size x the gradient
            for p in ours.parameters():
                if p.grad is not None:
                    p.grad.mul_(world.size)
        if step == 0:
            out["gradients"] = compare_gradients(single, ours)
            out["loss_single"], out["loss_ddp"] = loss_single, loss_ddp
        opt_single.step()
        opt_ddp.step()
    with torch.no_grad():
        diffs = [(n, float((a.double() - b.double()).abs().max()), float(a.double().abs().max()))
                 for (n, a), (_, b) in zip(single.named_parameters(), ours.named_parameters())]
    out["parameters"] = {"max_abs_diff": max(d for _, d, _ in diffs),
                         "worst": max(diffs, key=lambda x: x[1] / (PARAM_RTOL * x[2] + PARAM_ATOL))[0],
                         "passed": all(d <= PARAM_RTOL * s + PARAM_ATOL for _, d, s in diffs)}
    g = out["gradients"]
    out["verdict"] = "pass" if all(r["passed"] for r in g) and out["parameters"]["passed"] else "fail"
    out["summary"] = (f"{world.size} processes x {opts.batch_size // world.size} rows (micro-batches of {opts.micro}) "
                      f"vs 1 process x {opts.batch_size}: worst gradient {g[0]['variable']} max|diff| "
                      f"{g[0]['max_abs_diff']:.3g} ({g[0]['tol_ratio']:.2g} of its tolerance); parameters after "
                      f"{opts.steps} BertAdam steps max|diff| {out['parameters']['max_abs_diff']:.3g}")
    distributed.finish(world)
    if world.main and opts.output:
        write_json(opts.output, out, "--output", indent=2)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    """``torchrun ... -m parity.checks.ddp``: every process parses the same command line. Exit 0 pass, 1 fail,
    2 bad input."""
    return run_main(lambda: run_ddp_check(DdpOptions.parse(argv)))


def run_ddp_check(opts: DdpOptions) -> int:
    """``run`` in this process; rank 0 prints the verdict. Exit 0 pass, 1 fail."""
    out = run(opts)
    if distributed.world_from_env().main:
        print(f"{out['verdict']}: {out['summary']}")
    return 0 if out["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
