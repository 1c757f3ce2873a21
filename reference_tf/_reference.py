"""TFReference: the official graph, restored from a checkpoint, with every tap fetchable and injectable."""
from __future__ import annotations

from typing import Iterable, Mapping, Optional

import numpy as np
import tensorflow as tf
import tensorflow.compat.v1 as tf1

from bert_torch.taps import HEAD_TAPS, tap_names, tap_shape

from ._errors import ReferenceError
from ._official import build, first_line, load_config, official_config, restore
from ._taps import Tap, find_taps


class TFReference:
    """Google's official BERT graph (bert-tensorflow, unmodified) at is_training=False.

    ``run`` returns contract taps (CONTRACT.md) in the contract layout and can feed values in
    place of any of them. The graph takes dynamic [batch, seq_len] inputs, so one graph serves
    every input shape. Each instance owns its tf.Graph and Session, so several can coexist.
    """

    def __init__(self, init_checkpoint: str, bert_config: dict | str, *, head: Optional[str] = None,
                 num_labels: int = 2, intra_op_threads: Optional[int] = None):
        if head not in HEAD_TAPS:
            raise ReferenceError(f"unknown head {head!r}; expected None, 'classifier' or 'squad'")
        config, self.description = official_config(load_config(bert_config))
        self._config = config
        self._num_labels = num_labels
        built = build(config, head, num_labels)
        self._inputs = (built.input_ids, built.token_type_ids, built.input_mask)
        self._taps: dict[str, Tap] = find_taps(built, config, head, num_labels)
        self.tap_names: list[str] = tap_names(config.num_hidden_layers, head)
        session_config = tf1.ConfigProto()
        if intra_op_threads:
            session_config.intra_op_parallelism_threads = intra_op_threads
        self._session = tf1.Session(graph=built.graph, config=session_config)
        try:
            restore(self._session, init_checkpoint)
        except BaseException:
            self.close()
            raise

    @property
    def precision(self) -> dict:
        """The arithmetic this graph ran in: float32, except that TensorFlow runs float32 matmuls in TF32
        on a GPU that has it (Ampere and later) unless TF32 execution is disabled: a reference recorded
        there is not float32 (parity's ``tf32_reference`` hint recognises one)."""
        gpus = tf.config.list_physical_devices("GPU")
        tf32 = bool(gpus) and tf.config.experimental.tensor_float_32_execution_enabled()
        return {"tier": "tf32" if tf32 else "fp32", "device": "gpu" if gpus else "cpu",
                "tensor_float_32_execution_enabled": tf.config.experimental.tensor_float_32_execution_enabled()}

    def _tap(self, name: str) -> Tap:
        try:
            return self._taps[name]
        except KeyError:
            raise ReferenceError(f"unknown tap {name!r} for this model") from None

    def _shape(self, name: str, batch: int, seq: int) -> tuple[int, ...]:
        c = self._config
        return tap_shape(name, batch, seq, c.hidden_size, c.num_attention_heads,
                         c.intermediate_size, self._num_labels)

    def run(self, input_ids, token_type_ids, input_mask, *, fetch: Optional[Iterable[str]] = None,
            inject: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
        """Run the graph on int [B,T] inputs; return the taps in ``fetch`` (default all), as
        float32 arrays in the contract layout, with ``inject``'s arrays (contract layout) fed in
        place of their taps, so they replace those tensors for everything downstream."""
        if self._session is None:
            raise ReferenceError("this TFReference is closed")
        arrays = [np.asarray(a) for a in (input_ids, token_type_ids, input_mask)]
        if arrays[0].ndim != 2 or any(a.shape != arrays[0].shape for a in arrays):
            raise ReferenceError("input_ids, token_type_ids and input_mask must share one [batch, seq_len] "
                                 f"shape; got {[list(a.shape) for a in arrays]}")
        if not all(np.issubdtype(a.dtype, np.integer) or a.dtype == bool for a in arrays):
            raise ReferenceError(f"inputs must be integer arrays; got {[str(a.dtype) for a in arrays]}")
        batch, seq = arrays[0].shape
        if seq > self._config.max_position_embeddings:
            raise ReferenceError(f"seq_len {seq} exceeds max_position_embeddings "
                                 f"{self._config.max_position_embeddings}")
        feed = {ph: a.astype(np.int32) for ph, a in zip(self._inputs, arrays)}
        for name, value in (inject or {}).items():
            tap = self._tap(name)
            value = np.asarray(value, dtype=np.float32)
            expected = self._shape(name, batch, seq)
            if value.shape != expected:
                raise ReferenceError(f"injected tap {name}: shape {list(value.shape)}, expected {list(expected)}")
            feed[tap.tensor] = tap.layout.to_graph(value)
        names = self.tap_names if fetch is None else list(fetch)
        fetches = {name: self._tap(name).tensor for name in names}
        try:
            values = self._session.run(fetches, feed)
        except tf1.errors.OpError as e:
            raise ReferenceError(f"official graph failed: {first_line(e)}") from None
        out = {}
        for name in names:
            value = np.ascontiguousarray(self._taps[name].layout.to_contract(values[name]), dtype=np.float32)
            if value.shape != self._shape(name, batch, seq):
                raise ReferenceError(f"tap {name}: the graph gave shape {list(value.shape)}, "
                                     f"the contract says {list(self._shape(name, batch, seq))}")
            out[name] = value
        return out

    def close(self) -> None:
        """Release the session (idempotent)."""
        session = getattr(self, "_session", None)
        if session is not None:
            session.close()
            self._session = None

    def __enter__(self) -> "TFReference":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
