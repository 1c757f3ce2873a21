"""The checkpoints the gate and the release report run: real MiniLM weights and random-init configurations.

``CONFIGS``/``SEQ`` are shared by the gate's tests (``parity/test_gate.py``, ``parity/test_golden.py``)
and the release report (``parity/release/``): product code never imports a test module, so they
live here. ``build_checkpoint``/``minilm_dir`` (``parity/minilm.py``) give the real MiniLM weights.
"""
from __future__ import annotations

from parity.minilm import build_checkpoint, minilm_dir

# Random-init checkpoints written by the official code: odd head sizes, 1 to 3 layers,
# type_vocab_size 2 and 16 (16 is also the official default when the json omits it),
# a BERT-base-shaped one, and each task head.
CONFIGS = {
    "tiny-1layer": dict(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64, type_vocab_size=2, initializer_range=0.2),
    "odd-heads-2layer": dict(vocab_size=200, hidden_size=45, num_hidden_layers=2, num_attention_heads=3,
                             intermediate_size=91, max_position_embeddings=40, initializer_range=0.1),   # D=15, types 16
    "3layer-headsize-3": dict(vocab_size=150, hidden_size=48, num_hidden_layers=3, num_attention_heads=16,
                              intermediate_size=64, max_position_embeddings=128, type_vocab_size=16,
                              initializer_range=0.05),
    "bert-base-2layer": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                             intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2),
}
SEQ = {"tiny-1layer": 24, "odd-heads-2layer": 40, "3layer-headsize-3": 33, "bert-base-2layer": 128}

__all__ = ["CONFIGS", "SEQ", "build_checkpoint", "minilm_dir"]
