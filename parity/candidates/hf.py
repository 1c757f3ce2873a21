"""``--candidate hf:DIR``: a transformers ``save_pretrained`` directory, every contract tap observed.

Imported only when such a candidate is used (transformers is the optional extra ``hf``).

How each tap is observed, by transformers' own means (nothing of modeling_bert is copied):

* module taps by forward hooks on the modules of ``modeling_bert`` (``parity.candidates.factory.install_hooks``):
  the word/type/position lookups on the three ``nn.Embedding``s, ``embeddings/sum`` as the input of
  ``embeddings.LayerNorm``, ``attention/context`` as ``attention.self``'s output, the dense and
  LayerNorm outputs on ``attention.output(.dense)``, ``intermediate``, ``output(.dense)``, the pooler
  and the head;
* query/key/value/scores/probs by an attention function registered in HF's registry
  (``AttentionInterface.register``; the mask function under the same name in
  ``AttentionMaskInterface``). It publishes q/k/v ([B,N,T,D], already the contract layout) and
  then delegates the attention to the implementation the model was loaded with (``sdpa`` by
  default, or ``eager``), so the candidate's context is what transformers computes.
"""
from __future__ import annotations

import os
import stat
from typing import Optional

import torch

from bert_torch._io import InputFileError, read_json, regular_file
from bert_torch.hf_dir import check_hf_config
from bert_torch.modeling import BertConfig
from bert_torch.taps import LAYER_TAPS, _ACTIVE, tap

from parity.candidates.spec import (HF_GELU, HF_GELU_NAMES, CandidateError, CandidateSide, CandidateSpec, _Adapter,
                         _keyword_call, check_sizes, install_hooks)

