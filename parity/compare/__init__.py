"""``bert-parity compare`` and ``bert-parity dump``: both sides on the same inputs, every tap compared.

``options`` (the commands' flags and their typed options), ``core`` (the comparison, its verdict and
report.json/report.md), ``command`` (``bert-parity compare``, with a TF checkpoint or a golden file),
``golden`` (``bert-parity dump``: the official graph's inputs and taps recorded for later comparisons without
TensorFlow), ``render`` (tables and plots shared by every report), ``schema`` (the reports' JSON schemas).

Imports: ``candidates``, ``sides``, ``numerics`` and the bottom modules. ``diagnose``, ``checks`` and
``release`` build on this package.
"""
