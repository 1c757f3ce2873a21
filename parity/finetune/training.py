"""Gradients and deterministic training, TF against PyTorch: dropout 0, identical initial weights and
batches; per-variable gradients, per-step losses, dev predictions, and the TF-trained model converted."""
from __future__ import annotations

import os
import time
from typing import Callable, Optional

import numpy as np
import torch

from parity.sides.refcache import Entry, File, checkpoint_files, reference
from parity.finetune.features import squad_arrays, take
from parity.finetune.tolerances import (
    GRAD_ATOL,
    GRAD_COS,
    GRAD_RTOL,
    LOSS_DRIFT,
    LOSS_REPORT,
    LOSS_RTOL,
    LR_ATOL,
    LR_RTOL,
    gradient_row,
    loss_agreement,
    loss_tolerance,
)

# The new heads' TF names -> bert_torch names, per task.
HEAD_NAMES = {"classifier": {"output_weights": "classifier.weight", "output_bias": "classifier.bias"},
              "squad": {"cls/squad/output_weights": "qa_outputs.weight", "cls/squad/output_bias": "qa_outputs.bias"}}


def torch_model(minilm: dict, head_tf: dict, task: str = "classifier", device: str = "cpu"):
    """The PyTorch MiniLM with the given (TF-named) new head, in train mode with every dropout 0."""
    from bert_torch.modeling import BertConfig
    from bert_torch.weights import model_from_tensors, read_weights
    config = BertConfig.from_json_file(minilm["bert_config"])
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    tensors = dict(read_weights(minilm["torch_weights"]))
    # Copies: the model's parameters share memory with the arrays they are built from, and
    # training must not change the caller's head.
    tensors.update({pt: np.array(head_tf[tf], dtype=np.float32, copy=True) for tf, pt in HEAD_NAMES[task].items()})
    model = model_from_tensors(tensors, config, head=task, num_labels=2, device=device)
    if task == "classifier":
        model.dropout.p = 0.0   # the classifier's own dropout is not a config field
    return model.train()


def _torch_batch(batch: dict, device: str) -> list:
    return [torch.from_numpy(np.asarray(batch[k])).long().to(device)
            for k in ("input_ids", "segment_ids", "input_mask", "label_ids")]


def _torch_loss(model, batch: dict, device: str):
    """The training loss of a classifier (label_ids) or SQuAD (start/end_positions) batch."""
    if "start_positions" in batch:
        ids, seg, mask, sp, ep = (torch.from_numpy(np.asarray(batch[k])).long().to(device) for k in
                                  ("input_ids", "segment_ids", "input_mask", "start_positions", "end_positions"))
        return model(ids, seg, mask, start_positions=sp, end_positions=ep)
    ids, seg, mask, labels = _torch_batch(batch, device)
    return model(ids, seg, mask, labels=labels)


def torch_gradients(model, batch: dict, device: str = "cpu", micro: Optional[int] = None,
                    per_micro_mean: bool = False) -> tuple[float, dict]:
    """(loss, dLoss/dθ by TF name, in TF layout) by autograd; with ``micro``, accumulated over
    micro-batches of that many rows (``bert_torch.optimization.accumulate_gradients``, what the runners
    do). ``per_micro_mean`` plants the classic fault instead: each micro-batch's mean loss divided by the
    number of micro-batches."""
    from bert_torch.convert import file_to_tf_name
    from bert_torch.optimization import accumulate_gradients, micro_batches
    from bert_torch.weights import file_name
    model.zero_grad(set_to_none=True)
    n = len(batch["input_ids"])
    parts = micro_batches(n, micro or n)
    sizes = [p.stop - p.start for p in parts]
    if per_micro_mean:
        sizes = [1] * len(parts)   # equal weights 1/k whatever each micro-batch holds
    loss = accumulate_gradients([lambda p=p: _torch_loss(model, take(batch, p), device) for p in parts], sizes)
    out = {}
    for name, p in model.named_parameters():
        if p.grad is None:   # not reached by the loss (the pooler under the SQuAD head); TF gives None too
            continue
        tf_name, transpose = file_to_tf_name(file_name(name))
        g = p.grad.detach().cpu().numpy()
        out[tf_name] = np.ascontiguousarray(g.T if transpose else g)   # [out, in] -> TF kernel [in, out]
    return float(loss), out


