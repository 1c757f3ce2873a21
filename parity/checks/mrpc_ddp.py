"""The runner under torchrun against the single-process runner and TensorFlow: deterministic MRPC fine-tuning.

    python -m parity.checks.mrpc_ddp --report-dir build/mrpc_ddp [--data-dir ../shared/data | --sample]
        [--train-examples 256 --dev-examples 128 --seq-len 64 --batch-size 8 --epochs 1 --lr 5e-5]
        [--planted rank-seed --planted no-allreduce --planted sum]

Three runs of the same deterministic training (dropout 0, real MiniLM-L6 weights from ``parity.minilm``, the
first ``--train-examples`` MRPC train pairs, ``--batch-size`` examples per optimizer step, the runner's
seeded batch order, BertAdam with the official schedule):

- ``single``: ``python -m bert_torch.run_classifier --no_dropout ...``, one process;
- ``ddp``: ``torchrun --standalone --nproc_per_node 2 -m bert_torch.run_classifier --no_dropout
  --gradient_accumulation_steps 2 ...``: 2 processes (gloo) x 2 micro-batches, the same global batch;
- ``tf``: the official graph (``reference_tf.finetune.FineTuner``, ``is_training=False`` so dropout 0),
  its new head set to the runner's initial head (``run_classifier.initial_classifier`` of the same seed),
  fed the same global batches in the same order (``run_classifier.training_batches``).

Compared: the examples each runner step used (from its ``train_log.json``) against the sampler's batches,
exactly; per-step loss of each pair (tf/single, tf/ddp, single/ddp; the first the reference) under
``parity.finetune.loss_tolerance``, the deterministic MRPC run's rule; the learning rates (within
``LR_RTOL``/``LR_ATOL`` of TF's, as the training check); the dev predictions of each pair (argmax
identical; max |logit diff| and the smallest logit margin reported). ``--planted NAME`` (repeatable) also
runs the 2-process side with that fault planted in its processes (``PLANTED``), against the same single and
TF runs: each such run must fail; ``caught_by_loss_rule`` says whether the loss comparison itself saw it.
The verdict passes when the clean runs agree and every planted fault fails. Writes ``mrpc_ddp.json`` (and
the runs' output folders) into ``--report-dir``; exit 0 pass, 1 fail, 2 bad input.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from typing import Optional

import numpy as np

from bert_torch.commands import run_main
from bert_torch._io import read_json, read_text, write_json
from bert_torch.optimization import num_train_steps, num_warmup_steps

from parity.checks.options import MRPC_DDP_PLANTED as PLANTED, MrpcDdpOptions, MrpcDdpRunnerOptions
from parity.files import REPO_ROOT, default_data_dir
from parity.finetune.tolerances import loss_agreement, loss_tolerance
from parity.finetune.features import mrpc_batches, take
from parity.finetune.tolerances import LR_ATOL, LR_RTOL
from parity.finetune.training import official_run
from parity.sides.refcache import Entry
from parity.inputs import SAMPLE

PROCESSES, ACCUMULATION = 2, 2
RUN_TIMEOUT = 1800   # seconds per runner run

# ---------------------------------------------------------------- the runner, with a planted fault

def _plant(name: str) -> None:
    """Installs fault ``name`` in this process's runner (module attributes the runner looks up at call time)."""
    from bert_torch import distributed, run_classifier
    rank = distributed.world_from_env().rank
    if name == "rank-seed":
        batches = run_classifier.training_batches
        run_classifier.training_batches = lambda n, b, steps, seed: batches(n, b, steps, seed + rank)
    elif name == "no-allreduce":
        distributed.wrap = lambda model, world, device: model
    elif name == "sum":
        wrap = distributed.wrap

        def summing(model, world, device):
            import torch.distributed as dist
            ddp = wrap(model, world, device)

            def hook(state, bucket):   # all-reduce SUM, not divided by the world size as DDP's default is
                fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
                return fut.then(lambda f: f.value()[0])
            if world.size > 1:
                ddp.register_comm_hook(None, hook)
            return ddp
        distributed.wrap = summing
    else:
        raise ValueError(f"--planted {name}: one of {sorted(PLANTED)}")


