"""Random checkpoints in Google's format, written by the official graph itself."""
from __future__ import annotations

import json
import os
from typing import Optional

import tensorflow.compat.v1 as tf1
from bert import optimization

from bert_torch._io import read_bytes

from ._official import OFFICIAL_CONFIG_FIELDS, build, building, load_config, modeling, official_config, run_module
from ._taps import find_taps


def write_random_checkpoint(out_dir: str, bert_config: dict | str, *, seed: int = 0, head: Optional[str] = None,
                            num_labels: int = 2, pretraining_heads: bool = False, optimizer_slots: bool = False,
                            vocab_file: Optional[str] = None, perturb: float = 0.0) -> str:
    """Write out_dir/bert_model.ckpt (+ bert_config.json, vocab.txt) from the official graph.

    ``bert_config`` is a dict (or a bert_config.json path); the written bert_config.json holds
    the official fields only, with BertConfig's defaults for those not given.

    The graph is BertModel plus the requested head; ``pretraining_heads`` adds the official
    cls/predictions and cls/seq_relationship variables, ``optimizer_slots`` the official
    AdamWeightDecay adam_m/adam_v slots and global_step. Variables take the official
    initializers under graph-level ``seed``. Those set biases to 0 and LayerNorm gamma/beta to
    1/0, which hides bias and gamma/beta mix-ups; ``perturb`` > 0 adds seeded N(0, perturb)
    noise to every model variable so that no parameter is trivial. Returns the prefix.
    """
    raw = load_config(bert_config)
    config, _ = official_config(raw)
    built = build(config, head, num_labels, seed=seed)
    taps = find_taps(built, config, head, num_labels)
    losses = [built.loss]
    with building(built.graph):
        if pretraining_heads:
            pretraining = run_module("run_pretraining")
            table = next(v for v in tf1.global_variables() if v.op.name == "bert/embeddings/word_embeddings")
            # One masked position and next-sentence label per example: enough to create the
            # heads' variables, which are all this graph is for.
            positions = tf1.zeros_like(built.input_ids[:, :1])
            mlm_loss, _, _ = pretraining.get_masked_lm_output(
                config, taps[f"layer_{config.num_hidden_layers - 1}/output"].tensor, table,
                positions, positions, tf1.ones_like(positions, dtype=tf1.float32))
            nsp_loss, _, _ = pretraining.get_next_sentence_output(
                config, taps["pooler/output"].tensor, labels=positions[:, 0])
            losses += [mlm_loss, nsp_loss]
        noise = []
        if perturb > 0:
            noise = [v.assign_add(tf1.random.normal(v.shape, stddev=perturb)) for v in tf1.trainable_variables()]
        if optimizer_slots:
            # create_optimizer makes slots only for variables that get a gradient, so the loss
            # over the built heads gives the slot set that training those heads gives.
            optimization.create_optimizer(tf1.add_n(losses), init_lr=1e-4, num_train_steps=10,
                                          num_warmup_steps=1, use_tpu=False)
        init = tf1.global_variables_initializer()
        saver = tf1.train.Saver(tf1.global_variables())
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, "bert_model.ckpt")
    with tf1.Session(graph=built.graph) as session:
        session.run(init)
        session.run(noise)
        saver.save(session, prefix)
    defaults = modeling.BertConfig(vocab_size=raw["vocab_size"]).to_dict()
    with open(os.path.join(out_dir, "bert_config.json"), "w", encoding="utf-8") as f:
        json.dump({k: raw.get(k, defaults[k]) for k in OFFICIAL_CONFIG_FIELDS}, f, indent=2)
    if vocab_file is not None:   # read_bytes, not a file copy: a regular file only, bounded by its size
        with open(os.path.join(out_dir, "vocab.txt"), "wb") as f:
            f.write(read_bytes(vocab_file, "vocab"))
    return prefix
