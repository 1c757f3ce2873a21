"""The flags of the checks of scale and hardware, declared once as the typed options they run on
(``bert_torch.options``): ``bert-parity bench``, ``portability`` and ``gpu-check``, and the data-parallel checks
run outside the front door (``torchrun ... -m parity.checks.ddp``, ``python -m parity.checks.mrpc_ddp``).

Light on purpose, like ``parity.compare.options``: ``bert-parity bench --help`` builds its parser from here
without importing torch. So the values a flag is checked against live here too (the bench's model shapes,
the emulated-CPU settings, the data-parallel faults that may be planted), and the check modules take them
from here.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import ClassVar, Optional

from bert_torch.flags import count, input_dir, output_dir, output_file, real
from bert_torch.options import Options, flag

from parity.inputs import MAX_BATCH, MAX_SEQ, MIN_PAIR_SEQ, BadInput


class AppendTuple(argparse.Action):
    """``action="append"`` into a tuple (the options are frozen: a flag's default must be immutable)."""

    def __call__(self, parser: argparse.ArgumentParser, parsed, values: str,
                 option_string: Optional[str] = None) -> None:
        setattr(parsed, self.dest, (*(getattr(parsed, self.dest) or ()), values))


# ---------------------------------------------------------------- bert-parity bench

# The shapes the bench times (``--shapes``): MiniLM-L6 (real weights), BERT-base and BERT-large (random weights).
SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
# Bounds of the bench's command line, checked before anything is built or timed.
BENCH_LIMITS = {"--batch-size": (1, 256), "--seq-len": (1, 512), "--repeats": (1, 100)}


@dataclasses.dataclass(frozen=True)
class BenchOptions(Options):
    """``bert-parity bench`` (``python -m parity.checks.bench``)."""
    PROG: ClassVar[str] = "bert-parity bench"
    DESCRIPTION: ClassVar[str] = ("bert_torch against its peers, same run, same inputs, interleaved, medians and "
                                  "ratios (asserts nothing: timings are not tests).")

    shapes: str = flag("--shapes", default="minilm,base", help=f"comma-separated of {', '.join(SHAPES)}")
    batch_size: int = flag("--batch-size", type=count(*BENCH_LIMITS["--batch-size"]), default=8,
                           help="rows of every timed batch (1-256)")
    seq_len: int = flag("--seq-len", type=count(*BENCH_LIMITS["--seq-len"]), default=128,
                        help="tokens per row (1-512)")
    repeats: int = flag("--repeats", type=count(*BENCH_LIMITS["--repeats"]), default=7,
                        help="interleaved rounds of the forward pass; the training step gets half as many, at "
                             "least 3 (1-100)")
    no_tf: bool = flag("--no-tf", action="store_true", default=False, help="leave the official TF graph out")
    no_commands: bool = flag("--no-commands", action="store_true", default=False,
                             help="leave out the whole convert / compare / diagnose commands (wall time, peak RSS)")
    report_dir: str = flag("--report-dir", default="reports/bench", type=output_dir("report folder", owner="bench"),
                           help="where bench.json and bench.png go")

    @property
    def shape_names(self) -> list[str]:
        """``--shapes`` as a list, in the order given."""
        return [s.strip() for s in self.shapes.split(",") if s.strip()]

    def check(self) -> None:
        """Every shape known and every number in range: one line naming the flag and value at fault (exit 2).
        Whether the machine has the memory and the peers for the run is the bench's own check
        (``parity.checks.bench.checked_shapes``: it needs the model's config)."""
        if not self.shape_names:
            raise BadInput(f"--shapes {self.shapes!r}: give one or more of {', '.join(SHAPES)}, comma-separated")
        for s in self.shape_names:
            if s not in SHAPES:
                raise BadInput(f"--shapes {s}: unknown shape; expected one of {', '.join(SHAPES)}")
        for name, (lo, hi) in BENCH_LIMITS.items():
            value = getattr(self, name[2:].replace("-", "_"))
            if not lo <= value <= hi:
                raise BadInput(f"{name} {value}: out of range {lo}-{hi}")


# ---------------------------------------------------------------- bert-parity portability

# Each setting: environment variables that make PyTorch, oneDNN, MKL or TensorFlow take other kernels (another ISA,
# another reduction order), as another machine would (``--settings`` chooses among them).
SETTINGS: dict[str, dict[str, str]] = {
    "native": {},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},            # PyTorch's portable kernels, no SIMD ISA
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},                   # what an AVX2-only CPU gets
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"},   # oneDNN (TF and torch) capped
    "mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},                # MKL's code path of an AVX2 CPU
    "tf-no-onednn": {"TF_ENABLE_ONEDNN_OPTS": "0"},                 # TensorFlow's Eigen kernels instead of oneDNN
    "one-thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"},
}
PORTABILITY_MAX_BATCH, PORTABILITY_MAX_SEQ = 64, 512