def tf_gradients(minilm: dict, batch: dict, task: str = "classifier") -> tuple[dict, float, dict]:
    """(new head's TF variables, loss, dLoss/dθ) of the official graph on the whole batch."""
    from reference_tf.finetune import FineTuner

    def tf_run(_) -> Entry:
        with FineTuner(minilm["prefix"], minilm["bert_config"], task, dropout=False, seed=0) as tf_side:
            head = {k: v for k, v in tf_side.variables().items() if not k.startswith("bert/")}
            tf_loss, tf_grads = tf_side.gradients(batch)
        return Entry(arrays={**{f"head/{k}": v for k, v in head.items()},
                             **{f"grad/{k}": v for k, v in tf_grads.items()}}, values={"loss": tf_loss})

    tf = official_run("gradients", minilm, {"batch": batch, "task": task}, tf_run)
    pick = lambda prefix: {k[len(prefix):]: v for k, v in tf.arrays.items() if k.startswith(prefix)}  # noqa: E731
    return pick("head/"), float(tf.values["loss"]), pick("grad/")


def official_run(kind: str, minilm: dict, parts: dict, compute: Callable[[str], Entry]) -> Entry:
    """A run of the official graph on ``minilm``'s checkpoint, through the TF reference cache when one is
    active (``parity.sides.refcache``): keyed by the checkpoint and config files, ``parts`` (the batches, sizes,
    rates) and the source of ``compute`` and of ``take``, which cuts its batches."""
    parts = {"checkpoint": checkpoint_files(minilm["prefix"]), "bert_config": File(minilm["bert_config"]), **parts}
    return reference(kind, parts, compute, code=(compute, take))


def gradient_check(minilm: dict, batch: dict, device: str = "cpu", task: str = "classifier",
                   micro: Optional[int] = None, per_micro_mean: bool = False, tf: Optional[tuple] = None) -> dict:
    """dLoss/dθ of every variable for one batch: TF ``tf.gradients`` vs PyTorch autograd, MiniLM
    with the classifier (``task="classifier"``, MRPC batch) or SQuAD head (``task="squad"``,
    batch with start/end_positions), dropout 0, identical weights (the head drawn by TF's
    initializer). Under the SQuAD head the pooler gets no gradient on either side.

    ``micro``: PyTorch accumulates micro-batches of that many rows (the last may be shorter) while TF
    takes the whole batch in one step: gradient accumulation must compute the official step
    (``per_micro_mean`` plants the classic fault). ``tf``: ``tf_gradients``' result, to reuse."""
    t0 = time.time()
    head, tf_loss, tf_grads = tf or tf_gradients(minilm, batch, task)
    model = torch_model(minilm, head, task, device)
    pt_loss, pt_grads = torch_gradients(model, batch, device, micro, per_micro_mean)
    rows = [gradient_row(name, pt_grads.get(name), g_tf) for name, g_tf in tf_grads.items()]
    rows.sort(key=lambda r: -r.get("tol_ratio", np.inf))   # worst first: the error as a fraction of the allowed
    missing = sorted(set(pt_grads) - set(tf_grads))
    ok = all(r["passed"] for r in rows) and not missing and len(rows) == len(pt_grads)
    loss_rel = abs(pt_loss - tf_loss) / abs(tf_loss)
    name = "gradients" if task == "classifier" else f"gradients_{task}"
    return {"name": name + (f"_accumulated_{micro}" if micro else ""), "verdict": "pass" if ok else "fail",
            "task": task, "micro_batch": micro,
            "summary": (f"{'MRPC classifier' if task == 'classifier' else 'SQuAD'}: {len(rows)} variables, "
                        f"batch {tuple(batch['input_ids'].shape)}"
                        + (f" (PyTorch: micro-batches of {micro}"
                           + (", each loss / their number (planted fault)" if per_micro_mean else "") + ")"
                           if micro else "") + ": worst "
                        f"{rows[0]['variable']} max|diff| {rows[0].get('max_abs_diff', float('nan')):.3g} "
                        f"({rows[0].get('tol_ratio', float('nan')):.2g} of its tolerance); loss rel diff {loss_rel:.2g}"),
            "loss_tf": tf_loss, "loss_torch": pt_loss, "table": rows, "extra_torch_variables": missing,
            "tolerance": {"rtol_of_max": GRAD_RTOL, "atol": GRAD_ATOL, "min_cosine": GRAD_COS},
            "seconds": round(time.time() - t0, 2)}


