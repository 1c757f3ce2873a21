"""The official graph in a process of its own, for comparisons that stream their runs to disk (issue #13).

``IsolatedTFSide`` is the TF reference of a spilled comparison (``compare --spill``): its ``stream`` starts
``python -m parity.tf_worker SPEC``, which builds ``TFSide`` there, streams its taps block by block
(``TFSide.stream``) and writes each one as a ``.npy`` file the moment it is computed, then a manifest (tap
names, description, precision). The comparing process hands the files to its ``TapStore`` without reading
them (``SpilledArray``) and never imports TensorFlow: TF's runtime and the graph's copy of the weights live
and die with the worker, instead of sitting under the PyTorch runs that follow (BERT-large: 1.34 GB of
variables and TF's allocations). The numbers are those of ``TFSide``: the same code on the same inputs.

Bad input found by the worker (a checkpoint that does not fit its config) is its one-line message, exit 2,
raised here as ``ValueError``; a crash is ``RuntimeError`` with the worker's last line.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, Optional

import numpy as np

from bert_torch._io import write_json
from bert_torch.modeling import BertConfig

from .inputs import Inputs
from .sides import Capabilities, SideBase
from .tapstore import SpilledArray

MANIFEST = "manifest.json"


class IsolatedTFSide(SideBase):
    """``TFSide``'s taps, computed in a worker process (this module's docstring). No injection: ``diagnose``
    keeps the in-process ``TFSide``. ``tap_names``, ``description`` and ``precision`` are the worker's, known
    once a run has streamed."""

    name = "tensorflow"
    capabilities = Capabilities(inject=False)

    def __init__(self, checkpoint_prefix: str, config: BertConfig, head: Optional[str] = None,
                 num_labels: int = 2, intra_op_threads: Optional[int] = None, work_dir: Optional[str] = None):
        self.spec = {"checkpoint_prefix": os.path.abspath(checkpoint_prefix), "config": config.to_dict(),
                     "head": head, "num_labels": num_labels, "intra_op_threads": intra_op_threads}
        self.work_dir = work_dir
        self.tap_names: list = []
        self.description = "official TF graph (in a worker process)"

    def stream(self, inputs: Inputs, consume: Callable[[str, object], None]) -> None:
        folder = tempfile.mkdtemp(prefix="bert-parity-tf-worker-", dir=self.work_dir)
        try:
            np.savez(os.path.join(folder, "inputs.npz"), input_ids=inputs.input_ids,
                     token_type_ids=inputs.token_type_ids, input_mask=inputs.input_mask)
            write_json(os.path.join(folder, "spec.json"), {**self.spec, "out": folder}, "tf worker spec")
            with open(os.path.join(folder, "worker.log"), "w", encoding="utf-8") as log:
                code = subprocess.run([sys.executable, "-m", "parity.tf_worker", os.path.join(folder, "spec.json")],
                                      stdout=log, stderr=subprocess.STDOUT).returncode
            manifest = os.path.join(folder, MANIFEST)
            if code != 0 or not os.path.isfile(manifest):
                with open(os.path.join(folder, "worker.log"), encoding="utf-8", errors="replace") as f:
                    lines = [ln for ln in f.read().splitlines() if ln.strip() and not ln.startswith(("I0000", "W0000", "WARNING"))]
                last = lines[-1] if lines else "(no output)"
                raise (ValueError if code == 2 else RuntimeError)(
                    last.removeprefix("error: ") if code == 2 else f"the TF worker exited {code}: {last}")
            with open(manifest, encoding="utf-8") as f:
                meta = json.load(f)
            self.tap_names = list(meta["tap_names"])
            self.description, self.precision = meta["description"], meta["precision"]
            for name, file in meta["files"]:
                consume(name, SpilledArray(os.path.join(folder, file)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def run(self, inputs: Inputs, fetch=None, inject=None, computed=None) -> dict[str, np.ndarray]:
        if inject or computed is not None:
            raise ValueError("tensorflow worker: no injection; use parity.sides.TFSide")
        out: dict[str, np.ndarray] = {}
        self.stream(inputs, lambda name, value: out.__setitem__(name, np.asarray(value)))
        return out if fetch is None else {k: v for k, v in out.items() if k in fetch}


def work(spec_path: str) -> int:
    """The worker: ``TFSide.stream`` into the spec's folder, one ``.npy`` per tap, then the manifest."""
    from .sides import TFSide
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    out = spec["out"]
    with np.load(os.path.join(out, "inputs.npz"), allow_pickle=False) as z:
        inputs = Inputs(z["input_ids"], z["token_type_ids"], z["input_mask"], meta={})
    try:
        side = TFSide(spec["checkpoint_prefix"], BertConfig.from_dict(spec["config"]), head=spec["head"],
                      num_labels=spec["num_labels"], intra_op_threads=spec["intra_op_threads"])
    except ValueError as e:   # ReferenceError, CheckpointError: bad input, one line
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    files = []

    def save(name: str, value) -> None:
        file = f"{len(files):05d}.npy"
        np.save(os.path.join(out, file), np.asarray(value), allow_pickle=False)
        files.append((name, file))

    try:
        side.stream(inputs, save)
        write_json(os.path.join(out, MANIFEST), {"tap_names": side.tap_names, "description": side.description,
                                                 "precision": side.precision, "files": files}, "tf worker manifest")
    finally:
        side.close()
    return 0


if __name__ == "__main__":
    sys.exit(work(sys.argv[1]))
