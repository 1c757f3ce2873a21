"""``make bench``: bert_torch against its peers, same run, same inputs, interleaved, medians and ratios.

Forward pass (no grad) of: bert_torch's fast path (what users run) and its tapped path (op for op, as the
gate compares it), HF transformers' ``BertModel`` eager and sdpa, the official TF graph, and the GEMM floor
(the same matrix products alone, nothing else); a classification training step (forward, backward,
optimizer; dropout 0) of bert_torch + ``BertAdam``, HF + ``torch.optim.AdamW`` and the official graph + its
AdamWeightDecayOptimizer; then the whole ``convert``, ``compare`` and ``diagnose`` commands, each in a fresh
process: wall time and peak RSS, and compare / diagnose against one TF plus one PyTorch forward. Shapes:
MiniLM-L6 (real weights) and BERT-base / BERT-large shapes (random weights, written as official checkpoints:
timing does not depend on the values). Each round times every contender once, in turn, so that a load change
hits them all; the median of the rounds is kept. The ratios are printed beside the speed targets, each with
its spread over the rounds (the same ratio taken round by round) and how many rounds were within the target.

    python -m parity.checks.bench [--shapes minilm,base,large] [--batch-size 8] [--seq-len 128] [--repeats 7]
        [--report-dir reports/bench] [--no-tf] [--no-commands]

Writes ``bench.json`` and ``bench.png``. It asserts nothing: timings are not tests.
"""
from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import torch  # noqa: E402

from bert_torch._io import atomic_dir, write_json  # noqa: E402
from bert_torch.commands import run_main  # noqa: E402
from bert_torch import modeling  # noqa: E402
from bert_torch.modeling import BertConfig  # noqa: E402

from parity.inputs import (MEMORY_MARGIN, RUNTIME_BYTES, SPILL_ABOVE_BYTES, TF_STEP_ACTIVATIONS,  # noqa: E402
                     TF_TRAINER_BYTES_PER_PARAMETER, TORCH_RUNTIME_BYTES, TORCH_STEP_ACTIVATIONS,
                     TORCH_TRAINER_BYTES_PER_PARAMETER, in_memory_bytes, make_inputs, memory_shortfall,
                     optimizer_scratch_bytes, run_bytes, step_activation_bytes)
from parity.minilm import build_checkpoint  # noqa: E402
from parity.inputs import BadInput  # noqa: E402
from parity.checks.options import SHAPES, BenchOptions  # noqa: E402


def interleaved_rounds(contenders: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Seconds per contender per round; one warm-up each, then ``repeats`` rounds timing each once in turn."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for label, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    return times


def medians(rounds: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in rounds.items()}


def gemm_floor(config: BertConfig, B: int, T: int, linear: Callable = torch.nn.functional.linear
               ) -> Callable[[], None]:
    """The forward pass's matrix products alone, in float32, with nothing between them; ``linear`` computes
    the dense layers' products (``F.linear``, MKL's sgemm; or oneDNN's, what the fast path uses)."""
    H, I, N = config.hidden_size, config.intermediate_size, config.num_attention_heads
    D = H // N
    g = torch.Generator().manual_seed(0)
    x, h = torch.randn(B * T, H, generator=g), torch.randn(B * T, I, generator=g)
    wh, wi, wo = (torch.randn(H, H, generator=g), torch.randn(I, H, generator=g), torch.randn(H, I, generator=g))
    q = torch.randn(B, N, T, D, generator=g)
    p = torch.randn(B, N, T, T, generator=g)

    def run():
        with torch.no_grad():
            for _ in range(config.num_hidden_layers):
                for _ in range(4):                       # query, key, value, attention output projection
                    linear(x, wh)
                torch.matmul(q, q.transpose(-1, -2))     # scores
                torch.matmul(p, q)                       # context
                linear(x, wi)                            # intermediate
                linear(h, wo)                            # output
    return run


def hf_config(config: BertConfig, attn: str, **extra):
    import transformers
    return transformers.BertConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                                   num_hidden_layers=config.num_hidden_layers,
                                   num_attention_heads=config.num_attention_heads,
                                   intermediate_size=config.intermediate_size, hidden_act="gelu_new",
                                   max_position_embeddings=config.max_position_embeddings,
                                   type_vocab_size=config.type_vocab_size, layer_norm_eps=1e-12,
                                   hidden_dropout_prob=config.hidden_dropout_prob,
                                   attention_probs_dropout_prob=config.attention_probs_dropout_prob,
                                   attn_implementation=attn, **extra)