def torch_training(minilm: dict, head: dict, train: dict, order: list, lr: float, warmup: int,
                   device: str = "cpu", task: str = "classifier", log: Callable = lambda s: None):
    """(model, per-step losses, per-step learning rates): the PyTorch side of a deterministic run
    (dropout 0, BertAdam, the official schedule), batches ``train[order[t]]``."""
    from bert_torch.optimization import BertAdam, grouped_parameters
    steps = len(order)
    model = torch_model(minilm, head, task, device)
    opt = BertAdam(grouped_parameters(model), lr=lr, warmup=warmup / steps if warmup else -1, t_total=steps)
    losses, lrs = [], []
    for s, idx in enumerate(order):
        opt.zero_grad(set_to_none=True)
        loss = _torch_loss(model, take(train, idx), device)
        loss.backward()
        lrs.append(opt.get_lr()[0])
        opt.step()
        losses.append(float(loss.detach()))
        log(f"{task} torch step {s + 1}/{steps} loss {losses[-1]:.5f}")
    return model, losses, lrs


def cycled_order(n: int, steps: int, batch_size: int) -> list:
    """The deterministic runs' batches: the features in file order, cycled (the official input_fn
    without shuffling)."""
    return [np.arange(s * batch_size, (s + 1) * batch_size) % n for s in range(steps)]


def training_check(minilm: dict, train: dict, dev: dict, steps: int, batch_size: int, lr: float = 2e-5,
                   warmup_proportion: float = 0.1, device: str = "cpu", log: Callable = lambda s: None,
                   convert_dir: Optional[str] = None) -> dict:
    """Deterministic fine-tuning, TF against PyTorch: dropout 0, identical initial weights (TF's
    head init copied), the same batches in the same order (the train features in file order,
    cycled, as the official input_fn without shuffling), ``steps`` optimizer steps from the
    official schedule; per-step losses and final dev accuracy/F1.

    With ``convert_dir``, the TF-fine-tuned model is also saved as an official checkpoint (with
    its Adam slots and global_step), converted by ``bert_torch.convert`` and evaluated in PyTorch:
    the fraction of dev predictions identical to TF's and the metric deltas go in "conversion"."""
    from bert_torch.glue import accuracy_and_f1
    from reference_tf.finetune import FineTuner
    n = len(train["label_ids"])
    order = cycled_order(n, steps, batch_size)
    warmup = int(steps * warmup_proportion)
    result = {"steps": steps, "batch_size": batch_size, "seq_len": int(train["input_ids"].shape[1]),
              "learning_rate": lr, "warmup_steps": warmup, "train_examples": n, "dev_examples": len(dev["label_ids"])}
    t0 = time.time()

    def tf_run(out_dir: str) -> Entry:
        with FineTuner(minilm["prefix"], minilm["bert_config"], "classifier", dropout=False, seed=0,
                       learning_rate=lr, num_train_steps=steps, num_warmup_steps=warmup) as tf_side:
            head = {k: v for k, v in tf_side.variables().items() if k in ("output_weights", "output_bias")}
            tf_losses, tf_lrs = [], []
            for s, idx in enumerate(order):
                loss, used = tf_side.train_step(take(train, idx))
                tf_losses.append(loss)
                tf_lrs.append(used)
                log(f"tf step {s + 1}/{steps} loss {loss:.5f}")
            tf_logits = np.concatenate([tf_side.predict(take(dev, slice(i, i + 64)))["logits"]
                                        for i in range(0, len(dev["label_ids"]), 64)])
            saved = os.path.basename(tf_side.save(os.path.join(out_dir, "model.ckpt"))) if convert_dir else None
        return Entry(arrays={"logits": tf_logits, **{f"head/{k}": v for k, v in head.items()}},
                     values={"losses": tf_losses, "lrs": tf_lrs, "saved": saved})

    tf = official_run("mrpc-training", minilm, {"train": train, "dev": dev, "order": order, "lr": lr, "steps": steps,
                                                "warmup": warmup, "save": bool(convert_dir)}, tf_run)
    head = {k[5:]: v for k, v in tf.arrays.items() if k.startswith("head/")}
    tf_losses, tf_lrs, tf_logits = tf.values["losses"], tf.values["lrs"], tf.arrays["logits"]
    result["tf_seconds"] = round(time.time() - t0, 1)
    if convert_dir:
        tf_prefix = os.path.join(tf.dir, tf.values["saved"])
        result["conversion"] = conversion_check(tf_prefix, minilm["bert_config"], dev, tf_logits, convert_dir, device)
    t0 = time.time()
    model, pt_losses, pt_lrs = torch_training(minilm, head, train, order, lr, warmup, device, "classifier", log=log)
    model.eval()
    with torch.no_grad():
        pt_logits = np.concatenate([model(*_torch_batch(take(dev, slice(i, i + 64)), device)[:3]).cpu().numpy()
                                    for i in range(0, len(dev["label_ids"]), 64)])
    result["torch_seconds"] = round(time.time() - t0, 1)
    rel, first = loss_agreement(pt_losses, tf_losses)
    tf_pred, pt_pred = tf_logits.argmax(-1), pt_logits.argmax(-1)
    tf_m, pt_m = accuracy_and_f1(tf_pred, dev["label_ids"]), accuracy_and_f1(pt_pred, dev["label_ids"])
    lr_ok = all(abs(a - b) <= LR_RTOL * abs(b) + LR_ATOL * lr for a, b in zip(pt_lrs, tf_lrs))
    tol = loss_tolerance(tf_losses, pt_losses)
    used, worst = tol["used"], tol["worst"]
    ok = tol["passed"] and lr_ok
    result.update({
        "name": "training", "verdict": "pass" if ok else "fail",
        "summary": (f"{steps} MRPC steps (batch {batch_size} x {result['seq_len']}): max relative loss diff "
                    f"{max(rel):.2g}, first step above {LOSS_REPORT:g}: {first}; worst step {worst} uses "
                    f"{used[worst]:.2g} of its tolerance; "
                    f"dev acc TF {tf_m['accuracy']:.4f} / "
                    f"PT {pt_m['accuracy']:.4f}, F1 TF {tf_m['f1']:.4f} / PT {pt_m['f1']:.4f}; "
                    f"{float((tf_pred == pt_pred).mean()):.4f} of dev predictions identical"),
        "max_rel_loss_diff": max(rel), "first_step_rel_diff_above_1e-4": first, "lr_schedule_identical": lr_ok,
        "loss_tf": tf_losses, "loss_torch": pt_losses, "dev_tf": tf_m, "dev_torch": pt_m,
        "dev_predictions_identical": float((tf_pred == pt_pred).mean()),
        "dev_max_abs_logit_diff": float(np.abs(tf_logits - pt_logits).max()),
        "max_abs_loss_diff": tol["max_abs"], "tolerance_used": used.tolist(),
        "tolerance": {"rule": tol["rule"] + "; learning rates equal", "rtol": LOSS_RTOL, "drift": LOSS_DRIFT}})
    return result


