"""bert_torch.modeling against an independent implementation (transformers) and its own contracts."""
from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from bert_torch import BertConfig, BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification, BertModel
from bert_torch.modeling import gelu_erf, gelu_tanh
from bert_torch.taps import Taps, tap_names, tap_shape
from bert_torch.weights import model_tensors

transformers = pytest.importorskip("transformers")


def small_config(**kw) -> BertConfig:
    base = dict(vocab_size=50, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=30,
                max_position_embeddings=40, type_vocab_size=2, initializer_range=0.2)
    base.update(kw)
    return BertConfig(**base)


def batch(config: BertConfig, B: int, T: int, seed: int = 0, pad: bool = True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (B, T), generator=g)
    types = torch.randint(0, config.type_vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if pad and T > 1:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        mask = (torch.arange(T)[None] < lengths[:, None]).long()
    return ids, types, mask


def hf_twin(model: BertModel, hidden_act: str):
    """transformers.BertModel holding exactly our weights (HF's "gelu" is the erf form)."""
    c = model.config
    cfg = transformers.BertConfig(**{k: v for k, v in c.to_dict().items() if k != "hidden_act"},
                                  hidden_act=hidden_act, layer_norm_eps=1e-12, attn_implementation="eager")
    hf = transformers.BertModel(cfg).eval()
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in model_tensors(model).items()}, strict=True)
    return hf


@settings(max_examples=20, deadline=None)
@given(heads=st.integers(1, 4), head_size=st.integers(1, 9), layers=st.integers(1, 3), inter=st.integers(1, 40),
       types=st.integers(1, 16), B=st.integers(1, 3), T=st.integers(1, 12), seed=st.integers(0, 2**16),
       act=st.sampled_from([("gelu_erf", "gelu"), ("gelu_tanh", "gelu_new"), ("relu", "relu")]))
def test_matches_transformers_bert(heads, head_size, layers, inter, types, B, T, seed, act):
    """Same weights, same inputs: our forward equals transformers' to float32 rounding."""
    torch.manual_seed(seed)
    config = small_config(hidden_size=heads * head_size, num_attention_heads=heads, num_hidden_layers=layers,
                          intermediate_size=inter, type_vocab_size=types, hidden_act=act[0])
    model = BertModel(config).eval()
    hf = hf_twin(model, act[1])
    ids, tt, mask = batch(config, B, T, seed)
    with torch.no_grad():
        layers_out, pooled = model(ids, tt, mask)
        ref = hf(input_ids=ids, token_type_ids=tt, attention_mask=mask, output_hidden_states=True)
    assert len(layers_out) == layers
    for ours, theirs in zip(layers_out, ref.hidden_states[1:]):
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, ref.pooler_output, atol=2e-5, rtol=1e-5)


def test_gelu_forms():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    torch.testing.assert_close(gelu_erf(x), torch.nn.functional.gelu(x))
    torch.testing.assert_close(gelu_tanh(x), torch.nn.functional.gelu(x, approximate="tanh"))
    # The two forms differ by up to ~5e-4 per element: enough to matter, too little to see by eye.
    assert 1e-4 < (gelu_erf(x) - gelu_tanh(x)).abs().max() < 1e-3


def test_every_tap_is_observable_in_contract_layout():
    config = small_config(num_hidden_layers=3)
    model = BertForQuestionAnswering(config).eval()
    ids, tt, mask = batch(config, 2, 7)
    with torch.no_grad(), Taps() as taps:
        start, end = model(ids, tt, mask)
    names = tap_names(3, "squad")
    assert list(taps.values) == names == taps.seen
    for n in names:
        assert tuple(taps.values[n].shape) == tap_shape(n, 2, 7, 24, 3, 30), n
    torch.testing.assert_close(taps.values["squad/start_logits"], start)
    # scores carry the -10000 adder at padded keys; probs there underflow to 0.
    masked = mask[:, None, None, :].expand(-1, 3, 7, -1) == 0
    assert (taps.values["layer_0/attention/scores"][masked] < -9000).all()
    assert (taps.values["layer_0/attention/probs"][masked] < 1e-30).all()


