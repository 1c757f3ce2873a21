"""``make bench``: bert_torch against its peers, same run, same inputs, interleaved, medians and ratios.

Forward pass (no grad) of: bert_torch's fast path (what users run) and its tapped path (op for op, as the
gate compares it), HF transformers' ``BertModel`` eager and sdpa, the official TF graph, and the GEMM floor
(the same matrix products alone, nothing else); a training step (forward, backward, optimizer) of
bert_torch + ``BertAdam`` against HF + ``torch.optim.AdamW``. Shapes: MiniLM-L6 (real weights) and
BERT-base / BERT-large shapes (random weights: timing does not depend on the values). Each round times
every contender once, in turn, so that a load change hits them all; the median of the rounds is kept.

    python -m parity.bench [--shapes minilm,base] [--batch-size 8] [--seq-len 128] [--repeats 7]
        [--report-dir reports/bench] [--diagnose-ratio]

Writes ``bench.json`` and ``bench.png``. It asserts nothing: timings are not tests.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import torch  # noqa: E402

from bert_torch._io import write_json  # noqa: E402
from bert_torch.commands import HelpFormatter  # noqa: E402
from bert_torch.modeling import BertConfig  # noqa: E402

from .inputs import make_inputs  # noqa: E402
from .minilm import build_checkpoint  # noqa: E402

SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def interleaved(contenders: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds per contender; one warm-up each, then ``repeats`` rounds timing each once in turn."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for label, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def gemm_floor(config: BertConfig, B: int, T: int) -> Callable[[], None]:
    """The forward pass's matrix products alone, in float32, with nothing between them."""
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
                    torch.nn.functional.linear(x, wh)
                torch.matmul(q, q.transpose(-1, -2))     # scores
                torch.matmul(p, q)                       # context
                torch.nn.functional.linear(x, wi)        # intermediate
                torch.nn.functional.linear(h, wo)        # output
    return run


def hf_model(config: BertConfig, state: dict, attn: str):
    import transformers
    hf_cfg = transformers.BertConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                                     num_hidden_layers=config.num_hidden_layers,
                                     num_attention_heads=config.num_attention_heads,
                                     intermediate_size=config.intermediate_size, hidden_act="gelu_new",
                                     max_position_embeddings=config.max_position_embeddings,
                                     type_vocab_size=config.type_vocab_size, layer_norm_eps=1e-12,
                                     attn_implementation=attn)
    model = transformers.BertModel(hf_cfg, add_pooling_layer=True)
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
    if tf_side is not None:
        out["official TF graph"] = lambda: tf_side.run(inputs, fetch=["pooler/output"])
    return out


def training_contenders(config, model, state, args_t) -> dict[str, Callable[[], None]]:
    from bert_torch.optimization import BertAdam
    hf = hf_model(config, state, "sdpa").train()
    ours = type(model)(config)
    ours.load_state_dict(model.state_dict())
    ours.train()
    opt_ours = BertAdam(ours.parameters(), lr=1e-5)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-5)

    def step_ours():
        _, pooled = ours(*args_t, output_all_encoded_layers=False)
        pooled.square().mean().backward()
        opt_ours.step()
        opt_ours.zero_grad()

    def step_hf():
        pooled = hf(input_ids=args_t[0], token_type_ids=args_t[1], attention_mask=args_t[2]).pooler_output
        pooled.square().mean().backward()
        opt_hf.step()
        opt_hf.zero_grad()

    return {"bert_torch fast path + BertAdam": step_ours, "HF sdpa + AdamW": step_hf}