def portability_shapes(text: str) -> list[tuple[int, int]]:
    """``--shapes 8x128,2x512`` as (batch, sequence) pairs; anything else is bad input naming the flag."""
    try:
        shapes = [tuple(int(x) for x in s.lower().split("x")) for s in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or not all(len(s) == 2 and 1 <= s[0] <= PORTABILITY_MAX_BATCH and 1 <= s[1] <= PORTABILITY_MAX_SEQ
                             for s in shapes):
        raise BadInput(f"--shapes {text}: expected e.g. 8x128,2x512 (batch 1-{PORTABILITY_MAX_BATCH}, "
                       f"sequence 1-{PORTABILITY_MAX_SEQ})")
    return shapes


@dataclasses.dataclass(frozen=True)
class PortabilityOptions(Options):
    """``bert-parity portability`` (``python -m parity.checks.portability``)."""
    PROG: ClassVar[str] = "bert-parity portability"
    DESCRIPTION: ClassVar[str] = ("The verdicts must not depend on the CPU they run on: MiniLM and the mutation "
                                  "suite under emulated CPUs.")

    report_dir: str = flag("--report-dir", default="reports/portability", type=output_dir("report folder"),
                           help="where portability.md/.json (or tiers.md/.json) and the MiniLM checkpoint go")
    short: bool = flag("--short", action="store_true", default=False,
                       help="CI: every emulation at once, one small shape")
    settings: Optional[str] = flag("--settings", help=f"comma-separated subset of {', '.join(SETTINGS)}")
    shapes: Optional[str] = flag("--shapes", help="comma-separated BxT shapes (default: 8x128,4x256,2x512)")
    tiers: bool = flag("--tiers", action="store_true", default=False,
                       help="instead: every precision tier x the mutation suite and the sized faults' detection "
                            "thresholds, native setting, 8 x 128 (writes tiers.md/.json)")

    @property
    def setting_names(self) -> Optional[list[str]]:
        """``--settings`` as a list (None: not given, every setting)."""
        return [s.strip() for s in self.settings.split(",") if s.strip()] if self.settings else None

    @property
    def shape_list(self) -> Optional[list[tuple[int, int]]]:
        """``--shapes`` as (batch, sequence) pairs (None: not given, the default shapes)."""
        return portability_shapes(self.shapes) if self.shapes else None

    def check(self) -> None:
        if self.settings and not self.setting_names:
            raise BadInput(f"--settings {self.settings!r}: names no setting; choose from {', '.join(SETTINGS)}")
        unknown = [s for s in self.setting_names or () if s not in SETTINGS]
        if unknown:
            raise BadInput(f"--settings {unknown[0]}: unknown; choose from {', '.join(SETTINGS)}")
        if self.shapes:
            portability_shapes(self.shapes)


# ---------------------------------------------------------------- bert-parity gpu-check

@dataclasses.dataclass(frozen=True)
class GpuCheckOptions(Options):
    """``bert-parity gpu-check`` (``python -m parity.checks.gpu``)."""
    PROG: ClassVar[str] = "bert-parity gpu-check"
    DESCRIPTION: ClassVar[str] = ("One prepared script for a lent GPU: candidate tiers on --device against CPU "
                                  "golden files, and MRPC dev predictions against the CPU.")

    device: str = flag("--device", default="cuda", help="cuda, cuda:N, or cpu to run the script on the CPU")
    report_dir: str = flag("--report-dir", default="reports/gpu-check", type=output_dir("report folder"),
                           help="where gpu_check.json/.md, the golden files and the MiniLM checkpoint go")
    data_dir: Optional[str] = flag("--data-dir", type=input_dir("data folder"),
                                   help="real data (MRPC); default ../shared/data beside the repo when present")

    def check(self) -> None:
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise BadInput(f"--device {self.device}: expected cpu, cuda or cuda:N")
        if self.data_dir and not os.path.isdir(self.data_dir):
            raise BadInput(f"--data-dir {self.data_dir}: no such directory")


# ---------------------------------------------------------------- the data-parallel checks (outside the front door)

@dataclasses.dataclass(frozen=True)
class DdpOptions(Options):
    """``torchrun --nproc_per_node 2 -m parity.checks.ddp``: every process parses the same command line."""
    PROG: ClassVar[str] = "torchrun --nproc_per_node 2 -m parity.checks.ddp"
    DESCRIPTION: ClassVar[str] = ("Data-parallel parity: N processes x b rows under torchrun (DistributedDataParallel, "
                                  "gloo on CPU) compute what one process computes on the N*b batch.")

    output: Optional[str] = flag("--output", type=output_file("result file"), help="JSON written by rank 0")
    batch_size: int = flag("--batch-size", type=count(1, MAX_BATCH), default=8,
                           help="rows over all processes (a multiple of their number)")
    micro: int = flag("--micro", type=count(1, MAX_BATCH), default=2, help="rows per micro-batch in each process")
    steps: int = flag("--steps", type=count(1, 100_000), default=3, help="BertAdam steps")
    planted: Optional[str] = flag("--planted", choices=("sum",), help="plant a fault that must fail")
    device: str = flag("--device", default="cpu", help="PyTorch device of each process")


# Faults planted in mrpc_ddp's 2-process run (``--planted NAME``; ``--as-runner --planted NAME`` in its processes),
# each a classic data-parallel mistake. Measured at the default sizes (docs/large-batches.md): all three fail the loss rule, at
# the worst step 60x (rank-seed), 15x (no-allreduce) and 3.3x (sum: Adam's update barely sees the gradient's
# scale) the tolerance.
MRPC_DDP_PLANTED = {
    "rank-seed": "each process shuffles with seed + rank: the global batch duplicates and drops examples",
    "no-allreduce": "the model is not wrapped in DDP: each process steps on its own shard's gradient",
    "sum": "gradients summed across processes instead of averaged (2x the gradient)",
}


@dataclasses.dataclass(frozen=True)
class MrpcDdpOptions(Options):
    """``python -m parity.checks.mrpc_ddp``: the runner under torchrun against one process and TensorFlow."""
    PROG: ClassVar[str] = "python -m parity.checks.mrpc_ddp"
    DESCRIPTION: ClassVar[str] = ("The runner under torchrun against the single-process runner and TensorFlow: "
                                  "deterministic MRPC fine-tuning.")

    report_dir: str = flag("--report-dir", required=True, type=output_dir("report folder"),
                           help="output folder: mrpc_ddp.json, the runs' outputs")
    data_dir: Optional[str] = flag("--data-dir", type=input_dir("data folder"),
                                   help="folder with mrpc/train.tsv and dev.tsv (default: ../shared/data)")
    sample: bool = flag("--sample", action="store_true", default=False,
                        help="the committed 64-pair sample as train and dev instead")
    train_examples: Optional[int] = flag("--train-examples", type=count(1, 10_000_000),
                                         help="the first N train pairs (default: 256; --sample: 64)")
    dev_examples: Optional[int] = flag("--dev-examples", type=count(1, 10_000_000),
                                       help="the first N dev pairs (default: 128; --sample: 64)")
    seq_len: int = flag("--seq-len", type=count(MIN_PAIR_SEQ, MAX_SEQ), default=64,
                        help="max_seq_length")
    batch_size: int = flag("--batch-size", type=count(1, MAX_BATCH), default=8,
                           help="examples per optimizer step (a multiple of 4)")
    epochs: float = flag("--epochs", type=real(above=0, hi=1000), default=1.0,
                         help="steps = int(train examples / batch x epochs)")
    lr: float = flag("--lr", type=real(above=0, hi=1.0), default=5e-5,
                     help="learning rate (warmup 0.1, linear decay)")
    seed: int = flag("--seed", type=count(0, (1 << 32) - 1), default=0,
                     help="the runner's --seed: head init and batch order")
    planted: tuple[str, ...] = flag("--planted", action=AppendTuple, default=(), choices=sorted(MRPC_DDP_PLANTED),
                                    help="also run the 2-process side with this fault planted (repeatable): each "
                                         "must fail")


@dataclasses.dataclass(frozen=True)
class MrpcDdpRunnerOptions(Options):
    """``python -m parity.checks.mrpc_ddp --as-runner [--planted NAME] RUNNER_ARGS...``: the flags of its own,
    before the runner's (``bert_torch.run_classifier``'s, passed on as they are)."""
    PROG: ClassVar[str] = "python -m parity.checks.mrpc_ddp --as-runner"
    DESCRIPTION: ClassVar[str] = "bert_torch.run_classifier with a data-parallel fault planted in this process."

    planted: Optional[str] = flag("--planted", choices=sorted(MRPC_DDP_PLANTED),
                                  help="the fault to plant before the runner starts")