def conversion_check(tf_prefix: str, bert_config: str, dev: dict, tf_logits: np.ndarray, out_dir: str,
                     device: str = "cpu") -> dict:
    """Convert a TF-fine-tuned checkpoint with ``python -m bert_torch.convert`` and evaluate it in
    PyTorch on the dev set: identical predictions, max logit difference, accuracy/F1 deltas."""
    from bert_torch import convert
    from bert_torch.glue import accuracy_and_f1
    from bert_torch.modeling import BertConfig
    from bert_torch.weights import load_model
    t0 = time.time()
    weights = os.path.join(out_dir, "finetuned.safetensors")
    code = convert.main(["--tf-checkpoint", tf_prefix, "--bert-config", bert_config, "--output", weights])
    if code != 0:
        return {"name": "conversion", "verdict": "fail", "summary": f"bert_torch.convert exited {code}"}
    model = load_model(weights, BertConfig.from_json_file(bert_config), device=device)
    with torch.no_grad():
        pt_logits = np.concatenate([model(*_torch_batch(take(dev, slice(i, i + 64)), device)[:3]).cpu().numpy()
                                    for i in range(0, len(dev["label_ids"]), 64)])
    tf_pred, pt_pred = tf_logits.argmax(-1), pt_logits.argmax(-1)
    tf_m, pt_m = accuracy_and_f1(tf_pred, dev["label_ids"]), accuracy_and_f1(pt_pred, dev["label_ids"])
    same = float((tf_pred == pt_pred).mean())
    diff = float(np.abs(tf_logits - pt_logits).max())
    ok = same == 1.0 and diff <= 1e-4
    return {"name": "conversion", "verdict": "pass" if ok else "fail",
            "summary": (f"TF-fine-tuned MRPC model converted and run in PyTorch: {same:.4f} of "
                        f"{len(tf_pred)} dev predictions identical, max |logit diff| {diff:.3g}, "
                        f"accuracy delta {pt_m['accuracy'] - tf_m['accuracy']:+.4f}, F1 delta {pt_m['f1'] - tf_m['f1']:+.4f}"),
            "dev_tf": tf_m, "dev_torch": pt_m, "identical_predictions": same, "max_abs_logit_diff": diff,
            "tolerance": {"identical_predictions": 1.0, "max_abs_logit_diff": 1e-4},
            "seconds": round(time.time() - t0, 1)}