def bench_shape(name: str, B: int, T: int, repeats: int, with_tf: bool) -> dict:
    from bert_torch.modeling import BertModel
    from bert_torch.weights import load_model
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_checkpoint(tmp)
        minilm = BertConfig.from_json_file(paths["bert_config"])
        config = minilm if name == "minilm" else BertConfig.from_dict({**minilm.to_dict(), **SHAPES[name]})
        inputs = make_inputs(paths["vocab"], B, T, seed=0, vocab_size=config.vocab_size)
        if name == "minilm":
            model = load_model(paths["torch_weights"], config).eval()
        else:
            torch.manual_seed(0)
            model = BertModel(config).eval()
        state = model.state_dict()
        tf_side = None
        if with_tf and name == "minilm":
            from .sides import TFSide
            tf_side = TFSide(paths["prefix"], config)
        args_t = [torch.from_numpy(a).long() for a in (inputs.input_ids, inputs.token_type_ids, inputs.input_mask)]
        try:
            fwd = interleaved(forward_contenders(config, model, state, args_t, tf_side, inputs), repeats)
        finally:
            if tf_side is not None:
                tf_side.close()
        train = interleaved(training_contenders(config, model, state, args_t), max(3, repeats // 2))
    hf_best = min(fwd["HF eager"], fwd["HF sdpa"])
    return {"shape": name, "batch_size": B, "seq_len": T, "forward_seconds": fwd, "training_step_seconds": train,
            "ratios": {"fast path / fastest HF": fwd["bert_torch fast path"] / hf_best,
                       "fast path / GEMM floor": fwd["bert_torch fast path"] / fwd["GEMM floor"],
                       "tapped path / fast path": fwd["bert_torch tapped path"] / fwd["bert_torch fast path"],
                       **({"fast path / official TF": fwd["bert_torch fast path"] / fwd["official TF graph"]}
                          if "official TF graph" in fwd else {}),
                       "training step / HF + AdamW": train["bert_torch fast path + BertAdam"] / train["HF sdpa + AdamW"]}}


def plot(results: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results):
        labels = list(r["forward_seconds"])
        ax.barh(labels, [r["forward_seconds"][k] * 1000 for k in labels])
        ax.set_xlabel("forward, ms (median)")
        ax.set_title(f"{r['shape']}, {r['batch_size']} x {r['seq_len']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m parity.bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--shapes", default="minilm,base", help=f"comma-separated of {', '.join(SHAPES)}")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-tf", action="store_true", help="leave the official TF graph out")
    ap.add_argument("--report-dir", default="reports/bench")
    ap.add_argument("--diagnose-ratio", action="store_true",
                    help="also time diagnose against compare on a 12-layer BERT-base-shaped checkpoint")
    args = ap.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    bad = [s for s in shapes if s not in SHAPES]
    if bad or not (1 <= args.batch_size <= 256 and 1 <= args.seq_len <= 512 and 1 <= args.repeats <= 100):
        what = f"--shapes {bad[0]}" if bad else "--batch-size 1-256, --seq-len 1-512, --repeats 1-100"
        print(f"error: {what}: out of range", file=sys.stderr)
        return 2
    if args.diagnose_ratio:
        diagnose_ratio(args.batch_size, args.seq_len)
    print(f"load average before: {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    results = [bench_shape(s, args.batch_size, args.seq_len, args.repeats, not args.no_tf) for s in shapes]
    os.makedirs(args.report_dir, exist_ok=True)
    write_json(os.path.join(args.report_dir, "bench.json"), {"results": results, "load_average_after": os.getloadavg()},
               "--report-dir", indent=2)
    plot(results, os.path.join(args.report_dir, "bench.png"))
    for r in results:
        print(f"\n{r['shape']}, batch {r['batch_size']} x {r['seq_len']}, median of {args.repeats} interleaved rounds:")
        for k, s in r["forward_seconds"].items():
            print(f"  forward  {k:<32} {s * 1000:8.1f} ms")
        for k, s in r["training_step_seconds"].items():
            print(f"  training {k:<32} {s * 1000:8.1f} ms")
        for k, v in r["ratios"].items():
            print(f"  ratio    {k:<32} {v:6.2f}")
    print(f"\nload average after: {os.getloadavg()}; {args.report_dir}/bench.json, bench.png")
    return 0


BERT_BASE_12 = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu")


def diagnose_ratio(batch_size: int, seq_len: int) -> None:
    """Wall time of ``parity diagnose`` against ``parity compare`` on a 12-layer BERT-base-shaped
    official random checkpoint (issue: diagnose must cost under 3x compare). Each command runs
    twice; the second, warm run of each is kept."""
    from bert_torch import convert
    from reference_tf import write_random_checkpoint

    from . import cli
    from .minilm import minilm_dir
    with tempfile.TemporaryDirectory() as tmp:
        write_random_checkpoint(tmp, BERT_BASE_12, seed=0, perturb=0.02,
                                vocab_file=os.path.join(minilm_dir(), "vocab.txt"))
        weights = os.path.join(tmp, "pytorch_model.safetensors")
        if convert.main(["--tf-checkpoint", tmp, "--output", weights]) != 0:
            raise SystemExit("bench: converting the BERT-base-shaped checkpoint failed")
        args = ["--tf-checkpoint", tmp, "--torch-weights", weights, "--batch-size", str(batch_size),
                "--seq-len", str(seq_len)]
        times = {}
        for command in ("compare", "diagnose", "compare", "diagnose"):
            t0 = time.perf_counter()
            cli.main([command, *args, "--report-dir", os.path.join(tmp, command)])
            times[command] = time.perf_counter() - t0
    print(f"BERT-base-shaped 12 layers, batch {batch_size} x {seq_len}: compare {times['compare']:.1f} s, "
          f"diagnose {times['diagnose']:.1f} s, ratio {times['diagnose'] / times['compare']:.2f} (target < 3)")


if __name__ == "__main__":
    sys.exit(main())
