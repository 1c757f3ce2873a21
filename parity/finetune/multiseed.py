"""Multi-seed runs with dropout on: the distribution of dev metrics, both sides, judged by Welch's t
(``tolerances.seed_rule``)."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from parity.finetune.features import take
from parity.finetune.tolerances import SEED_ALPHA, SEED_FLOORS, seed_rule
from parity.sides.refcache import Entry
from parity.finetune.training import _torch_batch, official_run



def dev_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, F1, mean cross-entropy and the fraction predicted positive, of dev logits."""
    from bert_torch.glue import accuracy_and_f1
    z = logits.astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    pred = logits.argmax(-1)
    return {**accuracy_and_f1(pred, labels), "dev_loss": float(-logp[np.arange(len(labels)), labels].mean()),
            "positive_rate": float(pred.mean())}


def seed_verdict(runs: dict) -> tuple[str, dict, bool]:
    """(verdict, seed_rule per metric, degenerate) for {"tf": [dev_metrics...], "torch": [...]}:
    "inconclusive" when every run predicts a single class for the whole dev set."""
    rules = {m: seed_rule([r[m] for r in runs["tf"]], [r[m] for r in runs["torch"]], floor=floor)
             for m, floor in SEED_FLOORS.items()}
    degenerate = all(r["positive_rate"] in (0.0, 1.0) for side in runs.values() for r in side)
    verdict = "inconclusive" if degenerate else "pass" if all(r["passed"] for r in rules.values()) else "fail"
    return verdict, rules, degenerate


def multiseed_check(minilm: dict, train: dict, dev: dict, seeds: list[int], steps: int, batch_size: int,
                    lr: float = 2e-5, warmup_proportion: float = 0.1, device: str = "cpu",
                    log: Callable = lambda s: None) -> dict:
    """Fine-tune with dropout on (the official training graph: body dropout 0.1 and the
    classifier's keep_prob 0.9; PyTorch: the same rates) for each seed on each side; per seed,
    the batches come from a seeded shuffle shared by both sides, the new head from each side's
    own initializer under that seed. Dev accuracy, F1 and mean cross-entropy per run, and
    ``seed_rule`` on each. When every run on both sides predicts one class for the whole dev set
    (too few steps to leave the majority class), the metrics say nothing about training: the
    verdict is then "inconclusive", which the suite counts as not passing."""
    from bert_torch.modeling import BertConfig, BertForSequenceClassification
    from bert_torch.optimization import BertAdam, grouped_parameters
    from bert_torch.weights import model_from_tensors, read_weights
    from reference_tf.finetune import FineTuner
    n = len(train["label_ids"])
    warmup = int(steps * warmup_proportion)
    runs = {"tf": [], "torch": []}
    t0 = time.time()
    # The pretrained body, read once; each seed's model copies it (load_state_dict copies).
    config = BertConfig.from_json_file(minilm["bert_config"])
    body = model_from_tensors(read_weights(minilm["torch_weights"]), config, head=None).state_dict()
    for seed in seeds:
        rng = np.random.default_rng(seed)
        perm = np.concatenate([rng.permutation(n) for _ in range((steps * batch_size) // n + 1)])
        order = [perm[s * batch_size:(s + 1) * batch_size] for s in range(steps)]
        def tf_run(_, seed=seed, order=order) -> Entry:
            with FineTuner(minilm["prefix"], minilm["bert_config"], "classifier", dropout=True, seed=seed,
                           learning_rate=lr, num_train_steps=steps, num_warmup_steps=warmup) as tf_side:
                for idx in order:
                    tf_side.train_step(take(train, idx))
                return Entry(arrays={"logits": np.concatenate([tf_side.predict(take(dev, slice(i, i + 64)))["logits"]
                                                               for i in range(0, len(dev["label_ids"]), 64)])})

        logits = official_run("mrpc-seed", minilm, {"train": train, "dev": dev, "order": order, "seed": seed, "lr": lr,
                                                    "steps": steps, "warmup": warmup}, tf_run).arrays["logits"]
        runs["tf"].append({"seed": seed, **dev_metrics(logits, dev["label_ids"])})
        log(f"seed {seed} tf {runs['tf'][-1]}")
        torch.manual_seed(seed)
        clf = BertForSequenceClassification(config, 2)
        clf.bert.load_state_dict(body)
        clf.dropout.p = 0.1   # run_classifier.create_model's hard-coded keep_prob 0.9
        clf.to(device).train()
        opt = BertAdam(grouped_parameters(clf), lr=lr, warmup=warmup / steps if warmup else -1, t_total=steps)
        for idx in order:
            ids, seg, mask, labels = _torch_batch(take(train, idx), device)
            opt.zero_grad(set_to_none=True)
            clf(ids, seg, mask, labels=labels).backward()
            opt.step()
        clf.eval()
        with torch.no_grad():
            logits = np.concatenate([clf(*_torch_batch(take(dev, slice(i, i + 64)), device)[:3]).cpu().numpy()
                                     for i in range(0, len(dev["label_ids"]), 64)])
        runs["torch"].append({"seed": seed, **dev_metrics(logits, dev["label_ids"])})
        log(f"seed {seed} torch {runs['torch'][-1]}")
    verdict, rules, degenerate = seed_verdict(runs)
    fmt = lambda r: f"TF {r['mean_tf']:.4f}+-{r['std_tf']:.4f} vs PT {r['mean_torch']:.4f}+-{r['std_torch']:.4f}"
    return {"name": "multiseed", "verdict": verdict,
            "summary": ((f"INCONCLUSIVE: every run predicts a single class on all {len(dev['label_ids'])} dev "
                         "pairs; train longer (--seed-steps). " if degenerate else "")
                        + f"{len(seeds)} seeds per side, dropout on, {steps} steps of batch {batch_size} x "
                        f"{train['input_ids'].shape[1]} at lr {lr:g}: accuracy {fmt(rules['accuracy'])}, "
                        f"F1 {fmt(rules['f1'])}, dev loss {fmt(rules['dev_loss'])}"),
            "rule": (f"Welch's t-test at alpha {SEED_ALPHA:g}/{len(SEED_FLOORS)} per metric (family-wise "
                     f"{SEED_ALPHA:g}): |mean_pt - mean_tf| <= max(t_crit * sqrt(s_tf^2/n + s_pt^2/n), floor) for dev "
                     f"accuracy (floor {SEED_FLOORS['accuracy']:g}), F1 (floor {SEED_FLOORS['f1']:g}) and mean "
                     f"dev cross-entropy (floor {SEED_FLOORS['dev_loss']:g} nats); inconclusive (not a pass) when "
                     "every run predicts one class"),
            "steps": steps, "batch_size": batch_size, "seq_len": int(train["input_ids"].shape[1]),
            "learning_rate": lr, "metrics": rules, "runs": runs, "seconds": round(time.time() - t0, 1)}