def hf_model(config: BertConfig, state: dict, attn: str):
    import transformers
    model = transformers.BertModel(hf_config(config, attn), add_pooling_layer=True)
    model.load_state_dict(state, strict=False)
    return model.eval()


def forward_contenders(config, model, state, args_t, tf_side, inputs) -> dict[str, Callable[[], None]]:
    from bert_torch.taps import Taps
    B, T = args_t[0].shape
    hf = {attn: hf_model(config, state, attn) for attn in ("eager", "sdpa")}

    def ours(tapped: bool):
        def run():
            with torch.no_grad():
                if tapped:
                    with Taps(record=False):
                        model(*args_t)
                else:
                    model(*args_t)
        return run

    def theirs(m):
        def run():
            with torch.no_grad():
                m(input_ids=args_t[0], token_type_ids=args_t[1], attention_mask=args_t[2])
        return run

    out = {"bert_torch fast path": ours(False), "bert_torch tapped path": ours(True),
           "HF eager": theirs(hf["eager"]), "HF sdpa": theirs(hf["sdpa"]), "GEMM floor": gemm_floor(config, B, T)}
    if modeling._ONEDNN_LINEAR is not None:   # the kernel the fast path's dense layers use: the floor is the faster
        onednn = modeling._ONEDNN_LINEAR
        out["GEMM floor (oneDNN)"] = gemm_floor(config, B, T, lambda x, w: onednn(x, w, None, "none", [], ""))
    if tf_side is not None:
        out["official TF graph"] = lambda: tf_side.run(inputs, fetch=["pooler/output"])
    return out


def training_contenders(config, model, paths: dict, inputs, with_tf: bool) -> dict[str, Callable[[], None]]:
    """One optimizer step of sentence-pair classification (MRPC's model: the pooler, a 2-way head, cross
    entropy), dropout 0 on every side (the official graph's is_training=False; the PyTorch configs' rates
    0), from the same body weights: bert_torch + BertAdam, HF + torch's AdamW, the official graph +
    its AdamWeightDecayOptimizer (``reference_tf.finetune.FineTuner``)."""
    import transformers
    from bert_torch.modeling import BertForSequenceClassification
    from bert_torch.optimization import BertAdam, grouped_parameters
    quiet = BertConfig.from_dict({**config.to_dict(), "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    ours = BertForSequenceClassification(quiet, 2)
    ours.bert.load_state_dict(model.state_dict())
    ours.train()
    hf = transformers.BertForSequenceClassification(hf_config(quiet, "sdpa", num_labels=2))
    hf.bert.load_state_dict(model.state_dict(), strict=False)
    hf.train()
    opt_ours = BertAdam(grouped_parameters(ours), lr=1e-5)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-5)
    ids, seg, mask = (torch.from_numpy(a).long() for a in (inputs.input_ids, inputs.token_type_ids, inputs.input_mask))
    labels = torch.arange(ids.shape[0]) % 2

    def step_ours():
        ours(ids, seg, mask, labels=labels).backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_hf():
        hf(input_ids=ids, token_type_ids=seg, attention_mask=mask, labels=labels).loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)

    out = {"bert_torch + BertAdam": step_ours, "HF sdpa + AdamW": step_hf}
    if with_tf:
        from reference_tf.finetune import FineTuner
        tf_train = FineTuner(paths["prefix"], paths["bert_config"], "classifier", dropout=False, learning_rate=1e-5,
                             num_train_steps=10_000, num_warmup_steps=0)
        batch = {"input_ids": inputs.input_ids, "input_mask": inputs.input_mask, "segment_ids": inputs.token_type_ids,
                 "label_ids": labels.numpy().astype("int32")}
        out["official TF + AdamWeightDecay"] = lambda: tf_train.train_step(batch)
        out["official TF + AdamWeightDecay"].close = tf_train.close
    return out


CHILD_PEAK = r"""
import atexit, os, runpy, sys
def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
out, module = sys.argv[1], sys.argv[2]
atexit.register(lambda: open(out, "w").write(str(peak())))
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__")
"""


def command_cost(module: str, argv: list[str], tmp: str) -> dict:
    """Wall seconds and peak RSS (VmHWM, Linux) of ``python -m module argv`` in a child process."""
    peak_file = os.path.join(tmp, "peak")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD_PEAK, peak_file, module, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak = int(open(peak_file).read()) if os.path.exists(peak_file) else None
    return {"command": f"python -m {module} {' '.join(argv)}", "exit_code": proc.returncode,
            "seconds": round(seconds, 2), "peak_rss_bytes": peak}


