"""Fine-tune and predict SQuAD v1.1 in PyTorch, as the official run_squad.py does in TF.

    python -m bert_torch.run_squad --do_train --do_predict --do_lower_case \\
        --train_file train-v1.1.json --predict_file dev-v1.1.json --vocab_file vocab.txt \\
        --bert_config_file bert_config.json --init_checkpoint bert_model.ckpt \\
        --max_seq_length 384 --doc_stride 128 --train_batch_size 12 --learning_rate 3e-5 \\
        --num_train_epochs 2.0 --output_dir out

Features, n-best search and answer projection are ``bert_torch.squad`` (identical to the official
code's); the loss is the official (start CE + end CE) / 2; the optimizer and step count as in
``run_classifier`` (its dropout flags and ``train_log.json`` too). Writes ``predictions.json`` and
``nbest_predictions.json``, and when the predict file carries answers, ``eval_results.txt`` with the
official v1.1 exact match and F1.
Exit codes: 0 done, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import numpy as np
import torch

from . import distributed, squad
from .commands import ArgumentParser, run_main
from .flags import count, input_file
from .modeling import BertForQuestionAnswering
from .run_classifier import (Progress, add_common_args, check_common_args, load_body, load_init_weights,
                             model_config, resolve_device, run_and_print, save_model, set_seed, train_loop,
                             write_train_log)
from .tokenization import FullTokenizer


def feature_arrays(features, is_training: bool) -> dict[str, np.ndarray]:
    out = {"input_ids": np.array([f.input_ids for f in features], dtype=np.int64),
           "segment_ids": np.array([f.segment_ids for f in features], dtype=np.int64),
           "input_mask": np.array([f.input_mask for f in features], dtype=np.int64)}
    if is_training:
        out["start_positions"] = np.array([f.start_position for f in features], dtype=np.int64)
        out["end_positions"] = np.array([f.end_position for f in features], dtype=np.int64)
    return out


def run(args) -> dict:
    args.world = distributed.world_from_env(getattr(args, "local_rank", None))
    config = args.model_config = model_config(args)
    check_common_args(args, config)
    if not args.do_train and not args.do_predict:
        raise ValueError("at least one of --do_train and --do_predict must be given")
    if args.do_train and not args.train_file:
        raise ValueError("--do_train needs --train_file")
    if args.do_predict and not args.predict_file:
        raise ValueError("--do_predict needs --predict_file")
    if args.max_seq_length <= args.max_query_length + 3:
        raise ValueError(f"--max_seq_length {args.max_seq_length} must exceed --max_query_length "
                         f"{args.max_query_length} + 3")
    device = torch.device(distributed.init(args.world, str(resolve_device(args.device))))
    set_seed(args.seed)
    tokenizer = FullTokenizer(args.vocab_file, do_lower_case=args.do_lower_case)
    model = BertForQuestionAnswering(config)
    if args.init_checkpoint:
        load_body(model, load_init_weights(args.init_checkpoint, config))
    model.to(device)
    os.makedirs(args.output_dir, exist_ok=True)
    results = {}
    if args.do_train:
        examples = squad.read_squad_examples(args.train_file, is_training=True)
        features = squad.convert_examples_to_features(examples, tokenizer, args.max_seq_length, args.doc_stride,
                                                      args.max_query_length, is_training=True)
        keys = ("input_ids", "segment_ids", "input_mask", "start_positions", "end_positions")
        trained = train_loop(model, feature_arrays(features, True), keys, args, device,
                             lambda m, b: m(b[0], b[1], b[2], start_positions=b[3], end_positions=b[4]))
        results.update({f"train_{k}": v for k, v in trained.items() if not k.startswith("step_")})
        if args.world.main:   # one writer
            save_model(model, config, args.output_dir)
            write_train_log(os.path.join(args.output_dir, "train_log.json"), trained, args)
    distributed.finish(args.world)
    if args.do_predict and args.world.main:
        examples = squad.read_squad_examples(args.predict_file, is_training=False)
        features = squad.convert_examples_to_features(examples, tokenizer, args.max_seq_length, args.doc_stride,
                                                      args.max_query_length, is_training=False)
        arrays = feature_arrays(features, False)
        model.eval()
        raw = []
        bs = args.predict_batch_size
        bar = None if args.no_progress else Progress((len(features) + bs - 1) // bs, "predict")
        with torch.no_grad():
            for i in range(0, len(features), bs):
                b = [torch.from_numpy(arrays[k][i:i + bs]).to(device) for k in ("input_ids", "segment_ids", "input_mask")]
                start, end = model(*b)
                for f, s, e in zip(features[i:i + bs], start.float().cpu().tolist(), end.float().cpu().tolist()):
                    raw.append(squad.RawResult(f.unique_id, s, e))
                if bar:
                    bar.update()
        predictions, nbest = squad.write_predictions(examples, features, raw, args.n_best_size,
                                                     args.max_answer_length, args.do_lower_case)
        from ._io import write_json   # strict JSON (NaN as "nan"), written atomically
        write_json(os.path.join(args.output_dir, "predictions.json"), predictions, "predictions", indent=4)
        write_json(os.path.join(args.output_dir, "nbest_predictions.json"), nbest, "predictions", indent=4)
        dataset = squad.read_dataset(args.predict_file)
        if any(qa.get("answers") for a in dataset for p in a["paragraphs"] for qa in p["qas"]):
            metrics = squad.evaluate(dataset, predictions)
            results.update({"exact_match": metrics["exact_match"], "f1": metrics["f1"], "questions": metrics["total"]})
            with open(os.path.join(args.output_dir, "eval_results.txt"), "w", encoding="utf-8") as f:
                for k in sorted(results):
                    f.write(f"{k} = {results[k]}\n")
    return results


def main(argv: Optional[list[str]] = None) -> int:
    ap = ArgumentParser(prog="python -m bert_torch.run_squad", description=__doc__.split("\n\n")[0])
    ap.add_argument("--train_file", type=input_file("SQuAD train file"))
    ap.add_argument("--predict_file", type=input_file("SQuAD predict file"))
    ap.add_argument("--do_predict", action="store_true")
    ap.add_argument("--doc_stride", type=count(1, 131072), default=128)
    ap.add_argument("--max_query_length", type=count(1, 131072), default=64)
    ap.add_argument("--predict_batch_size", type=count(1, 65536), default=8)
    ap.add_argument("--n_best_size", type=count(1, 10000), default=20)
    ap.add_argument("--max_answer_length", type=count(1, 131072), default=30)
    add_common_args(ap)
    ap.set_defaults(max_seq_length=384, train_batch_size=12, learning_rate=3e-5, num_train_epochs=2.0)
    return run_main(lambda: run_and_print(run, ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