def runner_main(argv: list[str]) -> int:
    """``--as-runner [--planted NAME] RUNNER_ARGS...``: ``bert_torch.run_classifier`` with the fault planted.
    ``--planted`` comes first, as ``run_runner`` passes it; the rest is the runner's command line, as it is."""
    own = 2 if argv[:1] == ["--planted"] else 1 if argv[:1] and argv[0].startswith("--planted=") else 0
    opts, rest = MrpcDdpRunnerOptions.parse(argv[:own]), argv[own:]
    if opts.planted:
        _plant(opts.planted)
    from bert_torch import run_classifier
    return run_classifier.main(rest)


# ---------------------------------------------------------------- the check

def subset(src_dir: str, out_dir: str, n_train: int, n_dev: int) -> str:
    """A GLUE MRPC folder with the header and the first rows of ``src_dir``'s train.tsv and dev.tsv."""
    os.makedirs(out_dir, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        src = os.path.join(src_dir, f"{split}.tsv")
        lines = io.StringIO(read_text(src, "GLUE data file"), newline="").readlines()
        if len(lines) - 1 < n:
            raise ValueError(f"{src}: {len(lines) - 1} rows, {n} asked for")
        with open(os.path.join(out_dir, f"{split}.tsv"), "w", encoding="utf-8", newline="") as f:
            f.writelines(lines[:n + 1])
    return out_dir


def run_runner(kind: str, args: list[str], out_dir: str, planted: Optional[str] = None) -> dict:
    """One runner run (``single`` or ``ddp``): its train_log.json, dev logits and results, or its failure."""
    if kind == "single":
        cmd = [sys.executable, "-m", "bert_torch.run_classifier"]
    else:
        # torchrun itself (its module: no PATH lookup); the clean run is the runner as users launch it
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(PROCESSES), "-m"]
        cmd += ["parity.checks.mrpc_ddp", "--as-runner", "--planted", planted] if planted else ["bert_torch.run_classifier"]
        args = args + ["--gradient_accumulation_steps", str(ACCUMULATION)]
    t0 = time.time()
    shutil.rmtree(out_dir, ignore_errors=True)   # nothing of an earlier run is read as this one's
    # One thread per process unless the caller chose (torchrun's own default; for the single process too: on a
    # small shared machine two threads contend, and took twice the 2-process run's time in this project's runs).
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           # the runs import this checkout's bert_torch and parity, wherever the check is started from
           "PYTHONPATH": os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(cmd + args + ["--output_dir", out_dir], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, env=env)
    seconds = round(time.time() - t0, 1)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        if proc.returncode == 2 and kind == "single":   # the runner refused its input: so would every run
            raise ValueError(f"the runner refused its input: {tail[-1] if tail else ''}")
        return {"kind": kind, "exit_code": proc.returncode, "error": "\n".join(tail), "seconds": seconds}
    log = read_json(os.path.join(out_dir, "train_log.json"), "train log")
    results = dict(line.split(" = ", 1) for line in proc.stdout.splitlines() if " = " in line)
    return {"kind": kind, "exit_code": 0, "seconds": seconds, "log": log,
            "logits": np.load(os.path.join(out_dir, "eval_logits.npy")),
            "eval_accuracy": float(results["eval_accuracy"]), "eval_f1": float(results["eval_f1"])}


def tf_run(minilm: dict, train: dict, dev: dict, head: dict, order: list, lr: float, steps: int,
           warmup: int) -> dict:
    """The official graph's deterministic run on the same batches, from the runner's initial head."""
    from reference_tf.finetune import FineTuner
    t0 = time.time()

    def run(_) -> Entry:
        with FineTuner(minilm["prefix"], minilm["bert_config"], "classifier", dropout=False, seed=0,
                       learning_rate=lr, num_train_steps=steps, num_warmup_steps=warmup, head=head) as tf_side:
            losses, lrs = [], []
            for idx in order:
                loss, used = tf_side.train_step(take(train, idx))
                losses.append(loss)
                lrs.append(used)
            logits = np.concatenate([tf_side.predict(take(dev, slice(i, i + 64)))["logits"]
                                     for i in range(0, len(dev["label_ids"]), 64)])
        return Entry(arrays={"logits": logits}, values={"losses": losses, "lrs": lrs})

    tf = official_run("mrpc-ddp-reference", minilm, {"train": train, "dev": dev, "head": head, "order": order,
                                                     "lr": lr, "steps": steps, "warmup": warmup}, run)
    losses, lrs, logits = tf.values["losses"], tf.values["lrs"], tf.arrays["logits"]
    from bert_torch.glue import accuracy_and_f1
    m = accuracy_and_f1(logits.argmax(-1), dev["label_ids"])
    return {"kind": "tf", "losses": losses, "lrs": lrs, "logits": logits, "eval_accuracy": m["accuracy"],
            "eval_f1": m["f1"], "seconds": round(time.time() - t0, 1)}