def shape_checkpoint(name: str, tmp: str) -> tuple[BertConfig, dict, torch.nn.Module]:
    """(config, paths, BertModel): MiniLM's real weights, or a random model of the shape written as an
    official checkpoint by our converter (timing does not depend on the values)."""
    from bert_torch.convert import convert_torch_to_tf
    from bert_torch.modeling import BertModel
    from bert_torch.weights import load_model, model_tensors, write_weights
    paths = build_checkpoint(os.path.join(tmp, "minilm"))
    minilm = BertConfig.from_json_file(paths["bert_config"])
    if name == "minilm":
        return minilm, paths, load_model(paths["torch_weights"], minilm).eval()
    config = BertConfig.from_dict({**minilm.to_dict(), **SHAPES[name]})
    torch.manual_seed(0)
    model = BertModel(config).eval()
    d = os.path.join(tmp, name)
    os.makedirs(d)
    weights, config_path = os.path.join(d, "pytorch_model.safetensors"), os.path.join(d, "bert_config.json")
    write_weights(weights, model_tensors(model))
    config.to_json_file(config_path)
    prefix = os.path.join(d, "bert_model.ckpt")
    convert_torch_to_tf(weights, config_path, prefix, vocab_file=paths["vocab"])
    return config, {"dir": d, "prefix": prefix, "bert_config": config_path, "torch_weights": weights,
                    "vocab": os.path.join(d, "vocab.txt")}, model


