"""Fine-tuning with the official code, driven by a plain TF1 session loop (no Estimator exists any more).

The model is ``run_classifier.create_model`` / ``run_squad.create_model`` and the training op
``optimization.create_optimizer``, unmodified; this module only feeds batches, restores the
body from ``init_checkpoint`` the official way (``get_assignment_map_from_checkpoint`` +
``init_from_checkpoint``) and reads results out.

The global_step race. ``create_optimizer`` computes the learning rate from ``global_step`` and
groups the parameter updates with ``global_step.assign(global_step + 1)`` with no control
dependency between the read and the increment, so which one the executor runs first is not
defined: the rate a step uses is lr(t) or lr(t + 1). The code's comments intend lr(t) at step t
(a zero first step under warmup). Both outcomes have been measured under TF 2, varying from run to
run (always lr(t + 1) with one inter-op thread); in this project's runs (TF 2.21, small graphs and
a 2-layer BERT, 1 and default inter-op threads) every step happened to use lr(t). An order that
depends on the executor is not a reference, so ``OfficialOptimizer`` and ``FineTuner`` (with
``order="intended"``, the default) make it deterministic without touching the official graph:
every read of ``global_step`` is fed the step number t in the same ``session.run``, so lr(t) is
used and the variable still ends at t + 1. ``global_step_order()`` reports the graph's ordering
("unordered" for the official graph; tests/test_optimization.py keeps that visible).
``order="as_built"`` runs the graph as the official code leaves it, to show the race.
"""
from __future__ import annotations

import contextlib
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow.compat.v1 as tf1
from bert import optimization

from ._errors import ReferenceError
from ._official import building, check_checkpoint_files, first_line, load_config, modeling, official_config, run_module

ORDERS = ("intended", "as_built")


@contextlib.contextmanager
def _recording_learning_rate(found: list):
    """create_optimizer does not return its learning-rate tensor; record the one it hands to
    AdamWeightDecayOptimizer (its constructor, wrapped for the build, only remembers it)."""
    cls = optimization.AdamWeightDecayOptimizer
    original = cls.__init__

    # The class itself must stay in place: its __init__ calls super(AdamWeightDecayOptimizer, self).
    def recording_init(self, learning_rate, *args, **kwargs):
        found.append(learning_rate)
        original(self, learning_rate, *args, **kwargs)

    cls.__init__ = recording_init
    try:
        yield
    finally:
        cls.__init__ = original


def _handle(variable):
    """The tensor every read and assignment of a variable consumes (resource handle or ref)."""
    return variable.handle if hasattr(variable, "handle") else variable._ref()


def _create_optimizer(loss, init_lr: float, num_train_steps: int, num_warmup_steps: int):
    """The official create_optimizer; returns (train_op, learning-rate tensor, global_step, its reads)."""
    found: list = []
    with _recording_learning_rate(found):
        train_op = optimization.create_optimizer(loss, init_lr, num_train_steps, num_warmup_steps, False)
    global_step = tf1.train.get_global_step()
    handle = _handle(global_step)
    reads = [op.outputs[0] for op in global_step.graph.get_operations()
             if op.type in ("ReadVariableOp", "Identity") and op.inputs and op.inputs[0] is handle]
    if not reads:
        raise ReferenceError("create_optimizer: found no read of global_step to order")
    return train_op, found[0], global_step, reads



def _session(graph, init, inter_op_threads=None, intra_op_threads=None):
    """A session on ``graph`` with the given thread counts (None: TF's default), initialised."""
    config = tf1.ConfigProto()
    if inter_op_threads:
        config.inter_op_parallelism_threads = inter_op_threads
    if intra_op_threads:
        config.intra_op_parallelism_threads = intra_op_threads
    session = tf1.Session(graph=graph, config=config)
    session.run(init)
    return session