def compare(ref: dict, other: dict, lr: float) -> dict:
    """One pair: per-step loss under the training rule (``ref`` the reference), learning rates, dev predictions."""
    a, b = ref["losses"], other["losses"]
    if len(a) != len(b):
        return {"pair": f"{ref['kind']}/{other['kind']}", "passed": False,
                "problem": f"{len(b)} steps against {len(a)}"}
    tol = loss_tolerance(a, b)
    rel, first = loss_agreement(b, a)
    lr_ok = all(y is not None and abs(y - x) <= LR_RTOL * abs(x) + LR_ATOL * lr for x, y in zip(ref["lrs"], other["lrs"]))
    pa, pb = ref["logits"].argmax(-1), other["logits"].argmax(-1)
    margin = np.abs(ref["logits"][:, 1] - ref["logits"][:, 0])
    same = float((pa == pb).mean())
    return {"pair": f"{ref['kind']}/{other['kind']}", "loss_passed": tol["passed"],
            "loss_tolerance_used_max": float(tol["used"].max()), "loss_worst_step": tol["worst"],
            "loss_tolerance_used": tol["used"].tolist(), "max_abs_loss_diff": tol["max_abs"],
            "max_rel_loss_diff": max(rel), "first_step_rel_diff_above_1e-4": first, "lr_passed": lr_ok,
            "dev_predictions_identical": same, "dev_max_abs_logit_diff": float(np.abs(ref["logits"] - other["logits"]).max()),
            "dev_min_logit_margin": float(margin.min()),
            "passed": bool(tol["passed"] and lr_ok and same == 1.0)}


def judge(runs: dict, order: list, steps: int, warmup: int, lr: float) -> dict:
    """The runners' runs (``single``, ``ddp``) against the sampler's batches and each other and ``tf``."""
    problems, pairs, ok_runs = [], [], {"tf": runs["tf"]}
    for kind in ("single", "ddp"):
        r = runs[kind]
        if r["exit_code"] != 0:
            problems.append(f"{kind} run exited {r['exit_code']}: {r['error'].splitlines()[-1] if r['error'] else ''}")
            continue
        lg = r["log"]
        r.update(losses=lg["step_losses"], lrs=lg["step_lrs"])
        differ = sum(a != b.tolist() for a, b in zip(lg["step_examples"], order)) + abs(len(lg["step_examples"]) - steps)
        r["steps_with_other_examples"] = differ
        if differ:
            problems.append(f"{kind}: the examples of {differ} of {steps} steps differ from the sampler's batches")
        if (lg["steps"], lg["warmup_steps"]) != (steps, warmup):
            problems.append(f"{kind}: {lg['steps']} steps ({lg['warmup_steps']} warmup), expected {steps} ({warmup})")
        ok_runs[kind] = r
    for a, b in (("tf", "single"), ("tf", "ddp"), ("single", "ddp")):
        pairs.append(compare(ok_runs[a], ok_runs[b], lr) if a in ok_runs and b in ok_runs
                     else {"pair": f"{a}/{b}", "passed": False, "problem": "a run failed"})
    return {"passed": not problems and all(p["passed"] for p in pairs), "problems": problems, "pairs": pairs,
            "dev_accuracy": {k: r["eval_accuracy"] for k, r in ok_runs.items()},
            "dev_f1": {k: r["eval_f1"] for k, r in ok_runs.items()}}


def _pair_text(p: dict) -> str:
    if "problem" in p:
        return f"{p['pair']} {p['problem']}"
    return (f"{p['pair']} loss {p['loss_tolerance_used_max']:.2g} of tolerance (max rel {p['max_rel_loss_diff']:.2g}), "
            f"predictions {p['dev_predictions_identical']:.4f} identical, max|logit diff| {p['dev_max_abs_logit_diff']:.2g}")


def _public(run: dict) -> dict:
    return {k: v for k, v in run.items() if k not in ("log", "logits", "losses", "lrs")} | \
        {"step_losses": run.get("losses"), "step_lrs": run.get("lrs")}