def squad_training_check(minilm: dict, train_file: str, dev_file: str, steps: int, batch_size: int,
                         seq_len: int = 128, doc_stride: int = 64, dev_limit: Optional[int] = 200,
                         lr: float = 3e-5, warmup_proportion: float = 0.1, device: str = "cpu",
                         convert_dir: Optional[str] = None, log: Callable = lambda s: None) -> dict:
    """Deterministic SQuAD v1.1 fine-tuning, TF (run_squad.create_model + its model_fn loss +
    create_optimizer) against PyTorch (BertForQuestionAnswering + BertAdam): dropout 0, the same
    initial weights and batches; per-step losses, then dev EM/F1 through write_predictions and the
    v1.1 metrics for both, the fraction of identical answers; with ``convert_dir`` also the
    TF-trained model converted by bert_torch.convert and run in PyTorch."""
    from bert_torch import squad
    from reference_tf.finetune import FineTuner
    _, _, train = squad_arrays(train_file, minilm["vocab"], True, seq_len, doc_stride)
    dev_ex, dev_f, dev = squad_arrays(dev_file, minilm["vocab"], False, seq_len, doc_stride, limit=dev_limit)
    n = len(train["input_ids"])
    order = cycled_order(n, steps, batch_size)
    warmup = int(steps * warmup_proportion)
    wanted = {e.qas_id for e in dev_ex}
    dataset = [{"paragraphs": [{"qas": [q for q in p["qas"] if q["id"] in wanted]} for p in a["paragraphs"]]}
               for a in squad.read_dataset(dev_file)]

    def answers(start, end):
        raw = [squad.RawResult(f.unique_id, list(map(float, s)), list(map(float, e)))
               for f, s, e in zip(dev_f, start, end)]
        preds, _ = squad.write_predictions(dev_ex, dev_f, raw, 20, 30, True)
        return preds, squad.evaluate(dataset, preds)

    def pt_logits(model):
        out_s, out_e = [], []
        with torch.no_grad():
            for i in range(0, len(dev["input_ids"]), 32):
                b = [torch.from_numpy(dev[k][i:i + 32]).to(device) for k in ("input_ids", "segment_ids", "input_mask")]
                s_, e_ = model(*b)
                out_s.append(s_.cpu().numpy())
                out_e.append(e_.cpu().numpy())
        return np.concatenate(out_s), np.concatenate(out_e)

    t0 = time.time()

    def tf_run(out_dir: str) -> Entry:
        with FineTuner(minilm["prefix"], minilm["bert_config"], "squad", dropout=False, seed=0, learning_rate=lr,
                       num_train_steps=steps, num_warmup_steps=warmup) as tf_side:
            head = {k: v for k, v in tf_side.variables().items() if k.startswith("cls/squad/")}
            tf_losses = []
            for s_i, idx in enumerate(order):
                tf_losses.append(tf_side.train_step(take(train, idx))[0])
                log(f"squad tf step {s_i + 1}/{steps} loss {tf_losses[-1]:.5f}")
            outs = [tf_side.predict(take(dev, slice(i, i + 32))) for i in range(0, len(dev["input_ids"]), 32)]
            saved = os.path.basename(tf_side.save(os.path.join(out_dir, "squad.ckpt"))) if convert_dir else None
        return Entry(arrays={"start": np.concatenate([o["start_logits"] for o in outs]),
                             "end": np.concatenate([o["end_logits"] for o in outs]),
                             **{f"head/{k}": v for k, v in head.items()}},
                     values={"losses": tf_losses, "saved": saved})

    tf = official_run("squad-training", minilm, {"train": train, "dev": dev, "order": order, "lr": lr, "steps": steps,
                                                 "warmup": warmup, "save": bool(convert_dir)}, tf_run)
    head = {k[5:]: v for k, v in tf.arrays.items() if k.startswith("head/")}
    tf_losses, tf_start, tf_end = tf.values["losses"], tf.arrays["start"], tf.arrays["end"]
    tf_prefix = os.path.join(tf.dir, tf.values["saved"]) if convert_dir else None
    tf_seconds = time.time() - t0
    t0 = time.time()
    model, pt_losses, _ = torch_training(minilm, head, train, order, lr, warmup, device, "squad", log=log)
    model.eval()
    pt_start, pt_end = pt_logits(model)
    pt_seconds = time.time() - t0
    tf_pred, tf_m = answers(tf_start, tf_end)
    pt_pred, pt_m = answers(pt_start, pt_end)
    same = float(np.mean([tf_pred[q] == pt_pred[q] for q in tf_pred]))
    rel, first = loss_agreement(pt_losses, tf_losses)
    tol = loss_tolerance(tf_losses, pt_losses)
    ok = tol["passed"]
    result = {"name": "squad_training", "verdict": "pass" if ok else "fail",
              "summary": (f"{steps} SQuAD steps (batch {batch_size} x {seq_len}, doc_stride {doc_stride}): max relative "
                          f"loss diff {max(rel):.2g}, first step above {LOSS_REPORT:g}: {first}; worst step "
                          f"{tol['worst']} uses {tol['used'][tol['worst']]:.2g} of its tolerance; dev ({len(dev_ex)} "
                          f"questions) EM TF {tf_m['exact_match']:.2f} / PT {pt_m['exact_match']:.2f}, F1 TF "
                          f"{tf_m['f1']:.2f} / PT {pt_m['f1']:.2f}; {same:.4f} of answers identical"),
              "max_rel_loss_diff": max(rel), "first_step_rel_diff_above_1e-4": first, "loss_tf": tf_losses,
              "max_abs_loss_diff": tol["max_abs"], "tolerance_used": tol["used"].tolist(),
              "tolerance": {"rule": tol["rule"]},
              "loss_torch": pt_losses, "dev_tf": tf_m, "dev_torch": pt_m, "identical_answers": same,
              "train_features": n, "dev_questions": len(dev_ex), "dev_features": len(dev_f),
              "tf_seconds": round(tf_seconds, 1), "torch_seconds": round(pt_seconds, 1)}
    if convert_dir:
        result["conversion"] = squad_conversion_check(tf_prefix, minilm["bert_config"], convert_dir, device, pt_logits,
                                                      answers, tf_pred, tf_m, tf_start, tf_end)
    return result


