"""Checks of scale and hardware, each a command of its own.

``portability`` (``bert-parity portability``: MiniLM and the mutation suite under emulated CPUs), ``gpu``
(``bert-parity gpu-check``: candidate tiers on CUDA against CPU golden files), ``amp`` (mixed-precision
fine-tuning), ``ddp`` and ``mrpc_ddp`` (data-parallel training and gradient accumulation against one process),
``bench`` (``bert-parity bench``: speed against peers in the same run; asserts nothing).

Imports: ``compare``, ``finetune``, ``candidates``, ``sides``, ``numerics`` and the bottom modules; only
``release`` and the front door sit above.
"""