def checked_inputs(out_dir: str, data_dir: Optional[str], sample: bool, train_examples: Optional[int],
                   dev_examples: Optional[int], seq_len: int, batch_size: int, epochs: float, lr: float,
                   planted: tuple) -> tuple[int, int, int, str]:
    """(train examples, dev examples, optimizer steps, MRPC folder): every argument checked before a run."""
    if train_examples is None:   # the committed sample has 64 pairs
        train_examples = 64 if sample else 256
    if dev_examples is None:
        dev_examples = 64 if sample else 128
    if min(train_examples, dev_examples, seq_len, batch_size) < 1 or epochs <= 0 or lr <= 0:
        raise ValueError("--train-examples, --dev-examples, --seq-len, --batch-size, --epochs and --lr must be positive")
    if batch_size % (PROCESSES * ACCUMULATION):
        raise ValueError(f"--batch-size {batch_size}: must be a multiple of {PROCESSES} processes x "
                         f"{ACCUMULATION} accumulation steps")
    steps = num_train_steps(train_examples, batch_size, epochs)
    if steps < 1:
        raise ValueError(f"{train_examples} examples at batch {batch_size} x {epochs} epochs: no optimizer step")
    for name in planted:
        if name not in PLANTED:
            raise ValueError(f"--planted {name}: one of {sorted(PLANTED)}")
    if sample:
        src = os.path.dirname(SAMPLE)
        os.makedirs(os.path.join(out_dir, "sample"), exist_ok=True)
        for split in ("train", "dev"):   # the committed sample as both splits
            shutil.copyfile(SAMPLE, os.path.join(out_dir, "sample", f"{split}.tsv"))
        src = os.path.join(out_dir, "sample")
    else:
        data_dir = data_dir or default_data_dir()
        src = os.path.join(data_dir, "mrpc") if data_dir else None
        if not src or not all(os.path.isfile(os.path.join(src, f"{s}.tsv")) for s in ("train", "dev")):
            raise FileNotFoundError(f"--data-dir {data_dir}: no mrpc/train.tsv and mrpc/dev.tsv there (or --sample)")
    return train_examples, dev_examples, steps, src


def fault_row(name: str, bad: dict, j: dict) -> dict:
    """A planted fault's 2-process run judged against the clean single-process and TF runs: caught, and how."""
    ddp_pairs = [p for p in j["pairs"] if p["pair"].endswith("/ddp")]
    return {"fault": name, "description": PLANTED[name], "caught": not j["passed"],
            "caught_by_loss_rule": any(p.get("loss_passed") is False for p in ddp_pairs),
            "caught_by_predictions": any(p.get("dev_predictions_identical", 1.0) < 1.0 for p in ddp_pairs),
            "caught_by_examples": bool(bad.get("steps_with_other_examples")),
            "problems": j["problems"], "pairs": j["pairs"], "dev_accuracy": j["dev_accuracy"].get("ddp"),
            "run": _public(bad)}


