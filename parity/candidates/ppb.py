"""``--candidate ppb:FILE``: a pytorch-pretrained-bert 0.6.2 state dict (the original port; extra ``ppb``).

FILE is what the port's own converter writes (``convert_tf_checkpoint_to_pytorch``: a
``BertForPreTraining`` state dict, ``torch.save``d) or a task model's state dict; it is read with
``weights_only=True`` (or as safetensors). The config is ``bert_config.json`` beside FILE, else the
reference's, read as the port reads it: its ``hidden_act="gelu"`` is the erf form (the port has no
tanh GELU). The model is the port's own class, taps by forward hooks on its modules:

* q/k/v are the outputs of its ``query``/``key``/``value`` Linears, [B,T,H], viewed per head as the
  contract's [B,N,T,D];
* probs are the input of ``attention.self.dropout`` (identity in eval);
* scores are the input of the ``nn.Softmax`` the port creates afresh in every attention call, reached by
  a global forward pre-hook on ``nn.Softmax`` held only while the candidate runs, the layer told by a
  pre-hook on its ``BertSelfAttention``. They already carry the official -10000 adder.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types

import torch

from bert_torch._io import read_json, regular_file
from bert_torch.modeling import BertConfig, variant_problem
from bert_torch.taps import tap

from parity.candidates.spec import (CandidateError, CandidateSide, CandidateSpec, _Adapter, check_sizes, install_hooks,
                         official_gelu)

HEAD_KEYS = {"classifier.weight": ("BertForSequenceClassification", "classifier"),
             "qa_outputs.weight": ("BertForQuestionAnswering", "squad")}
PPB_GELU_NAMES = {"erf": "gelu", "tanh": None, "file": "bert_config.json"}   # the port has only the erf GELU


def import_ppb():
    """The port's ``file_utils`` imports boto3/botocore at import time, for S3 downloads never used here:
    when they are absent, empty stand-ins are put in ``sys.modules`` (no network is touched)."""
    if importlib.util.find_spec("pytorch_pretrained_bert") is None:
        raise CandidateError("--candidate ppb: needs pytorch-pretrained-bert 0.6.2: pip install -e '.[ppb]'")
    if "boto3" not in sys.modules and importlib.util.find_spec("boto3") is None:
        boto3 = types.ModuleType("boto3")
        boto3.resource = boto3.client = _no_s3
        botocore = types.ModuleType("botocore")
        exceptions = types.ModuleType("botocore.exceptions")
        exceptions.ClientError = type("ClientError", (Exception,), {})
        botocore.exceptions = exceptions
        for name, mod in (("boto3", boto3), ("botocore", botocore), ("botocore.exceptions", exceptions)):
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None)   # so later find_spec calls do not fail
            sys.modules.setdefault(name, mod)
    import pytorch_pretrained_bert.modeling as ppb
    return ppb


def _no_s3(*args, **kwargs):
    raise RuntimeError("bert-parity stubs boto3: no S3 access")


def read_state(path: str, where: str) -> dict:
    regular_file(path, "weights file")   # before torch or safetensors opens it: a FIFO would block them
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # torch and safetensors raise many types for a corrupt file
        raise CandidateError(f"{where}: {path} is not a readable state dict ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CandidateError(f"{where}: {path} holds no state dict of tensors")
    return state


def heads_view(name: str, num_heads: int):
    """A forward hook: a [B,T,H] Linear output published as [B,N,T,D]; a replacement goes back."""
    def hook(module, args, out):
        B, T, H = out.shape
        per_head = out.view(B, T, num_heads, H // num_heads).permute(0, 2, 1, 3)
        new = tap(name, per_head)
        return None if new is per_head else new.permute(0, 2, 1, 3).reshape(B, T, H)
    return hook


def ppb_call(model, input_ids, token_type_ids, attention_mask):
    """Runs the port with the scores hook: a pre-hook on each BertSelfAttention names the layer, and a
    global pre-hook on nn.Softmax (removed when the call returns) publishes its input as the scores."""
    layer = {}

    def on_softmax(module, args):
        if isinstance(module, torch.nn.Softmax) and "i" in layer:
            new = tap(f"layer_{layer.pop('i')}/attention/scores", args[0])
            return None if new is args[0] else (new,)
        return None

    marks = [m.register_forward_pre_hook(lambda mod, args, i=i: layer.update(i=i))
             for i, m in enumerate(model_layers(model))]
    handle = torch.nn.modules.module.register_module_forward_pre_hook(on_softmax)
    try:
        return model(input_ids, token_type_ids, attention_mask)
    finally:
        handle.remove()
        for m in marks:
            m.remove()


def model_layers(model):
    body = getattr(model, "bert", model)
    return [layer.attention.self for layer in body.encoder.layer]


def ppb_tap_map(num_layers: int, head, prefix: str) -> dict:
    p = prefix
    m = {f"{p}embeddings.word_embeddings": "embeddings/word_embeddings",
         f"{p}embeddings.token_type_embeddings": "embeddings/token_type_embeddings",
         f"{p}embeddings.position_embeddings#position": "embeddings/position_embeddings",
         f"{p}embeddings.LayerNorm#input": "embeddings/sum",
         f"{p}embeddings": "embeddings/output", f"{p}pooler": "pooler/output"}
    for i in range(num_layers):
        layer = f"{p}encoder.layer.{i}."
        m.update({layer + "attention.self.dropout#input": f"layer_{i}/attention/probs",
                  layer + "attention.self": f"layer_{i}/attention/context",
                  layer + "attention.output.dense": f"layer_{i}/attention/dense",
                  layer + "attention.output": f"layer_{i}/attention/output",
                  layer + "intermediate": f"layer_{i}/intermediate",
                  layer + "output.dense": f"layer_{i}/output/dense", layer + "output": f"layer_{i}/output"})
    m.update({"classifier": "classifier/logits"} if head == "classifier" else
             {"qa_outputs": "squad/*"} if head == "squad" else {})
    return m


def ppb_candidate(spec: CandidateSpec, config: BertConfig, device: str = "cpu") -> CandidateSide:
    where = f"--candidate {spec}"
    ppb = import_ppb()
    beside = os.path.join(os.path.dirname(os.path.abspath(spec.path)), "bert_config.json")
    if os.path.lexists(beside):   # anything of that name is read, and a FIFO or device refused by name
        cfg = read_json(beside, "bert_config.json")
        if not isinstance(cfg, dict):
            raise CandidateError(f"{where}: {beside} is not a JSON object")
    else:   # the reference's file, as the port would read it; its erf spellings name the port's "gelu"
        cfg = config.to_dict()
        cfg["hidden_act"] = "gelu" if official_gelu(cfg["hidden_act"]) == "erf" else cfg["hidden_act"]
    check_sizes(cfg, config, where)
    variant = variant_problem(cfg)   # a setting of another BERT variant: the port would not compute it either
    if variant:
        raise CandidateError(f"{where}: {beside}: {variant}")
    if cfg.get("hidden_act") not in ppb.ACT2FN:
        raise CandidateError(f"{where}: hidden_act {cfg.get('hidden_act')!r} is none of the port's "
                             f"({', '.join(ppb.ACT2FN)})")
    state = {k.replace("gamma", "weight").replace("beta", "bias"): v   # the port's own renaming at load
             for k, v in read_state(spec.path, where).items()}
    arch, head = next((v for k, v in HEAD_KEYS.items() if k in state), ("BertModel", None))
    pconfig = ppb.BertConfig.from_dict({k: v for k, v in cfg.items() if k in ppb.BertConfig(1).__dict__})
    if arch == "BertModel":   # a BertForPreTraining file: the body; cls.* heads have no contract taps
        state = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")} or state
        model = ppb.BertModel(pconfig)
    elif head == "classifier":
        model = ppb.BertForSequenceClassification(pconfig, num_labels=state["classifier.weight"].shape[0])
    else:
        model = ppb.BertForQuestionAnswering(pconfig)
    own = model.state_dict()
    misshapen = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if misshapen:   # load_state_dict would raise one RuntimeError listing them all, the file unnamed
        k = misshapen[0]
        raise CandidateError(f"{where}: {spec.path} holds {k} of shape {list(state[k].shape)}; the port's {arch} "
                             f"for this bert_config has {list(own[k].shape)}")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise CandidateError(f"{where}: {spec.path} lacks {len(result.missing_keys)} tensor(s) of the port's "
                             f"{arch}, e.g. {result.missing_keys[0]}")
    prefix = "" if arch == "BertModel" else "bert."
    install_hooks(model, ppb_tap_map(pconfig.num_hidden_layers, head, prefix), where)
    for i, attn in enumerate(model_layers(model)):
        for kind in ("query", "key", "value"):
            getattr(attn, kind).register_forward_hook(heads_view(f"layer_{i}/attention/{kind}",
                                                                 pconfig.num_attention_heads))
    files = {"weights": spec.path, **({"bert_config.json": beside} if os.path.isfile(beside) else {})}
    description = (f"pytorch-pretrained-bert 0.6.2 {arch} from {spec.path} (hidden_act={pconfig.hidden_act}: "
                   f"GELU erf in the port's meaning; config {'beside the file' if os.path.isfile(beside) else 'of the reference'}, "
                   f"float32, {device})")
    return CandidateSide(_Adapter(model, pconfig, ppb_call), spec, description, device=device, head=head,
                         gelu="erf" if pconfig.hidden_act == "gelu" else None, gelu_names=PPB_GELU_NAMES,
                         files=files)
