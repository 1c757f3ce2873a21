"""Stage 7: ``repro/`` for the culprit block: its reference inputs and outputs, its weights, and a
standalone ``repro.py`` that shows the error with ``bert_torch`` alone."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from bert_torch._io import atomic_dir
from bert_torch.modeling import BertConfig

from parity.numerics.metrics import Profile

REPRO_SCRIPT = '''\
"""Reproduces the {block} mismatch with bert_torch alone (exit 1 when it reproduces).

    python repro.py

The block is fed TensorFlow's input to it ({input_desc}); its taps are compared with
TensorFlow's, element by element: |pytorch - tensorflow| <= atol + rtol * |tensorflow|.
"""
import os
import sys

import torch
from safetensors.torch import load_file

from bert_torch import BertConfig, Taps
from bert_torch.modeling import HEADS

here = os.path.dirname(os.path.abspath(__file__))
config = BertConfig.from_json_file(os.path.join(here, "bert_config.json"))
model = HEADS[{head!r}](config{labels}).eval()
names = model.state_dict().keys()
weights = load_file(os.path.join(here, "weights.safetensors"))   # this block's weights only
model.load_state_dict({{(n if n in names else "bert." + n): t for n, t in weights.items()}}, strict=False)
t = load_file(os.path.join(here, "tensors.safetensors"))
inject = {{{inject}}}
with torch.no_grad(), Taps(inject=inject) as taps:
    model(t["input_ids"], t["token_type_ids"], t["input_mask"])
failed = False
for name, (atol, rtol) in {taps!r}.items():
    got = taps.computed.get(name, taps.values[name]).double()
    want = t["tensorflow/" + name].double()
    err = (got - want).abs()
    ok = bool((err <= atol + rtol * want.abs()).all())
    failed |= not ok
    print(f"{{name:<36}} max_abs {{err.max().item():.3g}}  {{'ok' if ok else 'MISMATCH'}}")
sys.exit(1 if failed else 0)
'''


def write_repro(diagnosis: dict, report_dir: str, config: BertConfig, profile: Profile, head: Optional[str],
                num_labels: int = 2) -> Optional[str]:
    """``repro/`` for the culprit block; None when no block fails locally (or activations did not run)."""
    arrays = getattr(diagnosis, "repro", None)   # a Diagnosis whose activations ran
    block_name = diagnosis.get("culprit_block")
    if arrays is None or not block_name:
        return None
    b = next((x for x in arrays.blocks if x.name == block_name), None)
    if b is None:
        return None
    final = os.path.join(report_dir, "repro")
    with atomic_dir(final, "repro folder") as out:   # written aside, renamed into place when complete
        _write_repro_files(out, b, arrays, config, profile, head, num_labels)
    diagnosis["repro"] = "repro"   # beside diagnosis.json (the folder is written aside, then renamed)
    return final


def _write_repro_files(out: str, b, arrays, config: BertConfig, profile: Profile, head: Optional[str],
                       num_labels: int) -> None:
    from bert_torch._io import save_safetensors as save_file  # plain writes: a full disk is an OSError

    from parity.numerics.hints import block_of_weight
    inputs, ref = arrays.inputs, arrays.ref
    tensors = {"input_ids": np.asarray(inputs.input_ids, np.int64), "token_type_ids": np.asarray(inputs.token_type_ids, np.int64),
               "input_mask": np.asarray(inputs.input_mask, np.int64)}
    if b.input:
        tensors[f"input/{b.input}"] = ref[b.input]
    tensors.update({f"tensorflow/{t}": ref[t] for t in b.taps})
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(out, "tensors.safetensors"))
    tw = arrays.torch_weights or {}
    save_file({k: np.ascontiguousarray(v) for k, v in tw.items() if block_of_weight(k) == b.name},
              os.path.join(out, "weights.safetensors"))
    config.to_json_file(os.path.join(out, "bert_config.json"))
    model_head = head if head in ("classifier", "squad") else None
    script = REPRO_SCRIPT.format(
        block=b.name, input_desc=f"tap {b.input}" if b.input else "the token ids", head=model_head,
        labels=f", num_labels={num_labels}" if model_head == "classifier" else "",
        inject=f'"{b.input}": t["input/{b.input}"]' if b.input else "",
        taps={t: profile.tolerance(t) for t in b.taps})
    with open(os.path.join(out, "repro.py"), "w", encoding="utf-8") as f:
        f.write(script)