def test_injection_replaces_a_tap_downstream_only():
    config = small_config()
    model = BertModel(config).eval()
    ids, tt, mask = batch(config, 2, 6)
    with torch.no_grad(), Taps() as clean:
        model(ids, tt, mask)
    # Injecting a tap's own value changes nothing, bit for bit.
    with torch.no_grad(), Taps(inject={"layer_0/attention/probs": clean.values["layer_0/attention/probs"]}) as same:
        model(ids, tt, mask)
    assert all(torch.equal(same.values[n], clean.values[n]) for n in clean.values)
    zeros = torch.zeros_like(clean.values["layer_0/output"])
    with torch.no_grad(), Taps(inject={"layer_0/output": zeros}) as hit:
        _, pooled = model(ids, tt, mask)
    assert torch.equal(hit.values["layer_0/output"], zeros)
    assert torch.equal(hit.computed["layer_0/output"], clean.values["layer_0/output"])   # what it replaced
    assert list(hit.computed) == ["layer_0/output"]
    for n in tap_names(2):
        changed = not torch.equal(hit.values[n], clean.values[n])
        assert changed == (n.startswith("layer_1/") or n in ("layer_0/output", "pooler/output")), n
    with pytest.raises(ValueError, match="layer_0/output.*shape"):
        with Taps(inject={"layer_0/output": zeros[:, :2]}):
            model(ids, tt, mask)


def test_a_tap_recorded_or_fed_twice_in_one_context_is_refused():
    """Two forwards in one recording context would leave each tap holding the second forward's value (or
    feed one value to both): refused, naming the tap. Unrecorded and unfed, repeats stay harmless."""
    config = small_config()
    model = BertModel(config).eval()
    ids, tt, mask = batch(config, 2, 5)
    with torch.no_grad():
        for kw, name in (({}, "embeddings/word_embeddings"), ({"record": ["pooler/output"]}, "pooler/output"),
                         ({"record": False, "inject": {"layer_0/output": torch.zeros(2, 5, 24)}}, "layer_0/output")):
            with Taps(**kw) as taps:
                model(ids, tt, mask)
                with pytest.raises(ValueError, match=f"^tap {name} was published twice in one forward"):
                    model(ids, tt, mask)
        with Taps(record=False) as taps:
            model(ids, tt, mask)
            model(ids, tt, mask)
        assert taps.seen.count("pooler/output") == 2


def test_no_taps_means_no_recording_and_the_same_numbers(monkeypatch):
    """Recording changes nothing: the op-for-op path gives the same bits with and without a Taps context.
    (Without one the model normally takes its fast path, fused kernels: parity/test_fast_path.py proves that
    path against the official graph and against this one within their rounding.)"""
    from bert_torch import modeling
    monkeypatch.setattr(modeling, "FAST_PATH", False)
    config = small_config()
    model = BertModel(config).eval()
    ids, tt, mask = batch(config, 2, 5)
    with torch.no_grad():
        plain = model(ids, tt, mask)[1]
        with Taps(record=["pooler/output"]) as taps:
            tapped = model(ids, tt, mask)[1]
        with Taps(record=False):
            unrecorded = model(ids, tt, mask)[1]
    assert torch.equal(plain, tapped) and torch.equal(plain, unrecorded) and list(taps.values) == ["pooler/output"]


def test_fast_path_linear_goes_to_onednn_only_in_float32_cpu_without_taps(monkeypatch):
    """The fast path's linear layers take oneDNN's kernel (a private op) only where nothing can tell: no
    autocast, full float32 matmul precision, float32, no Taps context; elsewhere ``F.linear``. In training the
    backward's ``dy @ W`` takes it too. A recording stand-in counts the calls, so the rule is checked on any
    torch build."""
    from bert_torch import modeling
    calls = []
    monkeypatch.setattr(modeling, "_ONEDNN_LINEAR", lambda x, w, b, *rest: calls.append(x.shape) or
                        torch.nn.functional.linear(x, w, b))
    config = small_config()
    model = BertModel(config).eval()
    ids, tt, mask = batch(config, 2, 5)
    per_forward = 6 * config.num_hidden_layers + 1   # q, k, v, attention output, intermediate, output; pooler

    def linears(run) -> int:
        calls.clear()
        run()
        return len(calls)

    with torch.no_grad():
        assert linears(lambda: model(ids, tt, mask)) == per_forward
        assert calls[0] == (2 * 5, config.hidden_size)   # [B,T,H] flattened to [B*T,H]
        with Taps(record=False):
            assert linears(lambda: model(ids, tt, mask)) == 0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert linears(lambda: model(ids, tt, mask)) == 0
        precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("medium")
        try:
            assert linears(lambda: model(ids, tt, mask)) == 0
        finally:
            torch.set_float32_matmul_precision(precision)
        assert linears(lambda: model.double()(ids, tt, mask)) == 0
        model.float()
    # training: each linear forward, and where ONEDNN_INPUT_GRAD (AVX-512) each backward's product with W too
    # (every input needs its gradient); elsewhere that product is torch's mm
    monkeypatch.setattr(modeling, "ONEDNN_INPUT_GRAD", True)
    assert linears(lambda: model(ids, tt, mask)[1].sum().backward()) == 2 * per_forward
    monkeypatch.setattr(modeling, "ONEDNN_INPUT_GRAD", False)
    assert linears(lambda: model(ids, tt, mask)[1].sum().backward()) == per_forward
    with Taps(record=False):
        assert linears(lambda: model(ids, tt, mask)[1].sum().backward()) == 0


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 40), k=st.integers(1, 96), n=st.integers(1, 80), bias=st.booleans(),
       act=st.sampled_from([None, "gelu", "gelu_erf", "relu", "tanh"]), scale=st.sampled_from([0.1, 1.0, 4.0]),
       seed=st.integers(0, 2 ** 16), fused=st.booleans())