# architectures entry -> the contract's head (None: the bare encoder and pooler)
ARCHITECTURES = {"BertModel": None, "BertForSequenceClassification": "classifier",
                 "BertForQuestionAnswering": "squad"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The official graph's attention-mask adder (modeling.py: adder = (1.0 - mask) * -10000.0).
OFFICIAL_MASK_ADDER = -10000.0


def read_hf_config(directory: str, where: str) -> dict:
    path = os.path.join(directory, "config.json")
    if not os.path.isdir(directory):
        raise CandidateError(f"{where}: {directory} is not a directory (hf: takes a save_pretrained directory)")
    if regular_file(path, "HF config", missing_ok=True) is None:
        raise CandidateError(f"{where}: no config.json in {directory}")
    try:
        cfg = read_json(path, "HF config")
    except InputFileError as e:
        raise CandidateError(f"{where}: {e}") from None
    if not isinstance(cfg, dict):
        raise CandidateError(f"{where}: {path} is not a JSON object")
    try:   # before transformers loads it: transformers ignores some of these settings, and runs others
        check_hf_config(cfg, f"hf:{path}")
    except ValueError as e:
        raise CandidateError(str(e)) from None
    if cfg.get("model_type") != "bert":
        raise CandidateError(f"{where}: {path} has model_type {cfg.get('model_type')!r}; "
                             f"only BERT (model_type 'bert') candidates are compared")
    return cfg


def check_hf_files(directory: str) -> None:
    """transformers opens the directory's files by name (config, weights, shard indexes, generation config):
    every entry is checked first, and one that is neither a folder nor a regular file (a FIFO, which would block
    the open, a device, a socket) is refused by name. A broken link is left to transformers, should it need it."""
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError:
            continue
        if not is_dir:
            regular_file(path, "HF model file")


def pick_architecture(cfg: dict, where: str) -> str:
    archs = cfg.get("architectures") or ["BertModel"]
    usable = [a for a in archs if a in ARCHITECTURES]
    if not usable:
        raise CandidateError(f"{where}: config.json architectures {archs}: none of {', '.join(ARCHITECTURES)}")
    return usable[0]


# ---------------------------------------------------------------------------------------------
# Attention: the registered function.

def _allowed(mask: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """1 where a query may attend a key, 0 where masked, whatever form HF's mask function gave:
    None (no padding), boolean (True = attend, sdpa) or additive float (0 or the dtype's min, eager)."""
    if mask is None:
        return torch.ones((), dtype=like.dtype, device=like.device)
    if mask.dtype == torch.bool:
        return mask.to(like.dtype)
    return (mask == 0).to(like.dtype)


def tapped_attention(delegate):
    """An attention function for HF's registry that publishes this layer's attention taps and
    runs ``delegate`` (the model's own implementation) for the attention itself.

    Scores, in the contract's meaning QK^T/sqrt(D) plus the mask adder, are not materialised by
    sdpa, so they are computed here from the observed q and k, with the official graph's adder
    (-10000 at masked keys). HF adds the dtype's minimum (eager) or masks inside the kernel
    (sdpa): both give masked keys probability exactly 0 in float32, as exp(-10000 - max) is 0 in
    float32 too, so the probabilities and context stay comparable, and the masked scores compare in
    the reference's convention instead of as -3.4e38 against -10000. Probs come from the delegate
    when it returns them (eager), else as the softmax of the observed scores. Injected scores or
    probs replace the attention: context = softmax(scores) @ v (or probs @ v).
    """
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        prefix = f"layer_{module.layer_idx}/attention/"
        taps = _ACTIVE.get()
        query, key, value = (tap(prefix + n, x) for n, x in (("query", query), ("key", key), ("value", value)))
        want = taps is not None and (taps.record is True or (taps.record is not False and (
            prefix + "scores" in taps.record or prefix + "probs" in taps.record)))
        replaced = taps is not None and (prefix + "scores" in taps.inject or prefix + "probs" in taps.inject)
        if not (want or replaced):
            return delegate(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        scale = query.size(-1) ** -0.5 if scaling is None else scaling
        scores = torch.matmul(query, key.transpose(-1, -2)) * scale
        scores = tap(prefix + "scores", scores + (1.0 - _allowed(attention_mask, scores)) * OFFICIAL_MASK_ADDER)
        if replaced:
            probs = tap(prefix + "probs", torch.softmax(scores, dim=-1))
            return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs
        out, weights = delegate(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        tap(prefix + "probs", weights if weights is not None else torch.softmax(scores, dim=-1))
        return out, weights
    return attention


def register_attention(model) -> str:
    """Registers (once per implementation) and selects the tapping attention for ``model``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward
    impl = model.config._attn_implementation or "eager"
    name = f"bert_parity_taps_{impl}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, tapped_attention(ALL_ATTENTION_FUNCTIONS.get_interface(
            impl, eager_attention_forward)))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
    model.set_attn_implementation(name)
    return impl


def hf_tap_map(num_layers: int, head: Optional[str], prefix: str, pooler: bool = True) -> dict:
    """module path (``#input``: its input; ``#position``: [1,T,H] -> [T,H]) -> contract tap."""
    p = prefix
    m = {f"{p}embeddings.word_embeddings": "embeddings/word_embeddings",
         f"{p}embeddings.token_type_embeddings": "embeddings/token_type_embeddings",
         f"{p}embeddings.position_embeddings#position": "embeddings/position_embeddings",
         f"{p}embeddings.LayerNorm#input": "embeddings/sum",
         f"{p}embeddings": "embeddings/output"}
    modules = {"attention/context": "attention.self", "attention/dense": "attention.output.dense",
               "attention/output": "attention.output", "intermediate": "intermediate",
               "output/dense": "output.dense", "output": "output"}
    assert set(modules) <= set(LAYER_TAPS)
    for i in range(num_layers):
        m.update({f"{p}encoder.layer.{i}.{path}": f"layer_{i}/{t}" for t, path in modules.items()})
    if pooler:
        m[f"{p}pooler"] = "pooler/output"
    if head == "classifier":
        m["classifier"] = "classifier/logits"
    elif head == "squad":
        m["qa_outputs"] = "squad/*"
    return m


def unchunk(model) -> int:
    """Turns off ``chunk_size_feed_forward`` (returned; 0: it was off). A chunked feed-forward layer computes
    the same function token by token, but runs its modules once per chunk, and the contract's taps are one
    tensor each per forward."""
    chunks = model.config.chunk_size_feed_forward
    if chunks:
        model.config.chunk_size_feed_forward = 0
        for module in model.modules():   # each BertLayer keeps its own copy of the setting
            if hasattr(module, "chunk_size_feed_forward"):
                module.chunk_size_feed_forward = 0
    return chunks


def hf_candidate(spec: CandidateSpec, config: BertConfig, device: str = "cpu") -> CandidateSide:
    where = f"--candidate {spec}"
    cfg = read_hf_config(spec.path, where)
    arch = pick_architecture(cfg, where)
    check_hf_files(spec.path)
    weights = [os.path.join(spec.path, f) for f in WEIGHT_FILES if os.path.isfile(os.path.join(spec.path, f))]
    if not weights:
        raise CandidateError(f"{where}: no weights in {spec.path} (expected {' or '.join(WEIGHT_FILES)})")
    check_sizes(cfg, config, where)
    import transformers
    try:
        # weights_only: a .bin is unpickled without code (safetensors needs no such care).
        model, info = getattr(transformers, arch).from_pretrained(
            spec.path, local_files_only=True, weights_only=True, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise CandidateError(f"{where}: transformers cannot load it ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    # A lenient load leaves missing tensors at random values: that is no candidate to verify.
    missing = [k for k in info.get("missing_keys", ()) if "position_ids" not in k]
    if missing or info.get("mismatched_keys"):
        what = missing or [str(k) for k in info["mismatched_keys"]]
        raise CandidateError(f"{where}: {weights[0]} lacks or misshapes {len(what)} tensor(s) of {arch}, "
                             f"e.g. {what[0]}")
    head = ARCHITECTURES[arch]
    chunks = unchunk(model)
    impl = register_attention(model)
    prefix = "" if arch == "BertModel" else model.base_model_prefix + "."
    pooler = getattr(model.base_model, "pooler", None) is not None
    install_hooks(model, hf_tap_map(model.config.num_hidden_layers, head, prefix, pooler), where)
    unobservable = {} if pooler else {"pooler/output": f"transformers' {arch} has no pooler (add_pooling_layer=False)"}
    act = str(model.config.hidden_act)
    gelu = HF_GELU.get(act)
    description = (f"transformers {transformers.__version__} {arch} from {spec.path} (hidden_act={act}: "
                   f"GELU {gelu or 'none'} in transformers' meaning, attention {impl}, float32, {device}"
                   + (f"; chunk_size_feed_forward {chunks} run unchunked: the same function, its feed-forward "
                      f"taps whole" if chunks else "") + ")")
    files = {os.path.basename(w): w for w in weights}
    files["config.json"] = os.path.join(spec.path, "config.json")
    return CandidateSide(_Adapter(model, model.config, _keyword_call), spec, description, device=device,
                         head=head, gelu=gelu, gelu_names=HF_GELU_NAMES, unobservable=unobservable, files=files)
