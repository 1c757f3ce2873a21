"""The PyTorch side under test, whatever made it: ``--candidate KIND:PATH``.

``spec`` (parsing ``KIND:PATH``; the side that wraps any PyTorch BERT and reads its taps through hooks),
``factory`` (one spec to one side), one module per kind that needs its own reading of taps: ``hf``
(transformers' BertModel directories), ``ppb`` (the original pytorch-pretrained-BERT port), ``onnx`` (an ONNX
file run by onnxruntime); ``export_onnx`` (``bert-parity export-onnx``: any candidate to an ONNX file with every
tap as a graph output, optionally fused or int8-quantized by onnxruntime); ``transforms`` (``--transform compile |
int8-dynamic``: a PyTorch candidate compiled or quantized, and the verdict rule of a lossy form).

Imports: ``sides``, ``numerics`` and the bottom modules; a candidate's own library only inside the boundary
that turns its errors into bad input (``bert_torch.commands.foreign``).
"""
