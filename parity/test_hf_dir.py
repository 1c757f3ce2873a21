"""HF directories both ways (bert_torch/hf_dir.py): `convert --output-format hf` writes a folder that transformers'
AutoModel and AutoTokenizer load offline and that computes the official graph's function (the tanh GELU written
as HF's gelu_new, erf as HF's gelu); `--to-tf` takes such a folder back to the very same checkpoint."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bert_torch import convert
from bert_torch.tf_checkpoint import read_checkpoint
from bert_torch.tokenization import FullTokenizer
from parity import frontdoor
from parity.inputs import SAMPLE, read_pairs
from parity.minilm import build_checkpoint


def to_hf(ckpt_dir: str, out: str) -> str:
    assert convert.main(["--tf-checkpoint", ckpt_dir, "--output-format", "hf", "--output", out]) == 0
    return out


@pytest.mark.heavy
@pytest.mark.parametrize("act,hf_act", [("gelu", "gelu_new"), ("gelu_erf", "gelu")])
def test_hf_directory_loads_offline_and_computes_the_official_graph(tmp_path, monkeypatch, capsys, act, hf_act,
                                                                    minilm, minilm_golden):
    """The tanh graph (the checkpoint conftest's ``minilm`` already is) is its recorded golden run, replayed bit
    for bit; the erf graph is run live."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ck = minilm if act == "gelu" else build_checkpoint(str(tmp_path / "ckpt"), hidden_act=act)
    out = to_hf(ck["dir"], str(tmp_path / "hf"))
    assert json.loads(open(os.path.join(out, "config.json")).read())["hidden_act"] == hf_act
    model = transformers.AutoModel.from_pretrained(out, local_files_only=True)
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert type(model).__name__ == "BertModel"
    ours = FullTokenizer(ck["vocab"], do_lower_case=True)
    for a, _ in read_pairs(SAMPLE)[:20]:   # the same word pieces as the checkpoint's own tokenizer
        assert tok.convert_ids_to_tokens(tok(a, add_special_tokens=False)["input_ids"]) == ours.tokenize(a)
    reference = ["--golden", minilm_golden] if act == "gelu" else \
        ["--tf-checkpoint", ck["dir"], "--batch-size", "2", "--seq-len", "32"]
    code = frontdoor.main(["compare", *reference, "--candidate", f"hf:{out}", "--report-dir", str(tmp_path / "r")])
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert code == 0, capsys.readouterr().out
    form = {"gelu": "tanh", "gelu_erf": "erf"}[act]
    assert report["sides"]["gelu"] == {"reference": form, "candidate": form}


def test_hf_directory_back_to_the_same_checkpoint(tmp_path):
    ck = build_checkpoint(str(tmp_path / "ckpt"), hidden_act="gelu_erf")
    out = to_hf(ck["dir"], str(tmp_path / "hf"))
    back = str(tmp_path / "back" / "bert_model.ckpt")
    assert convert.main(["--to-tf", "--torch-weights", out, "--output", back]) == 0
    a, b = read_checkpoint(ck["prefix"]), read_checkpoint(back)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    # The erf GELU survives the round trip by meaning: HF's "gelu" is the official config's "gelu_erf".
    assert json.loads(open(os.path.join(os.path.dirname(back), "bert_config.json")).read())["hidden_act"] == "gelu_erf"


def test_hf_bad_inputs_are_one_line(tmp_path, capsys):
    ck = build_checkpoint(str(tmp_path / "ckpt"))
    (tmp_path / "file").write_text("x")
    assert convert.main(["--tf-checkpoint", ck["dir"], "--output-format", "hf", "--output", str(tmp_path / "file")]) == 2
    out = to_hf(ck["dir"], str(tmp_path / "hf"))
    cfg = json.loads(open(os.path.join(out, "config.json")).read())
    for name, change in (("roberta", {"model_type": "roberta"}), ("eps", {"layer_norm_eps": 1e-5})):
        bad = tmp_path / name
        to_hf(ck["dir"], str(bad))
        (bad / "config.json").write_text(json.dumps({**cfg, **change}))
        capsys.readouterr()
        assert convert.main(["--to-tf", "--torch-weights", str(bad), "--output", str(tmp_path / "x" / "c")]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and "config.json" in err[0] and not (tmp_path / "x").exists(), err
    os.remove(os.path.join(out, "model.safetensors"))
    assert convert.main(["--to-tf", "--torch-weights", out, "--output", str(tmp_path / "y" / "c")]) == 2