def test_fast_path_linear_is_f_linear_within_float32_rounding(rows, k, n, bias, act, scale, seed, fused):
    """oneDNN's linear against ``F.linear``: each output within the float32 rounding of a k-term dot product
    (bounded by k * 2**-23 * sum |x||w|). With the activation fused into it (oneDNN's approximations of GELU
    and tanh), within that bound times the activation's steepest slope (GELU's 1.13) plus 8 float32 epsilons of
    max(|y|, 1) (the fused GELU measured at most 1.2e-6 from F.gelu on [-12, 12]). Where this torch build has no
    such op, the fast path is F.linear and the activation, exactly. ``fused``: every probed post-op used, or
    none, whichever this CPU's policy (FUSED_ACTIVATIONS) picks."""
    from bert_torch import modeling
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(modeling, "FUSED_ACTIVATIONS", frozenset(modeling.ACTIVATION_FORMS) if fused else frozenset())
        linear_within_rounding(modeling, rows, k, n, bias, act, scale, seed)


def linear_within_rounding(modeling, rows, k, n, bias, act, scale, seed):
    g = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n, k, generator=g) * scale)
        if bias:
            layer.bias.copy_(torch.randn(n, generator=g))
        x = torch.randn(3, rows, k, generator=g)
        got, y = modeling.dense(layer, x, act), layer(x)
        want = y if act is None else modeling.FAST_ACTIVATIONS[act](y)
        bound = k * 2.0 ** -23 * (x.abs() @ layer.weight.abs().T + (layer.bias.abs() if bias else 0)) + 1e-30
        if act is not None:
            bound = 1.13 * bound + 8 * 2.0 ** -23 * y.abs().clamp(min=1.0)
    assert got.shape == want.shape == (3, rows, n)
    if modeling._ONEDNN_LINEAR is None:
        assert torch.equal(got, want)
    else:
        assert bool(((got - want).abs() <= bound).all()), float(((got - want).abs() / bound).max())


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), k=st.integers(1, 96), n=st.integers(1, 80), bias=st.booleans(),
       seed=st.integers(0, 2 ** 16), onednn_dx=st.booleans())
def test_fast_path_linear_gradients_are_f_linear_s_within_float32_rounding(rows, k, n, bias, seed, onednn_dx):
    """Training through oneDNN (``_OneDNNLinear``): the output and dL/dx within the float32 rounding of their
    dot products (k terms, n terms), dL/dW and dL/db those of F.linear's backward within an n-term
    dot product's; a planted fault (dx computed with W transposed the wrong way) is far outside. dL/dx through
    oneDNN or torch's mm (``onednn_dx``: ONEDNN_INPUT_GRAD, which this CPU decides)."""
    from bert_torch import modeling
    g = torch.Generator().manual_seed(seed)
    eps = 2.0 ** -23

    def grads(layer, x, dy, through):
        x = x.clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        y = through(layer, x)
        y.backward(dy)
        return y.detach(), x.grad, layer.weight.grad, (layer.bias.grad if bias else None)

    layer = torch.nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n, k, generator=g))
        if bias:
            layer.bias.copy_(torch.randn(n, generator=g))
    x, dy = torch.randn(3, rows, k, generator=g), torch.randn(3, rows, n, generator=g)
    with pytest.MonkeyPatch.context() as mp:   # the backward's algebra is checked on any build (onednn_linear)
        mp.setattr(modeling, "_ONEDNN_LINEAR", onednn_linear(modeling))
        mp.setattr(modeling, "ONEDNN_INPUT_GRAD", onednn_dx)
        got = grads(layer, x, dy, modeling.dense)
    want = grads(layer, x, dy, lambda l, v: l(v))
    w = layer.weight.detach()
    bounds = (k * eps * (x.abs() @ w.abs().T + (layer.bias.detach().abs() if bias else 0)) + 1e-30,
              n * eps * (dy.abs() @ w.abs()) + 1e-30,
              2 * 3 * rows * eps * (dy.abs().reshape(-1, n).T @ x.abs().reshape(-1, k)) + 1e-30,
              2 * 3 * rows * eps * dy.abs().reshape(-1, n).sum(0) + 1e-30 if bias else None)
    for name, a, b, bound in zip(("y", "dx", "dW", "db"), got, want, bounds):
        if b is not None:
            assert bool(((a - b).abs() <= bound).all()), (name, float(((a - b).abs() / bound).max()))


