"""What a difference between two tensors means: the numbers behind every verdict.

``metrics`` (the error measures and the tolerance profiles), ``precision`` (the precision tiers: fp32 with TF32
off, TF32, bf16, fp16, and what each is allowed), ``hints`` (root causes named from an error's signature: GELU
variant, LayerNorm epsilon, transposed weights, ...).

Imports: the bottom modules of ``parity`` (``inputs``, ``files``) and ``bert_torch`` at most; every other
package of the harness may import this one.
"""