def bench_shape(name: str, B: int, T: int, repeats: int, with_tf: bool, commands: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config, paths, model = shape_checkpoint(name, tmp)
        inputs = make_inputs(paths["vocab"], B, T, seed=0, vocab_size=config.vocab_size)
        state = model.state_dict()
        tf_side = None
        if with_tf:
            from parity.sides.base import TFSide
            tf_side = TFSide(paths["prefix"], config)
        args_t = [torch.from_numpy(a).long() for a in (inputs.input_ids, inputs.token_type_ids, inputs.input_mask)]
        try:
            fwd_rounds = interleaved_rounds(forward_contenders(config, model, state, args_t, tf_side, inputs), repeats)
        finally:
            if tf_side is not None:
                tf_side.close()
        steps = training_contenders(config, model, paths, inputs, with_tf)
        try:
            train_rounds = interleaved_rounds(steps, max(3, repeats // 2))
        finally:
            for fn in steps.values():
                getattr(fn, "close", lambda: None)()
        cost = {}
        if commands:   # what a user waits for, and the memory it takes, in fresh processes
            size = ["--batch-size", str(B), "--seq-len", str(T)]
            cost["convert"] = command_cost("bert_torch.convert", ["--tf-checkpoint", paths["dir"], "--output",
                                                                  os.path.join(tmp, "converted.safetensors")], tmp)
            for command in ("compare", "diagnose"):
                cost[command] = command_cost("parity", [command, "--tf-checkpoint", paths["dir"], "--torch-weights",
                                                        paths["torch_weights"], "--report-dir",
                                                        os.path.join(tmp, command), *size], tmp)
    fwd, train = medians(fwd_rounds), medians(train_rounds)
    return {"shape": name, "batch_size": B, "seq_len": T, "forward_seconds": fwd, "training_step_seconds": train,
            "commands": cost, "ratios": ratios(fwd, train, cost),
            "forward_rounds_seconds": fwd_rounds, "training_step_rounds_seconds": train_rounds,
            "ratio_rounds": round_ratios(fwd_rounds, train_rounds)}


# The fast path's speed targets, same run: forward <= 0.85x HF's fastest and <= 1.2x the GEMM floor;
# a training step <= 1.0x HF with AdamW and <= 0.9x the official TF step.
TARGETS = {"forward: fast path / fastest HF": 0.85, "forward: fast path / GEMM floor": 1.2,
           "training step: bert_torch / HF + AdamW": 1.0, "training step: bert_torch / official TF": 0.9}


def ratios(fwd: dict, train: dict, cost: dict) -> dict:
    hf_best = min(fwd["HF eager"], fwd["HF sdpa"])
    out = {"forward: fast path / fastest HF": fwd["bert_torch fast path"] / hf_best,
           "forward: fast path / GEMM floor": fwd["bert_torch fast path"] / min(
               v for k, v in fwd.items() if k.startswith("GEMM floor")),
           "forward: tapped path / fast path": fwd["bert_torch tapped path"] / fwd["bert_torch fast path"],
           "training step: bert_torch / HF + AdamW": train["bert_torch + BertAdam"] / train["HF sdpa + AdamW"]}
    if "official TF graph" in fwd:
        out["forward: fast path / official TF"] = fwd["bert_torch fast path"] / fwd["official TF graph"]
        out["training step: bert_torch / official TF"] = (train["bert_torch + BertAdam"]
                                                          / train["official TF + AdamWeightDecay"])
        two = fwd["official TF graph"] + fwd["bert_torch fast path"]
        for command in ("compare", "diagnose"):
            if command in cost:
                out[f"{command} (whole command) / one TF + one PyTorch forward"] = cost[command]["seconds"] / two
    if "compare" in cost and "diagnose" in cost:
        out["diagnose / compare"] = cost["diagnose"]["seconds"] / cost["compare"]["seconds"]
    return out


def round_ratios(fwd_rounds: dict[str, list[float]], train_rounds: dict[str, list[float]]) -> dict[str, list[float]]:
    """Each ratio of ``ratios`` round by round: a forward ratio from each forward round (its two contenders timed
    moments apart, under the same load), a training-step ratio from each training round. Their spread is how
    far one run's ratio can be trusted on this machine (the medians' ratio is the headline)."""
    fwd, train = medians(fwd_rounds), medians(train_rounds)
    out: dict[str, list[float]] = {}
    for family, rounds in (("forward", fwd_rounds), ("training", train_rounds)):
        for i in range(min(map(len, rounds.values()))):
            one = {k: v[i] for k, v in rounds.items()}
            for k, v in ratios(one if family == "forward" else fwd, one if family == "training" else train, {}).items():
                if k.startswith(family):
                    out.setdefault(k, []).append(v)
    return out


def verdict(name: str, ratio: float, rounds: Optional[list[float]]) -> str:
    """``(target <= T: met; rounds 0.79-0.93, 3 of 5 within)``, or "" for a ratio without a target."""
    if name not in TARGETS:
        return ""
    target = TARGETS[name]
    spread = (f"; rounds {min(rounds):.2f}-{max(rounds):.2f}, {sum(r <= target for r in rounds)} of {len(rounds)} "
              "within" if rounds else "")
    return f"  (target <= {target:g}: {'met' if ratio <= target else 'NOT met'}{spread})"


def plot(results: list[dict], path: str) -> None:
    """Per shape: the forward pass and the training step of each contender, medians in ms."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from parity.compare.render import save_png
    fig, axes = plt.subplots(2, len(results), figsize=(5.5 * len(results), 6.5), squeeze=False, dpi=100)
    for col, r in enumerate(results):
        for row, (key, what) in enumerate((("forward_seconds", "forward"), ("training_step_seconds", "training step"))):
            ax = axes[row][col]
            labels = list(r[key])
            ax.barh(labels, [r[key][k] * 1000 for k in labels])
            ax.set_xlabel(f"{what}, ms (median)")
            ax.set_title(f"{r['shape']}, {r['batch_size']} x {r['seq_len']}: {what}")
    fig.tight_layout()
    save_png(fig, path, "--report-dir")
    plt.close(fig)


# Memory of one shape's run (``bench_shape``), an upper bound of its peak: the training phase's, where every
# contender is alive at once (``training_contenders`` builds them all, and each keeps its optimizer's state
# between rounds). Bytes per parameter: bert_torch's forward model, kept for the whole shape (4); the forward
# rounds' HF eager and sdpa copies and the official graph's variables (4 + 4, + 4), freed before the training
# phase, but the allocators keep most of it and that phase's memory comes on top; bert_torch + BertAdam and HF +
# AdamW (``TORCH_TRAINER_BYTES_PER_PARAMETER`` each); the official graph + AdamWeightDecay
# (``TF_TRAINER_BYTES_PER_PARAMETER``; none with ``--no-tf``).
TRAINING_BYTES_PER_PARAMETER = {True: 4 + 12 + 2 * TORCH_TRAINER_BYTES_PER_PARAMETER + TF_TRAINER_BYTES_PER_PARAMETER,
                                False: 4 + 8 + 2 * TORCH_TRAINER_BYTES_PER_PARAMETER}


def shape_config(shape: str) -> BertConfig:
    """The config ``shape_checkpoint`` builds for ``shape``: MiniLM's vocabulary and positions, the shape's sizes."""
    return BertConfig.from_dict({"vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2,
                                 **SHAPES[shape]})


def bench_bytes(config: BertConfig, B: int, T: int, with_tf: bool = True, commands: bool = False) -> int:
    """An upper bound of the peak memory of ``bench_shape`` for ``config`` at B x T (see
    ``TRAINING_BYTES_PER_PARAMETER``), times ``MEMORY_MARGIN``. With ``commands``, the convert, compare and
    diagnose processes run one at a time while the bench still holds its training contenders: the larger of
    compare and diagnose, as ``--spill auto`` runs them (``run_bytes``), is added (convert streams: at most 1.5x
    the checkpoint, tests/test_convert_memory.py, below either)."""
    # One contender's step runs at a time; TF's pool keeps its step's activations under the PyTorch steps.
    held = (RUNTIME_BYTES if with_tf else TORCH_RUNTIME_BYTES) \
        + TRAINING_BYTES_PER_PARAMETER[with_tf] * config.num_parameters() + optimizer_scratch_bytes(config) \
        + step_activation_bytes(config, B, T, TORCH_STEP_ACTIVATIONS) \
        + (step_activation_bytes(config, B, T, TF_STEP_ACTIVATIONS) if with_tf else 0)
    need = int(MEMORY_MARGIN * held)
    if commands:
        need += max(run_bytes(config, B, T, c, spilled=in_memory_bytes(config, B, T, c) > SPILL_ABOVE_BYTES)
                    for c in ("compare", "diagnose"))
    return need


def checked_shapes(opts: BenchOptions) -> list[str]:
    """The shapes to time, once each one's memory is found available and the peers installed: one line naming
    the flags at fault (exit 2) before minutes of timing are spent. Each flag's own value is checked while the
    command line is parsed (``BenchOptions.check``), the report folder too (its flag's type)."""
    shapes = opts.shape_names
    for s in shapes:   # one shape at a time: each one's memory is freed before the next is built
        need = bench_bytes(shape_config(s), opts.batch_size, opts.seq_len, not opts.no_tf, not opts.no_commands)
        short = memory_shortfall(need, TORCH_RUNTIME_BYTES if opts.no_tf else RUNTIME_BYTES)
        if short:
            what = "the training contenders together" + ("" if opts.no_commands else ", and the commands it runs")
            raise BadInput(f"--shapes {s} at --batch-size {opts.batch_size} x --seq-len {opts.seq_len}: the bench "
                           f"({what}) needs {short}; use a smaller batch or sequence"
                           + ("" if opts.no_commands else ", or --no-commands"))
    # The peers are part of the benchmark: a missing one is said up front, not after minutes of timing.
    needed = ["transformers", "matplotlib"] + ([] if opts.no_tf else ["tensorflow"])
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise BadInput(f"{', '.join(missing)} not installed: the benchmark needs the test and tf extras "
                       "(make setup)" + ("" if opts.no_tf else ", or pass --no-tf to leave TensorFlow out"))
    return shapes


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m parity.checks.bench`` (``bert-parity bench``)."""
    return run_main(lambda: run_bench(BenchOptions.parse(argv)))


def run_bench(opts: BenchOptions) -> int:
    """Every shape timed, then ``bench.json`` and ``bench.png`` written and the medians and ratios printed."""
    shapes = checked_shapes(opts)
    os.environ.pop("BERT_PARITY_TF_CACHE", None)   # TF is timed running, never replayed from the cache
    load_before = os.getloadavg()
    print(f"load average before: {load_before}, torch threads {torch.get_num_threads()}")
    results = [bench_shape(s, opts.batch_size, opts.seq_len, opts.repeats, not opts.no_tf, not opts.no_commands)
               for s in shapes]
    # The report folder appears whole or not at all, replacing only an empty folder or a previous bench's.
    with atomic_dir(opts.report_dir, "--report-dir", owner="bench") as out:
        write_json(os.path.join(out, "bench.json"),
                   {"results": results, "targets": TARGETS, "repeats": opts.repeats,
                    "torch_threads": torch.get_num_threads(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()}, "--report-dir", indent=2)
        plot(results, os.path.join(out, "bench.png"))
    for r in results:
        print(f"\n{r['shape']}, batch {r['batch_size']} x {r['seq_len']}, median of {opts.repeats} interleaved rounds:")
        for k, s in r["forward_seconds"].items():
            print(f"  forward  {k:<34} {s * 1000:9.1f} ms")
        for k, s in r["training_step_seconds"].items():
            print(f"  training {k:<34} {s * 1000:9.1f} ms")
        for k, c in r["commands"].items():
            peak = f"{c['peak_rss_bytes'] / 2**30:.2f} GiB peak RSS" if c["peak_rss_bytes"] else "peak RSS unknown"
            print(f"  command  {k:<34} {c['seconds']:9.1f} s, {peak}, exit {c['exit_code']}")
        for k, v in r["ratios"].items():
            print(f"  ratio    {k:<58} {v:6.2f}{verdict(k, v, r['ratio_rounds'].get(k))}")
    print(f"\nload average after: {os.getloadavg()}; {opts.report_dir}/bench.json, bench.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
