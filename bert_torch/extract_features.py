"""Extract per-token hidden states, as the official extract_features.py does in TF.

    python -m bert_torch.extract_features --input_file input.txt --output_file out.jsonl \\
        --vocab_file vocab.txt --bert_config_file bert_config.json --init_checkpoint bert_model.ckpt \\
        --layers -1,-2,-3,-4 --max_seq_length 128 --batch_size 8 [--do_lower_case]

Each input line is one sentence or ``sentence A ||| sentence B``. Each output line is the official
JSON: ``{"linex_index": i, "features": [{"token": t, "layers": [{"index": -1, "values": [...]}]}]}``
(values rounded to 6 decimals, as the official writer does). Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import io
import os
import re
import sys
from typing import Optional

import numpy as np
import torch

from ._io import read_text
from .glue import truncate_seq_pair
from .commands import ArgumentParser, run_main
from .flags import checkpoint, count, input_file, output_file
from .modeling import BertConfig, BertModel
from .run_classifier import Progress, load_init_weights, resolve_device
from .tokenization import FullTokenizer
from .weights import WeightsError


def read_lines(path: str) -> list[tuple[str, Optional[str]]]:
    """(text_a, text_b or None) per line, split on ``|||`` as the official reader does."""
    out = []
    # newline=None: universal newlines, as the official reader's text-mode file has them.
    for line in io.StringIO(read_text(path, "input file"), newline=None):
        line = line.strip()
        if not line:
            break   # the official reader stops at the first empty line
        m = re.match(r"^(.*) \|\|\| (.*)$", line)
        out.append((m.group(1), m.group(2)) if m else (line, None))
    if not out:
        raise ValueError(f"{path}: no input lines")
    return out


def featurize(a: str, b: Optional[str], tokenizer, T: int) -> tuple[list[str], list[int], list[int], list[int]]:
    """Tokens, ids, mask, segment ids of ``[CLS] a [SEP] (b [SEP])``, zero-padded to T."""
    ta = tokenizer.tokenize(a)
    tb = tokenizer.tokenize(b) if b else None
    if tb:
        truncate_seq_pair(ta, tb, T - 3)
    else:
        ta = ta[:T - 2]
    tokens = ["[CLS]", *ta, "[SEP]"] + ([*tb, "[SEP]"] if tb else [])
    segments = [0] * (len(ta) + 2) + ([1] * (len(tb) + 1) if tb else [])
    ids = tokenizer.convert_tokens_to_ids(tokens)
    pad = T - len(ids)
    return tokens, ids + [0] * pad, [1] * len(ids) + [0] * pad, segments + [0] * pad


def main(argv: Optional[list[str]] = None) -> int:
    ap = ArgumentParser(prog="python -m bert_torch.extract_features", description=__doc__.split("\n\n")[0])
    ap.add_argument("--input_file", required=True, type=input_file("input file"))
    ap.add_argument("--output_file", required=True, type=output_file("output file"))
    ap.add_argument("--vocab_file", required=True, type=input_file("vocab file"))
    ap.add_argument("--bert_config_file", required=True, type=input_file("bert_config.json"))
    ap.add_argument("--init_checkpoint", required=True, type=checkpoint(weights=True),
                    help="TF checkpoint (dir or prefix) or PyTorch weights file")
    ap.add_argument("--layers", default="-1,-2,-3,-4")
    ap.add_argument("--max_seq_length", type=count(3, 131072), default=128)
    ap.add_argument("--batch_size", type=count(1, 65536), default=32)
    ap.add_argument("--do_lower_case", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (CUDA is untested in this project)")
    ap.add_argument("--no_progress", action="store_true")
    return run_main(lambda: _extract(ap.parse_args(argv)))


def _extract(args) -> int:
    try:
        config = BertConfig.from_json_file(args.bert_config_file)
        layers = [int(x) for x in args.layers.split(",")]
        L = config.num_hidden_layers
        if any(not -L <= i < L for i in layers):
            raise ValueError(f"--layers {args.layers}: indexes must be in [-{L}, {L - 1}]")
        if not 3 <= args.max_seq_length <= config.max_position_embeddings:
            raise ValueError(f"--max_seq_length {args.max_seq_length} must be in [3, {config.max_position_embeddings}]")
        device = resolve_device(args.device)
        model = BertModel(config)
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in load_init_weights(args.init_checkpoint, config).items()}
        model.load_state_dict(state, strict=True)
        model.to(device).eval()
        tokenizer = FullTokenizer(args.vocab_file, do_lower_case=args.do_lower_case)
        lines = read_lines(args.input_file)
    except (ValueError, WeightsError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(args.output_file)), exist_ok=True)
    bar = None if args.no_progress else Progress((len(lines) + args.batch_size - 1) // args.batch_size, "extract")
    from ._io import atomic_output, dumps   # strict JSON lines, the file renamed into place when complete
    with atomic_output(args.output_file, "--output-file") as tmp, open(tmp, "w", encoding="utf-8") as out, \
            torch.no_grad():
        for start in range(0, len(lines), args.batch_size):
            feats = [featurize(a, b, tokenizer, args.max_seq_length) for a, b in lines[start:start + args.batch_size]]
            ids, mask, seg = (torch.tensor([f[k] for f in feats], device=device) for k in (1, 2, 3))
            encoded, _ = model(ids, seg, mask)
            for row, (tokens, *_rest) in enumerate(feats):
                features = []
                for t, token in enumerate(tokens):
                    features.append({"token": token, "layers": [
                        {"index": i, "values": [round(float(x), 6) for x in encoded[i][row, t].cpu().tolist()]}
                        for i in layers]})
                out.write(dumps({"linex_index": start + row, "features": features}) + "\n")
            if bar:
                bar.update()
    return 0


if __name__ == "__main__":
    sys.exit(main())