class _Trainer:
    """Shared session plumbing: a graph, its optimizer, step feeding in the intended order."""

    order = "intended"

    def _step_feed(self, step: int) -> dict:
        if self.order == "intended":
            return {t: np.asarray(step, dtype=t.dtype.as_numpy_dtype) for t in self._gs_reads}
        return {}

    def global_step_order(self) -> str:
        """How the built graph orders the learning rate's read of global_step against its
        increment: "read first", "increment first", or "unordered" (the official graph: a race)."""
        def ancestors(op):
            seen, todo = set(), [op]
            while todo:
                o = todo.pop()
                for parent in [t.op for t in o.inputs] + list(o.control_inputs):
                    if parent not in seen:
                        seen.add(parent)
                        todo.append(parent)
            return seen
        increments = [op for op in self.graph.get_operations()
                      if op.type in ("AssignVariableOp", "Assign", "AssignAddVariableOp")
                      and op.inputs and op.inputs[0] is _handle(self.global_step)]
        lr_ops = ancestors(self.learning_rate.op)
        lr_reads = [t.op for t in self._gs_reads if t.op in lr_ops]
        if any(op in lr_ops for op in increments):
            return "increment first"
        if increments and all(any(r in ancestors(inc) for r in lr_reads) for inc in increments):
            return "read first"
        return "unordered"

    def close(self) -> None:
        if getattr(self, "session", None) is not None:
            self.session.close()
            self.session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OfficialOptimizer(_Trainer):
    """``create_optimizer`` over given variables, with the gradients fed from outside.

    ``variables`` maps TF names to initial values. The loss is ``sum_v reduce_sum(v * g_v)``
    with ``g_v`` fed, so ``tf.gradients`` inside create_optimizer yields exactly ``g_v``; from
    there on every op is the official one (global-norm clipping, schedule, AdamWeightDecay).
    """

    def __init__(self, variables: Mapping[str, np.ndarray], init_lr: float, num_train_steps: int,
                 num_warmup_steps: int, order: str = "intended", inter_op_threads: Optional[int] = None):
        if order not in ORDERS:
            raise ReferenceError(f"order {order!r}: expected one of {ORDERS}")
        self.order = order
        self.graph = tf1.Graph()
        with building(self.graph):
            self._vars, self._grads = {}, {}
            for name, value in variables.items():
                value = np.asarray(value, dtype=np.float32)
                self._vars[name] = tf1.get_variable(name, value.shape, tf1.float32,
                                                    initializer=tf1.constant_initializer(value))
                self._grads[name] = tf1.placeholder(tf1.float32, value.shape, name=f"grad/{name}")
            loss = tf1.add_n([tf1.reduce_sum(v * self._grads[n]) for n, v in self._vars.items()])
            self._train_op, self.learning_rate, self.global_step, self._gs_reads = _create_optimizer(
                loss, init_lr, num_train_steps, num_warmup_steps)
            init = tf1.global_variables_initializer()
        self.session = _session(self.graph, init, inter_op_threads=inter_op_threads)
        self.step = 0

    def apply(self, grads: Mapping[str, np.ndarray]) -> float:
        """One training step with these gradients; returns the learning rate the step used."""
        feed = {self._grads[n]: np.asarray(g, dtype=np.float32) for n, g in grads.items()}
        feed.update(self._step_feed(self.step))
        _, lr = self.session.run([self._train_op, self.learning_rate], feed)
        self.step += 1
        return float(lr)

    def variables(self) -> dict[str, np.ndarray]:
        return self.session.run(self._vars)

    def slots(self) -> dict[str, np.ndarray]:
        """adam_m / adam_v of every variable, by TF name."""
        with self.graph.as_default():
            slots = {v.op.name: v for v in tf1.global_variables() if v.op.name.endswith(("/adam_m", "/adam_v"))}
        return self.session.run(slots)


def _tf_batch(batch: Mapping[str, np.ndarray], placeholders: Mapping[str, object]) -> dict:
    missing = sorted(set(placeholders) - set(batch))
    if missing:
        raise ReferenceError(f"batch is missing {missing}")
    return {ph: np.asarray(batch[k], dtype=np.int32) for k, ph in placeholders.items()}