def onednn_linear(modeling):
    """oneDNN's linear where this torch build has it, else F.linear behind the same signature (no post-op):
    ``_OneDNNLinear``'s backward, written out by hand, is then checked against autograd's on any build."""
    return modeling._ONEDNN_LINEAR or (lambda x, w, b, attr, scalars, algorithm: torch.nn.functional.linear(x, w, b))


def test_a_wrong_backward_through_onednn_is_seen(monkeypatch):
    """Not vacuous: the gradient comparison above fails when the backward's product uses W untransposed
    (a square layer, so the shapes still fit); with oneDNN's linear, or F.linear standing in for it."""
    from bert_torch import modeling
    real = onednn_linear(modeling)
    monkeypatch.setattr(modeling, "_ONEDNN_LINEAR", real)
    monkeypatch.setattr(modeling, "ONEDNN_INPUT_GRAD", True)   # dx through the (planted) oneDNN product
    layer = torch.nn.Linear(24, 24)
    x = torch.randn(5, 24, generator=torch.Generator().manual_seed(1), requires_grad=True)
    modeling.dense(layer, x).sum().backward()
    right = x.grad.clone()
    x.grad = None
    monkeypatch.setattr(modeling, "_ONEDNN_LINEAR", lambda a, wt, *rest: real(a, wt.t().contiguous(), *rest)
                        if wt.stride(0) == 1 and wt.dim() == 2 else real(a, wt, *rest))
    modeling.dense(layer, x).sum().backward()
    assert float((x.grad - right).abs().max()) > 1e-2
    assert torch.allclose(right, layer.weight.detach().sum(0).expand(5, 24), atol=1e-5)


def test_the_fused_activation_is_the_activation(monkeypatch):
    """The activation oneDNN fuses is the one the config names: another post-op (GELU's other form, ReLU)
    is far outside the rounding bound above. Needs oneDNN's linear and its GELU post-ops, which
    every x86 build of torch this project installs has; a build without them fails here, loudly."""
    from bert_torch import modeling
    assert modeling._ONEDNN_LINEAR is not None and {"gelu", "gelu_erf"} <= set(modeling._ONEDNN_ACTIVATIONS)
    monkeypatch.setattr(modeling, "FUSED_ACTIVATIONS", frozenset(modeling.ACTIVATION_FORMS))   # on any CPU
    layer = torch.nn.Linear(16, 32)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        y = layer(x)
        for act in ("gelu", "gelu_erf"):
            assert float((modeling.dense(layer, x, act) - modeling.FAST_ACTIVATIONS[act](y)).abs().max()) < 1e-5
        tanh_form, erf_form = (modeling.dense(layer, x, a) for a in ("gelu", "gelu_erf"))
        assert float((tanh_form - erf_form).abs().max()) > 1e-4   # the two forms differ visibly at |y| ~ 3
        for planted, off_by in ((("gelu", "none"), 1e-4), (("relu", ""), 0.05)):   # a wrong post-op is seen
            monkeypatch.setitem(modeling._ONEDNN_ACTIVATIONS, "gelu", planted)
            assert float((modeling.dense(layer, x, "gelu") - modeling.FAST_ACTIVATIONS["gelu"](y)).abs().max()) > off_by


