"""bert-parity's harness: run two sides on the same inputs and compare every tap (``../shared/CONTRACT.md``).

Packages by concern, each importing only the ones listed after it (``pyproject.toml``, ``[tool.importlinter]``):

- ``frontdoor`` (``bert-parity``, ``python -m parity``): the commands, each imported only when it runs
- ``release``: the release gate and its report
- ``checks``: portability, GPU, mixed precision, data-parallel runs, speed
- ``diagnose``, ``evaluate``: which block is wrong, why, and a repro; task-level parity of a fine-tuned
  checkpoint (dev-set predictions and metrics)
- ``compare``, ``finetune``, ``tokens``: a comparison of every tap; fine-tuning parity; tokenizer parity
- ``candidates``: the PyTorch side under test, whatever made it
- ``sides``: the Side protocol, the official TF graph, our model, golden files, the TF cache
- ``numerics``: error measures, tolerance profiles, precision tiers, hints
- the bottom modules: ``inputs`` (the inputs both sides run and their bounds), ``files`` (where data lies),
  ``environment`` (what a report records of the machine), ``minilm`` and ``checkpoints`` (the gate's weights)

The gate's tests (``parity/test_*.py``) sit beside them: ``pytest parity/`` is the release gate.
"""