class FineTuner(_Trainer):
    """The official task model + ``create_optimizer`` in a TF1 session.

    ``task`` is ``"classifier"`` (``run_classifier.create_model``; batch keys input_ids,
    input_mask, segment_ids, label_ids) or ``"squad"`` (``run_squad.create_model`` and the loss
    of its model_fn; batch keys input_ids, input_mask, segment_ids, start_positions,
    end_positions). ``dropout=False`` builds the graph with ``is_training=False``: the only way
    to switch off the classifier's hard-coded ``keep_prob=0.9`` dropout without editing it, and
    it also zeroes the body's dropout; ``dropout=True`` builds the training graph as shipped.
    The body is initialised from ``init_checkpoint``; the new head from the official
    initializers under graph seed ``seed``, unless ``head`` gives its values (TF names).
    """

    def __init__(self, init_checkpoint: str, bert_config: dict | str, task: str = "classifier", *,
                 num_labels: int = 2, learning_rate: float = 2e-5, num_train_steps: int = 100,
                 num_warmup_steps: int = 10, dropout: bool = False, seed: int = 0,
                 head: Optional[Mapping[str, np.ndarray]] = None, threads: Optional[int] = None):
        if task not in ("classifier", "squad"):
            raise ReferenceError(f"unknown task {task!r}; expected 'classifier' or 'squad'")
        config, self.description = official_config(load_config(bert_config))
        self.task = task
        self.graph = tf1.Graph()
        with building(self.graph):
            tf1.set_random_seed(seed)
            ph = lambda name, shape=(None, None): tf1.placeholder(tf1.int32, list(shape), name=name)
            self._inputs = {"input_ids": ph("input_ids"), "input_mask": ph("input_mask"),
                            "segment_ids": ph("segment_ids")}
            ids, mask, seg = (self._inputs[k] for k in ("input_ids", "input_mask", "segment_ids"))
            if task == "classifier":
                self._labels = {"label_ids": ph("label_ids", (None,))}
                self.loss, _, logits, _ = run_module("run_classifier").create_model(
                    config, dropout, ids, mask, seg, self._labels["label_ids"], num_labels, False)
                self._outputs = {"logits": logits}
            else:
                self._labels = {"start_positions": ph("start_positions", (None,)),
                                "end_positions": ph("end_positions", (None,))}
                start, end = run_module("run_squad").create_model(config, dropout, ids, mask, seg, False)
                seq_length = modeling.get_shape_list(ids)[1]

                # run_squad.model_fn's compute_loss, which lives inside model_fn and cannot be imported.
                def compute_loss(logits, positions):
                    one_hot = tf1.one_hot(positions, depth=seq_length, dtype=tf1.float32)
                    return -tf1.reduce_mean(tf1.reduce_sum(one_hot * tf1.nn.log_softmax(logits, axis=-1), axis=-1))

                self.loss = (compute_loss(start, self._labels["start_positions"])
                             + compute_loss(end, self._labels["end_positions"])) / 2.0
                self._outputs = {"start_logits": start, "end_logits": end}
            self.tvars = tf1.trainable_variables()
            # The official run_*.model_fn initialisation from the pretrained checkpoint.
            check_checkpoint_files(init_checkpoint)
            try:
                assignment, _ = modeling.get_assignment_map_from_checkpoint(self.tvars, init_checkpoint)
                tf1.train.init_from_checkpoint(init_checkpoint, assignment)
            except (tf1.errors.OpError, ValueError) as e:
                raise ReferenceError(f"cannot initialise from {init_checkpoint}: {first_line(e)}") from None
            # Embedding lookups give IndexedSlices gradients; densified (summing repeated rows),
            # which is what clip_by_global_norm and the optimizer see too.
            # Variables the loss does not reach (the pooler, under the squad head) get None, which
            # the official optimizer skips; so do we (and BertAdam skips params without .grad).
            pairs = [(v, g) for v, g in zip(self.tvars, tf1.gradients(self.loss, self.tvars)) if g is not None]
            self._grad_vars = [v for v, _ in pairs]
            self._grads = [tf1.convert_to_tensor(g) for _, g in pairs]
            self._train_op, self.learning_rate, self.global_step, self._gs_reads = _create_optimizer(
                self.loss, learning_rate, num_train_steps, num_warmup_steps)
            init = tf1.global_variables_initializer()
            # Built with the graph: a Saver made later, outside the build context, fails on
            # resource variables under TF 2.
            self._saver = tf1.train.Saver(tf1.global_variables())
        self.session = _session(self.graph, init, intra_op_threads=threads)
        self.step = 0
        self._by_name = {v.op.name: v for v in self.tvars}
        if head:
            self.load(head)

    def load(self, values: Mapping[str, np.ndarray]) -> None:
        """Set variables (TF names) to given values."""
        for name, value in values.items():
            if name not in self._by_name:
                raise ReferenceError(f"no trainable variable {name} in the {self.task} graph")
            var = self._by_name[name]
            if list(np.shape(value)) != var.shape.as_list():
                raise ReferenceError(f"variable {name}: value of shape {list(np.shape(value))}, "
                                     f"the graph has {var.shape.as_list()}")
            with self.graph.as_default():   # else TF 2 treats the variable as out of scope
                var.load(np.asarray(value, dtype=np.float32), self.session)

    def variables(self) -> dict[str, np.ndarray]:
        """Every trainable variable's current value, by TF name."""
        return self.session.run({n: v for n, v in self._by_name.items()})

    def _feed(self, batch, with_labels: bool) -> dict:
        feed = _tf_batch(batch, self._inputs)
        if with_labels:
            feed.update(_tf_batch(batch, self._labels))
        return feed

    def gradients(self, batch: Mapping[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, dLoss/dθ by TF name) for one batch, by ``tf.gradients``, before clipping; variables
        the loss does not reach are left out."""
        loss, grads = self.session.run([self.loss, self._grads], self._feed(batch, True))
        return float(loss), {v.op.name: np.asarray(g) for v, g in zip(self._grad_vars, grads)}

    def train_step(self, batch: Mapping[str, np.ndarray]) -> tuple[float, float]:
        """One official training step; returns (loss before the update, learning rate used)."""
        feed = self._feed(batch, True)
        feed.update(self._step_feed(self.step))
        _, loss, lr = self.session.run([self._train_op, self.loss, self.learning_rate], feed)
        self.step += 1
        return float(loss), float(lr)

    def predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The head's outputs (logits, or start/end logits) for a batch."""
        return self.session.run(self._outputs, self._feed(batch, False))

    def save(self, prefix: str) -> str:
        """Write the trained variables (plus Adam slots and global_step) as an official checkpoint."""
        with self.graph.as_default():   # else TF 2's Saver.save believes it runs eagerly
            return self._saver.save(self.session, prefix)


def run_optimizer(variables: Mapping[str, np.ndarray], grads: Sequence[Mapping[str, np.ndarray]], init_lr: float,
                  num_train_steps: int, num_warmup_steps: int, order: str = "intended",
                  inter_op_threads: Optional[int] = None) -> tuple[list[dict], list[float]]:
    """Run the official optimizer for len(grads) steps; returns (variables after each step, lr per step)."""
    with OfficialOptimizer(variables, init_lr, num_train_steps, num_warmup_steps, order=order,
                           inter_op_threads=inter_op_threads) as opt:
        states, lrs = [], []
        for g in grads:
            lrs.append(opt.apply(g))
            states.append(opt.variables())
        return states, lrs


def _flags_parsed() -> None:
    """The official tokenizer and run_squad read absl flags (--preserve_unused_tokens,
    --version_2_with_negative, --verbose_logging); nothing parses a command line here, so the
    flags are marked parsed and keep their defaults (v1.1 behaviour)."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def official_mrpc_features(data_dir: str, split: str, vocab_file: str, do_lower_case: bool,
                           max_seq_length: int, limit: Optional[int] = None) -> list[dict]:
    """Examples and features of MRPC ``split`` ("train"/"dev") as the official run_classifier makes
    them (its MrpcProcessor, tokenizer and convert_single_example), as plain dicts."""
    from bert import tokenization
    rc = run_module("run_classifier")
    _flags_parsed()
    processor = rc.MrpcProcessor()
    examples = {"train": processor.get_train_examples, "dev": processor.get_dev_examples}[split](data_dir)
    tokenizer = tokenization.FullTokenizer(vocab_file=vocab_file, do_lower_case=do_lower_case)
    out = []
    for i, ex in enumerate(examples[:limit]):
        # ex_index only decides whether the official code logs the example (< 5); keep it quiet.
        f = rc.convert_single_example(i + 5, ex, processor.get_labels(), max_seq_length, tokenizer)
        out.append({"guid": ex.guid, "text_a": ex.text_a, "text_b": ex.text_b, "label": ex.label,
                    "input_ids": list(f.input_ids), "input_mask": list(f.input_mask),
                    "segment_ids": list(f.segment_ids), "label_id": f.label_id,
                    "is_real_example": f.is_real_example})
    return out


def _quiet_tf_logging():
    """run_squad logs the first 20 features at INFO; keep the parity output readable."""
    level = tf1.logging.get_verbosity()
    tf1.logging.set_verbosity(tf1.logging.WARN)
    return level


def official_squad_features(input_file: str, vocab_file: str, do_lower_case: bool, max_seq_length: int = 384,
                            doc_stride: int = 128, max_query_length: int = 64, is_training: bool = False,
                            limit: Optional[int] = None) -> tuple[list, list]:
    """(examples, features) of a SQuAD v1.1 file as the official run_squad makes them (its reader,
    tokenizer and convert_examples_to_features), as the official objects."""
    from bert import tokenization
    rs = run_module("run_squad")
    _flags_parsed()
    level = _quiet_tf_logging()
    try:
        examples = rs.read_squad_examples(input_file, is_training)[:limit]
        tokenizer = tokenization.FullTokenizer(vocab_file=vocab_file, do_lower_case=do_lower_case)
        features = []
        rs.convert_examples_to_features(examples, tokenizer, max_seq_length, doc_stride, max_query_length,
                                        is_training, features.append)
    finally:
        tf1.logging.set_verbosity(level)
    return examples, features


def official_squad_predictions(examples, features, results, n_best_size: int = 20, max_answer_length: int = 30,
                               do_lower_case: bool = True) -> tuple[dict, dict]:
    """The official v1.1 write_predictions, read back from the files it writes:
    (predictions {qas_id: text}, nbest {qas_id: [...]}). ``results`` hold unique_id,
    start_logits, end_logits (any objects with those attributes)."""
    import json
    import tempfile
    rs = run_module("run_squad")
    _flags_parsed()
    official = [rs.RawResult(unique_id=r.unique_id, start_logits=list(map(float, r.start_logits)),
                             end_logits=list(map(float, r.end_logits))) for r in results]
    level = _quiet_tf_logging()
    try:
        with tempfile.TemporaryDirectory() as d:
            pred, nbest = f"{d}/predictions.json", f"{d}/nbest.json"
            rs.write_predictions(examples, features, official, n_best_size, max_answer_length, do_lower_case,
                                 pred, nbest, f"{d}/null_odds.json")
            with open(pred, encoding="utf-8") as f:
                predictions = json.load(f)
            with open(nbest, encoding="utf-8") as f:
                all_nbest = json.load(f)
    finally:
        tf1.logging.set_verbosity(level)
    return predictions, all_nbest