def squad_conversion_check(tf_prefix: str, bert_config: str, convert_dir: str, device: str, pt_logits: Callable,
                           answers: Callable, tf_pred: dict, tf_m: dict, tf_start, tf_end) -> dict:
    """The TF-fine-tuned SQuAD model converted by bert_torch.convert and run in PyTorch: every dev answer
    identical to TF's, logits within 1e-4."""
    from bert_torch import convert
    from bert_torch.modeling import BertConfig
    from bert_torch.weights import load_model
    weights = os.path.join(convert_dir, "squad.safetensors")
    code = convert.main(["--tf-checkpoint", tf_prefix, "--bert-config", bert_config, "--output", weights])
    if code != 0:
        return {"name": "conversion_squad", "verdict": "fail", "summary": f"convert exited {code}"}
    c_start, c_end = pt_logits(load_model(weights, BertConfig.from_json_file(bert_config), device=device))
    c_pred, c_m = answers(c_start, c_end)
    c_same = float(np.mean([tf_pred[q] == c_pred[q] for q in tf_pred]))
    diff = float(max(np.abs(c_start - tf_start).max(), np.abs(c_end - tf_end).max()))
    c_ok = c_same == 1.0 and diff <= 1e-4
    return {
        "name": "conversion_squad", "verdict": "pass" if c_ok else "fail",
        "summary": (f"TF-fine-tuned SQuAD model converted and run in PyTorch: {c_same:.4f} of {len(tf_pred)} "
                    f"dev answers identical, max |logit diff| {diff:.3g}, EM delta "
                    f"{c_m['exact_match'] - tf_m['exact_match']:+.2f}, F1 delta {c_m['f1'] - tf_m['f1']:+.2f}"),
        "dev_tf": tf_m, "dev_torch": c_m, "identical_answers": c_same, "max_abs_logit_diff": diff}
