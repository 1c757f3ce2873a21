"""Fine-tune and evaluate BERT on MRPC in PyTorch, as the official run_classifier.py does in TF.

    python -m bert_torch.run_classifier --task_name mrpc --do_train --do_eval --do_lower_case \\
        --data_dir glue/MRPC --vocab_file vocab.txt --bert_config_file bert_config.json \\
        --init_checkpoint bert_model.ckpt --max_seq_length 128 --train_batch_size 32 \\
        --learning_rate 2e-5 --num_train_epochs 3.0 --output_dir out

The training is the official one: features by ``bert_torch.glue`` (identical to
``convert_single_example``), ``int(examples / batch * epochs)`` optimizer steps over the shuffled,
repeated data with the remainder rolled into the next epoch, warmup ``warmup_proportion``,
``BertAdam`` (= AdamWeightDecayOptimizer, global-norm clipping 1.0). ``--init_checkpoint`` takes a
TF checkpoint (read without TensorFlow) or a PyTorch weights file. Writes
``pytorch_model.safetensors``, ``bert_config.json`` and ``train_log.json`` (per optimizer step: the loss,
the learning rate, the examples used over all processes) after training, ``eval_results.txt`` and
``eval_logits.npy`` (one row per dev example, file order) after evaluation, into ``--output_dir``; each
file appears whole or not at all. Dropout is the config's (the classifier's too: ``hidden_dropout_prob``,
0.1 in every released config, the official ``keep_prob`` 0.9); ``--no_dropout`` (or
``--hidden_dropout_prob 0 --attention_probs_dropout_prob 0``) makes training deterministic: then the run
is a function of ``--seed``, the data and the weights, also under torchrun with any accumulation that
keeps ``--train_batch_size`` (``parity.checks.mrpc_ddp`` compares those runs with TensorFlow's).
Exit codes: 0 done, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import io
import os
import random
import sys
import time
from typing import Optional

import numpy as np
import torch

from . import distributed, glue
from .commands import ArgumentParser, run_main
from .flags import checkpoint, count, input_dir, input_file, output_dir, real
from ._io import write_bytes, write_json, write_text
from .modeling import BertConfig, BertForSequenceClassification
from .optimization import (BertAdam, accumulate_gradients, grouped_parameters, micro_batches, num_train_steps,
                           num_warmup_steps)
from .tokenization import FullTokenizer
from .weights import WeightsError, check_shapes, expected_shapes, model_tensors, read_weights, write_weights

TASKS = {"mrpc": glue.MrpcProcessor}


class Progress:
    """A plain-text progress bar on stderr (no dependency): ``label [#####.....] 50/100 2.1 it/s loss 0.61``."""

    def __init__(self, total: int, label: str, stream=None, width: int = 30, every: float = 0.5):
        self.total, self.label, self.width, self.every = max(total, 1), label, width, every
        self.stream = stream or sys.stderr
        self.start = self.last = time.time()
        self.n = 0

    def update(self, n: int = 1, **info) -> None:
        self.n += n
        now = time.time()
        if now - self.last >= self.every or self.n >= self.total:
            self.last = now
            done = int(self.width * self.n / self.total)
            rate = self.n / max(now - self.start, 1e-9)
            extra = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
            end = "\n" if self.n >= self.total else ""
            self.stream.write(f"\r{self.label} [{'#' * done}{'.' * (self.width - done)}] {self.n}/{self.total} "
                              f"{rate:.2f} it/s {extra}{end}")
            self.stream.flush()


def load_init_weights(path: str, config: BertConfig) -> dict[str, np.ndarray]:
    """Body weights (file names) from a TF checkpoint (dir or prefix) or a PyTorch weights file;
    heads and optimizer slots in the source are ignored, every body tensor must be there."""
    from .convert import tf_to_torch
    from .tf_checkpoint import CheckpointError, checkpoint_prefix, read_checkpoint
    # Not os.path.isfile: a FIFO of such a name goes to read_weights, which refuses it by name.
    if not os.path.isdir(path) and path.endswith((".safetensors", ".bin", ".pt")):
        tensors = read_weights(path)
    else:
        try:
            prefix = checkpoint_prefix(path)
            tensors, _ = tf_to_torch(read_checkpoint(prefix), config, where=prefix, body_only=True)
        except CheckpointError as e:
            raise WeightsError([str(e).splitlines()[0]]) from None
    body = expected_shapes(config, None)
    tensors = {k: v for k, v in tensors.items() if k in body}
    check_shapes(tensors, body, path, config)
    return tensors


def load_body(model: torch.nn.Module, tensors: dict[str, np.ndarray]) -> None:
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
    model.bert.load_state_dict(state, strict=True)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available in this torch build/machine")
    return torch.device(name)


def training_batches(n: int, batch_size: int, steps: int, seed: int):
    """Index batches for ``steps`` steps: each epoch a seeded permutation, the stream repeated
    and cut into full batches (the official input_fn repeats, shuffles, drops remainders). A function of
    (n, batch_size, steps, seed) only: every process of a torchrun job, and a single-process run with
    any accumulation, draws the same global batches in the same order."""
    rng = np.random.default_rng(seed)
    stream = np.empty(0, dtype=np.int64)
    for _ in range(steps):
        while len(stream) < batch_size:
            stream = np.concatenate([stream, rng.permutation(n)])
        yield stream[:batch_size]
        stream = stream[batch_size:]


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--bert_config_file", required=True, type=input_file("bert_config.json"))
    ap.add_argument("--vocab_file", required=True, type=input_file("vocab file"))
    ap.add_argument("--output_dir", required=True, type=output_dir("output folder"))
    ap.add_argument("--init_checkpoint", type=checkpoint(weights=True),
                    help="TF checkpoint (dir or prefix) or PyTorch weights file")
    ap.add_argument("--do_lower_case", action="store_true")
    ap.add_argument("--max_seq_length", type=count(3, 131072), default=128)   # [CLS] a [SEP] at the least
    ap.add_argument("--do_train", action="store_true")
    ap.add_argument("--learning_rate", type=real(above=0, hi=1.0), default=5e-5)
    ap.add_argument("--num_train_epochs", type=real(0.0, 10000.0), default=3.0)
    ap.add_argument("--warmup_proportion", type=real(0.0, 1.0), default=0.1)
    ap.add_argument("--train_batch_size", type=count(1, 65536), default=32,
                    help="examples per optimizer step, over all processes (torchrun) and accumulation steps")
    ap.add_argument("--gradient_accumulation_steps", type=count(1, 65536), default=1,
                    help="split each process's share of a train batch into this many forward/backward passes")
    ap.add_argument("--fp16", action="store_true",
                    help="torch.autocast float16 with loss scaling (GradScaler): a step whose gradients overflow is "
                         "skipped, and neither the optimizer's step count nor its schedule moves")
    ap.add_argument("--bf16", action="store_true", help="torch.autocast bfloat16 (no loss scaling needed)")
    ap.add_argument("--optimize_on_cpu", action="store_true",
                    help="keep float32 master weights and Adam's moments in host memory; the model runs on "
                         "--device, its gradients are copied to the host for each step and the weights back")
    ap.add_argument("--local_rank", type=count(-1, 65535), default=-1,
                    help="set by the old torch.distributed.launch; torchrun's LOCAL_RANK is read instead")
    ap.add_argument("--seed", type=count(0, (1 << 32) - 1), default=42)
    ap.add_argument("--hidden_dropout_prob", type=real(0.0, below=1.0), default=None,
                    help="override the config's hidden_dropout_prob (embeddings, layer outputs, and the "
                         "classifier's dropout on the pooled output); default: the config's")
    ap.add_argument("--attention_probs_dropout_prob", type=real(0.0, below=1.0), default=None,
                    help="override the config's attention_probs_dropout_prob; default: the config's")
    ap.add_argument("--no_dropout", action="store_true",
                    help="every dropout 0 (both of the above): deterministic training, as the parity checks "
                         "train; not the official recipe")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu or cuda[:N] (CUDA is untested in this project)")
    ap.add_argument("--no_progress", action="store_true", help="no progress bar on stderr")


DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


def model_config(args) -> BertConfig:
    """``--bert_config_file`` with the command line's dropout overrides applied (bad values: ValueError)."""
    config = BertConfig.from_json_file(args.bert_config_file)
    for name in DROPOUT_FIELDS:
        value = getattr(args, name, None)
        if getattr(args, "no_dropout", False):
            if value not in (None, 0.0):
                raise ValueError(f"--no_dropout with --{name} {value}: choose one")
            value = 0.0
        if value is not None:
            if not 0.0 <= value < 1.0:
                raise ValueError(f"--{name} {value}: must be in [0, 1)")
            setattr(config, name, float(value))
    return config


def initial_classifier(config: BertConfig, num_labels: int, seed: int) -> BertForSequenceClassification:
    """The run's model before the pretrained body is loaded: the new head is drawn from ``seed``."""
    set_seed(seed)
    return BertForSequenceClassification(config, num_labels=num_labels)


def write_train_log(path: str, trained: dict, args) -> None:
    """``train_log.json``: the run's settings and, per optimizer step, the loss (mean over the global batch),
    the learning rate applied (null: an fp16 step skipped) and the examples used (indices into the training
    features, over all processes in rank order). Rank 0 writes it."""
    config = getattr(args, "model_config", None)
    write_json(path, {
        "processes": trained["processes"], "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "train_batch_size": args.train_batch_size, "seed": args.seed, "learning_rate": args.learning_rate,
        "dropout": {name: getattr(config, name, None) for name in DROPOUT_FIELDS},
        **{k: trained[k] for k in ("steps", "warmup_steps", "skipped_steps", "step_losses", "step_lrs",
                                   "step_examples")}}, "train log")


def check_common_args(args, config: BertConfig) -> None:
    if args.max_seq_length > config.max_position_embeddings:
        raise ValueError(f"--max_seq_length {args.max_seq_length} exceeds max_position_embeddings "
                         f"{config.max_position_embeddings} of {args.bert_config_file}")
    distributed.check_batch(args.train_batch_size, args.gradient_accumulation_steps,
                            getattr(args, "world", None) or distributed.World())
    if getattr(args, "fp16", False) and getattr(args, "bf16", False):
        raise ValueError("--fp16 and --bf16: choose one")
    if getattr(args, "fp16", False) and getattr(args, "optimize_on_cpu", False):
        raise ValueError("--fp16 with --optimize_on_cpu: the loss scaler runs on the device; use --bf16, or drop "
                         "--optimize_on_cpu")
    if args.train_batch_size < 1 or args.num_train_epochs <= 0 or args.learning_rate <= 0:
        raise ValueError("--train_batch_size, --num_train_epochs and --learning_rate must be positive")
    for name in ("vocab_file", "bert_config_file"):
        if not os.path.isfile(getattr(args, name)):
            raise ValueError(f"--{name} {getattr(args, name)}: no such file")


def train_loop(model, arrays: dict, keys: tuple, args, device, loss_fn, amp: Optional["MixedPrecision"] = None) -> dict:
    """The official training loop; returns {"steps", "loss"} (mean of the last 10 step losses) and, per
    step, "step_losses", "step_lrs" (the learning rate each applied step used, None when skipped) and
    "step_examples" (the example indices the step used, gathered from every process in rank order).
    ``amp``: the mixed precision to use (default: from ``--fp16``/``--bf16``)."""
    n = len(arrays[keys[0]])
    steps = num_train_steps(n, args.train_batch_size, args.num_train_epochs)
    if steps < 1:
        raise ValueError(f"{n} training examples at batch {args.train_batch_size} x {args.num_train_epochs} "
                         "epochs give 0 optimizer steps")
    warmup = num_warmup_steps(steps, args.warmup_proportion)
    world = getattr(args, "world", None) or distributed.World()
    host = HostOptimizer(model) if getattr(args, "optimize_on_cpu", False) else None
    opt = BertAdam(grouped_parameters(host.master if host else model), lr=args.learning_rate,
                   warmup=warmup / steps if warmup else -1, t_total=steps)
    model.train()
    ddp = distributed.wrap(model, world, str(device))
    # Examples per optimizer step over all processes and accumulation steps (the official meaning).
    micro = args.train_batch_size // (world.size * args.gradient_accumulation_steps)
    bar = None if args.no_progress or not world.main else Progress(steps, "train")
    amp = amp or mixed_precision(args, torch.device(device).type)
    losses, lrs, examples, skipped = [], [], [], 0
    for idx in training_batches(n, args.train_batch_size, steps, args.seed):   # the same order in every process
        opt.zero_grad(set_to_none=True)
        mine = distributed.shard(idx, world)
        examples.append(distributed.gather_rows(mine, world).tolist())   # what the step used, over all processes
        parts = [mine[s] for s in micro_batches(len(mine), micro)]
        # Each micro-batch's mean loss weighted by its share of this process's shard; DDP averages the equal
        # shards: the full batch's mean-loss gradient.
        step_loss = accumulate_gradients(
            [lambda part=part, last=(i == len(parts) - 1):
             _micro_loss(ddp, loss_fn, arrays, keys, part, device, last, amp)
             for i, part in enumerate(parts)], [len(part) for part in parts], amp.scaler.scale if amp.scaler else None)
        applied = amp.step(opt) if host is None else host.step(amp, opt)
        skipped += not applied
        lrs.append(opt.last_lr[0] if applied else None)
        losses.append(distributed.mean_over_processes(step_loss, world))
        if bar:
            bar.update(loss=losses[-1], lr=opt.last_lr[0] if opt.last_lr else 0.0)
    return {"steps": steps, "warmup_steps": warmup, "loss": float(np.mean(losses[-10:])),
            "processes": world.size, "skipped_steps": skipped, "optimizer_steps": opt.global_step,
            "step_losses": losses, "step_lrs": lrs, "step_examples": examples}


class HostOptimizer:
    """``--optimize_on_cpu``: the optimizer steps a float32 copy of the parameters in host memory (with its
    Adam moments there too), so a device's memory holds only the model; each step copies the device's
    gradients to the host copy, steps it, and copies the weights back. The same BertAdam on the same float32
    numbers: the result equals the on-device optimizer's (``tests/test_optimization.py`` checks it). Not with
    ``--fp16``: the loss scaler's state lives on the device (refused, exit 2)."""

    def __init__(self, model: torch.nn.Module):
        import copy
        self.model = model
        self.master = copy.deepcopy(model).to("cpu", torch.float32)   # same names, so grouped_parameters agrees
        self.pairs = list(zip(model.parameters(), self.master.parameters()))

    def step(self, amp: "MixedPrecision", opt) -> bool:
        for p, m in self.pairs:   # a copy even where device and dtype already match: never alias the model's
            m.grad = None if p.grad is None else p.grad.detach().to("cpu", torch.float32, copy=True)
            p.grad = None         # the model's gradients are consumed: the next step starts from zero
        applied = amp.step(opt)
        if applied:
            with torch.no_grad():
                for p, m in self.pairs:
                    p.copy_(m.to(p.device, p.dtype))
        return applied


class MixedPrecision:
    """``--fp16``/``--bf16`` with torch.amp: the forward under autocast; for fp16 a GradScaler whose
    unscaling comes before BertAdam's global-norm clipping (clipping scaled gradients would clip at
    scale x the threshold), and whose skipped steps (Inf/NaN gradients) never reach the optimizer, so
    neither its step count nor the learning-rate schedule moves on them."""

    def __init__(self, dtype: Optional[torch.dtype], device_type: str):
        self.dtype, self.device_type = dtype, device_type
        self.scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def step(self, opt) -> bool:
        """One optimizer step; False when fp16's gradients overflowed and the step was skipped."""
        if self.scaler is None:
            opt.step()
            return True
        self.scaler.unscale_(opt)   # BertAdam clips these, the true gradients
        before = opt.global_step
        self.scaler.step(opt)       # calls opt.step() only when every gradient is finite
        self.scaler.update()
        return opt.global_step > before


def mixed_precision(args, device_type: str) -> MixedPrecision:
    """The run's mixed precision; a device (or torch build) without the dtype's kernels is bad input."""
    dtype = torch.float16 if getattr(args, "fp16", False) else torch.bfloat16 if getattr(args, "bf16", False) else None
    amp = MixedPrecision(dtype, device_type)
    if dtype is not None:
        try:   # one tiny forward and backward under autocast, before any real work
            w = torch.ones(3, 4, device=device_type, requires_grad=True)
            with amp.autocast():
                y = torch.nn.functional.linear(torch.ones(2, 4, device=device_type), w)
            (amp.scaler.scale(y.float().sum()) if amp.scaler else y.float().sum()).backward()
        except (RuntimeError, NotImplementedError) as e:
            flag = "--fp16" if dtype == torch.float16 else "--bf16"
            raise ValueError(f"{flag} on {device_type}: this torch build has no such kernels here "
                             f"({str(e).splitlines()[0]})") from None
    return amp


def _micro_loss(model, loss_fn, arrays: dict, keys: tuple, part, device, last: bool, amp) -> torch.Tensor:
    with distributed.no_sync(model, last), amp.autocast():
        return loss_fn(model, [torch.from_numpy(arrays[key][part]).to(device) for key in keys]).float()


def save_model(model, config: BertConfig, output_dir: str) -> str:
    path = os.path.join(output_dir, "pytorch_model.safetensors")
    write_weights(path, model_tensors(model))
    config.to_json_file(os.path.join(output_dir, "bert_config.json"))
    return path


def run(args) -> dict:
    args.world = distributed.world_from_env(getattr(args, "local_rank", None))
    config = args.model_config = model_config(args)
    check_common_args(args, config)
    if not args.do_train and not args.do_eval:
        raise ValueError("at least one of --do_train and --do_eval must be given")
    task = args.task_name.lower()
    if task not in TASKS:
        raise ValueError(f"--task_name {args.task_name}: supported tasks are {sorted(TASKS)}")
    processor = TASKS[task]()
    device = torch.device(distributed.init(args.world, str(resolve_device(args.device))))
    set_seed(args.seed)
    tokenizer = FullTokenizer(args.vocab_file, do_lower_case=args.do_lower_case)
    labels = processor.get_labels()
    model = initial_classifier(config, len(labels), args.seed)
    if args.init_checkpoint:
        load_body(model, load_init_weights(args.init_checkpoint, config))
    model.to(device)
    os.makedirs(args.output_dir, exist_ok=True)
    results = {}
    keys = ("input_ids", "segment_ids", "input_mask", "label_ids")

    def loss_fn(m, b):
        return m(b[0], b[1], b[2], labels=b[3])

    if args.do_train:
        train = glue.features_to_arrays(glue.convert_examples_to_features(
            processor.get_train_examples(args.data_dir), labels, args.max_seq_length, tokenizer))
        trained = train_loop(model, train, keys, args, device, loss_fn)
        results.update({f"train_{k}": v for k, v in trained.items() if not k.startswith("step_")})
        if args.world.main:   # one writer
            save_model(model, config, args.output_dir)
            write_train_log(os.path.join(args.output_dir, "train_log.json"), trained, args)
    distributed.finish(args.world)
    if args.do_eval and args.world.main:
        dev = glue.features_to_arrays(glue.convert_examples_to_features(
            processor.get_dev_examples(args.data_dir), labels, args.max_seq_length, tokenizer))
        model.eval()
        logits = []
        bar = None if args.no_progress else Progress((len(dev["label_ids"]) + args.eval_batch_size - 1)
                                                     // args.eval_batch_size, "eval")
        with torch.no_grad():
            for i in range(0, len(dev["label_ids"]), args.eval_batch_size):
                b = [torch.from_numpy(dev[k][i:i + args.eval_batch_size]).to(device) for k in keys]
                logits.append(model(b[0], b[1], b[2]).float().cpu())
                if bar:
                    bar.update()
        logits = torch.cat(logits)
        eval_loss = float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(dev["label_ids"])))
        metrics = glue.accuracy_and_f1(logits.argmax(-1).numpy(), dev["label_ids"])
        results.update({"eval_accuracy": metrics["accuracy"], "eval_f1": metrics["f1"], "eval_loss": eval_loss,
                        "eval_examples": metrics["n"]})
        write_text(os.path.join(args.output_dir, "eval_results.txt"),
                   "".join(f"{k} = {results[k]}\n" for k in sorted(results)), "eval results")
        buf = io.BytesIO()
        np.save(buf, logits.numpy())
        write_bytes(os.path.join(args.output_dir, "eval_logits.npy"), buf.getvalue(), "eval logits")
    return results


def main(argv: Optional[list[str]] = None) -> int:
    ap = ArgumentParser(prog="python -m bert_torch.run_classifier", description=__doc__.split("\n\n")[0])
    ap.add_argument("--task_name", default="mrpc")
    ap.add_argument("--data_dir", required=True, type=input_dir("data folder"))
    ap.add_argument("--do_eval", action="store_true")
    ap.add_argument("--eval_batch_size", type=count(1, 65536), default=8)
    add_common_args(ap)
    return run_main(lambda: run_and_print(run, ap.parse_args(argv)))


def run_and_print(run_fn, args) -> int:
    """Runs a task, prints its results as `key = value` lines (errors: ``run_main``'s exit codes)."""
    results = run_fn(args)
    if getattr(args, "world", None) is None or args.world.main:   # under torchrun, rank 0 speaks for the job
        for k in sorted(results):
            print(f"{k} = {results[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