def run_check(out_dir: str, data_dir: Optional[str] = None, sample: bool = False,
              train_examples: Optional[int] = None, dev_examples: Optional[int] = None, seq_len: int = 64, batch_size: int = 8, epochs: float = 1.0, lr: float = 5e-5,
              seed: int = 0, planted: tuple = (), log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    """The clean comparison, then each fault of ``planted`` in its own 2-process run against the same
    single-process and TF runs. Verdict "pass": the clean runs agree and every planted fault fails."""
    from bert_torch.modeling import BertConfig
    from bert_torch.run_classifier import initial_classifier, training_batches
    from parity.minilm import build_checkpoint
    train_examples, dev_examples, steps, src = checked_inputs(out_dir, data_dir, sample, train_examples,
                                                              dev_examples, seq_len, batch_size, epochs, lr, planted)
    t0 = time.time()
    os.makedirs(out_dir, exist_ok=True)
    data = subset(src, os.path.join(out_dir, "data"), train_examples, dev_examples)
    minilm = build_checkpoint(os.path.join(out_dir, "minilm"))
    common = ["--task_name", "mrpc", "--do_train", "--do_eval", "--do_lower_case", "--data_dir", data,
              "--vocab_file", minilm["vocab"], "--bert_config_file", minilm["bert_config"],
              "--init_checkpoint", minilm["torch_weights"], "--max_seq_length", str(seq_len),
              "--train_batch_size", str(batch_size), "--num_train_epochs", repr(float(epochs)),
              "--learning_rate", repr(float(lr)), "--seed", str(seed), "--eval_batch_size", "32",
              "--no_dropout", "--no_progress", "--device", "cpu"]
    log(f"single-process runner: {steps} steps")
    single = run_runner("single", common, os.path.join(out_dir, "single"))
    log(f"torchrun {PROCESSES} processes x accumulation {ACCUMULATION}")
    ddp = run_runner("ddp", common, os.path.join(out_dir, "ddp"))
    train = mrpc_batches(data, minilm["vocab"], "train", seq_len)
    dev = mrpc_batches(data, minilm["vocab"], "dev", seq_len)
    order = list(training_batches(len(train["label_ids"]), batch_size, steps, seed))
    warmup = num_warmup_steps(steps, 0.1)   # the runner's default --warmup_proportion
    config = BertConfig.from_json_file(minilm["bert_config"])
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    clf = initial_classifier(config, 2, seed)   # the runner's head before training: the same draws
    head = {"output_weights": clf.classifier.weight.detach().numpy().copy(),
            "output_bias": clf.classifier.bias.detach().numpy().copy()}
    log("TensorFlow: the same training")
    tf = tf_run(minilm, train, dev, head, order, lr, steps, warmup)
    clean = judge({"tf": tf, "single": single, "ddp": ddp}, order, steps, warmup, lr)
    faults = []
    for name in planted:
        log(f"torchrun {PROCESSES} processes x accumulation {ACCUMULATION}, planted: {name}")
        bad = run_runner("ddp", common, os.path.join(out_dir, f"planted-{name}"), planted=name)
        faults.append(fault_row(name, bad, judge({"tf": tf, "single": single, "ddp": bad}, order, steps, warmup, lr)))
    ok = clean["passed"] and all(f["caught"] for f in faults)
    acc = clean["dev_accuracy"]
    result = {
        "name": "mrpc_ddp", "verdict": "pass" if ok else "fail",
        "summary": (f"{steps} MRPC steps of {batch_size} x {seq_len} (lr {lr:g}, dropout 0): runner 1 process vs "
                    f"torchrun {PROCESSES} x accumulation {ACCUMULATION} vs TF: "
                    + "; ".join(_pair_text(p) for p in clean["pairs"])
                    + "; dev accuracy " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items())
                    + (f"; PROBLEMS: {'; '.join(clean['problems'])}" if clean["problems"] else "")
                    + (f"; planted faults caught {sum(f['caught'] for f in faults)}/{len(faults)} ("
                       + ", ".join(f"{f['fault']}: " + ("loss rule" if f["caught_by_loss_rule"] else
                                                        "caught, not by the loss rule" if f["caught"] else "MISSED")
                                   for f in faults) + ")" if faults else "")),
        "rule": (loss_tolerance([1.0], [1.0])["rule"] + " (first of each pair the reference); learning rates within "
                 f"{LR_RTOL:g} relative + {LR_ATOL:g} x lr; dev predictions (argmax) identical; each runner step's "
                 "examples identical to the sampler's; every planted fault fails"),
        "steps": steps, "warmup_steps": warmup, "batch_size": batch_size, "seq_len": seq_len, "learning_rate": lr,
        "seed": seed, "train_examples": train_examples, "dev_examples": dev_examples, "processes": PROCESSES,
        "gradient_accumulation_steps": ACCUMULATION, "data": "committed sample" if sample else src,
        "clean_passed": clean["passed"], "problems": clean["problems"], "pairs": clean["pairs"],
        "dev_accuracy": acc, "dev_f1": clean["dev_f1"], "planted_faults": faults,
        "runs": {"tf": _public(tf), "single": _public(single), "ddp": _public(ddp)},
        "seconds": round(time.time() - t0, 1)}
    write_json(os.path.join(out_dir, "mrpc_ddp.json"), result, "mrpc_ddp report", indent=1)
    return result


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m parity.checks.mrpc_ddp`` (and ``--as-runner``, the runner in the 2-process runs' processes)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--as-runner"]:
        return runner_main(argv[1:])
    return run_main(lambda: run_mrpc_ddp(MrpcDdpOptions.parse(argv)))


def run_mrpc_ddp(opts: MrpcDdpOptions) -> int:
    """``run_check`` on the command line's values; prints the verdict. Exit 0 pass, 1 fail."""
    result = run_check(opts.report_dir, opts.data_dir, opts.sample, opts.train_examples, opts.dev_examples,
                       opts.seq_len, opts.batch_size, opts.epochs, opts.lr, opts.seed, opts.planted)
    print(f"{result['verdict']}: {result['summary']}")
    return 0 if result["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