def test_post_ops_are_fused_where_they_pay(monkeypatch):
    """Transcendental post-ops (GELU, tanh) only where torch runs AVX-512 kernels (they were slower than the
    separate activation on AVX2), ReLU's everywhere; and where a post-op is not chosen, dense() calls the
    linear without one and applies the activation itself."""
    from bert_torch import modeling
    every = set(modeling.ACTIVATION_FORMS)
    for capability, fused in (("AVX512", every), ("AVX512_BF16", every), ("AVX2", {"relu"}), ("DEFAULT", {"relu"})):
        monkeypatch.setattr(modeling, "cpu_capability", lambda c=capability: c)
        assert modeling._activations_worth_fusing() == fused, capability
    seen = []
    monkeypatch.setattr(modeling, "_ONEDNN_LINEAR", lambda x, w, b, attr, scalars, algorithm: seen.append(attr)
                        or torch.nn.functional.linear(x, w, b))
    monkeypatch.setattr(modeling, "_ONEDNN_ACTIVATIONS", {"gelu": ("gelu", "tanh"), "relu": ("relu", "")})
    monkeypatch.setattr(modeling, "FUSED_ACTIVATIONS", frozenset({"relu"}))
    layer, x = torch.nn.Linear(8, 4), torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = modeling.dense(layer, x, "gelu")
        modeling.dense(layer, x, "relu")
    assert seen == ["none", "relu"]
    assert torch.equal(out, modeling.FAST_ACTIVATIONS["gelu"](layer(x).detach()))


def test_a_post_op_that_computes_another_function_is_not_used(monkeypatch):
    """The import-time probe keeps only the post-ops that compute the named function: with a stand-in whose
    GELU forms are swapped and whose ReLU is missing, only tanh is fused (checked on any torch build)."""
    from bert_torch import modeling

    def swapped(x, w, b, attr, scalars, algorithm):
        y = torch.nn.functional.linear(x, w, b)
        if attr == "gelu":
            return torch.nn.functional.gelu(y, approximate="none" if algorithm == "tanh" else "tanh")
        if attr == "relu":
            raise RuntimeError("no such post-op")
        return torch.tanh(y) if attr == "tanh" else y

    monkeypatch.setattr(modeling, "_ONEDNN_LINEAR", swapped)
    assert modeling._find_onednn_activations() == {"tanh": ("tanh", "")}


def test_config_json_round_trip_and_defaults(tmp_path):
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps({"vocab_size": 99, "hidden_size": 32, "num_attention_heads": 4, "model_type": "bert"}))
    c = BertConfig.from_json_file(str(path))
    assert c.type_vocab_size == 16 and c.hidden_act == "gelu" and c.max_position_embeddings == 512
    assert c.extra == {"model_type": "bert"}
    out = tmp_path / "out.json"
    c.to_json_file(str(out))
    assert BertConfig.from_json_file(str(out)).to_dict() == c.to_dict()
    assert json.loads(out.read_text())["model_type"] == "bert"


@pytest.mark.parametrize("bad,match", [
    ({"hidden_size": 30, "num_attention_heads": 4}, "not a multiple"),
    ({"hidden_act": "swishy"}, "hidden_act"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
])
def test_bad_config_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        BertConfig.from_dict({"vocab_size": 10, "hidden_size": 32, "num_attention_heads": 4, **bad})


@pytest.mark.parametrize("case,match", [
    ("id", "input_ids holds 50"), ("type", "token_type_ids holds 2"), ("long", "exceeds max_position_embeddings 40"),
    ("empty", "empty"),
])
def test_invalid_inputs_raise_instead_of_a_wrong_lookup(case, match):
    config = small_config()
    model = BertModel(config).eval()
    ids, tt, mask = batch(config, 2, 5)
    if case == "id":
        ids[1, 3] = 50
    elif case == "type":
        tt[0, 0] = 2
    elif case == "long":
        ids, tt, mask = batch(config, 1, 41)
    else:
        ids, tt, mask = ids[:0], tt[:0], mask[:0]
    with pytest.raises(ValueError, match=match):
        model(ids, tt, mask)


def test_heads_and_their_losses():
    config = small_config()
    ids, tt, mask = batch(config, 3, 8)
    clf = BertForSequenceClassification(config, num_labels=5).eval()
    logits = clf(ids, tt, mask)
    assert logits.shape == (3, 5)
    loss = clf(ids, tt, mask, labels=torch.tensor([0, 4, 2]))
    assert math.isclose(loss.item(), torch.nn.functional.cross_entropy(logits, torch.tensor([0, 4, 2])).item(), rel_tol=1e-6)
    pre = BertForPreTraining(config).eval()
    mlm, nsp = pre(ids, tt, mask)
    assert mlm.shape == (3, 8, 50) and nsp.shape == (3, 2)
    # The MLM decoder is the word embedding table itself, not a copy.
    names = set(pre.state_dict())
    assert "cls.predictions.bias" in names and not any("decoder" in n for n in names)
    with torch.no_grad():
        pre.bert.embeddings.word_embeddings.weight[7] += 1.0
    assert not torch.equal(pre(ids, tt, mask)[0], mlm)
