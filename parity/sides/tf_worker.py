"""The official graph in a process of its own, for comparisons that stream their runs to disk.

``IsolatedTFSide`` is the TF reference of a spilled comparison or diagnosis (``--spill``): its first run starts
``python -m parity.sides.tf_worker SPEC``, which builds ``TFSide`` there and then serves runs, one request line on its
stdin each: the run's inputs and the taps to feed (``.npy`` files: a spilled run's own, else written by the parent),
streamed block by block (``TFSide.stream``), each tap written as a ``.npy`` file the moment it is computed, then a
manifest (tap names, description, precision) and a reply line. The parent hands the files to its ``TapStore``
without reading them (``SpilledArray``) and never imports TensorFlow: TF's runtime and the graph's copy of the
weights live in the worker and are gone when it exits, after one run (``compare``), or when ``release`` is called
(``diagnose``, whose reference runs several times, end to end and with every block fed the candidate's input: one
graph build for all of them, and none of it left under the PyTorch runs that follow: BERT-large: 1.34 GB of
variables and TF's allocations). The numbers are those of ``TFSide``: the same code on the same inputs.

Bad input found by the worker (a checkpoint that does not fit its config) is its one-line message, exit 2,
raised here as ``ValueError``; a worker killed by a signal (the out-of-memory killer's SIGKILL) is
``WorkerKilled``, one line, exit 2; any other crash is ``RuntimeError`` with the end of the worker's log.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from typing import Callable, Optional

import numpy as np

from bert_torch._io import forget_on_signal, remove_on_signal, write_json
from bert_torch.modeling import BertConfig

from parity.inputs import Inputs
from parity.sides.base import TF_NO_COMPUTED, Capabilities, SideBase
from parity.sides.tapstore import LazyTaps, SpilledArray

MANIFEST = "manifest.json"


class WorkerKilled(OSError):
    """The TF worker ended by a signal (e.g. the out-of-memory killer's SIGKILL): one line, exit 2."""


class IsolatedTFSide(SideBase):
    """``TFSide``'s taps, computed in a worker process (this module's docstring). ``tap_names``,
    ``description`` and ``precision`` are the worker's, known once a run has streamed. ``keep_alive``: the
    worker serves every run until ``release`` (else it exits after each run)."""

    name = "tensorflow"
    capabilities = Capabilities(inject=True)

    def __init__(self, checkpoint_prefix: str, config: BertConfig, head: Optional[str] = None,
                 num_labels: int = 2, intra_op_threads: Optional[int] = None, work_dir: Optional[str] = None,
                 keep_alive: bool = False):
        self.spec = {"checkpoint_prefix": os.path.abspath(checkpoint_prefix), "config": config.to_dict(),
                     "head": head, "num_labels": num_labels, "intra_op_threads": intra_op_threads}
        self.work_dir, self.keep_alive = work_dir, keep_alive
        self.tap_names: list = []
        self.description = "official TF graph (in a worker process)"
        self._proc: Optional[subprocess.Popen] = None
        self._folder: Optional[str] = None
        self._runs = 0

    def _start(self) -> None:
        self._folder = tempfile.mkdtemp(prefix="bert-parity-tf-worker-", dir=self.work_dir)
        remove_on_signal(self._folder)   # the worker's runs, should SIGTERM end this process
        spec = os.path.join(self._folder, "spec.json")
        write_json(spec, self.spec, "tf worker spec")
        with open(os.path.join(self._folder, "worker.log"), "w", encoding="utf-8") as log:
            self._proc = subprocess.Popen([sys.executable, "-m", "parity.sides.tf_worker", spec], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=log, text=True)

    def _failure(self) -> Exception:
        """The worker's ending as an exception: its one line of bad input (exit 2); killed by a signal, one line
        saying which (SIGKILL is what the kernel's out-of-memory killer sends: exit 2, as a run refused for
        its size is); else a crash, with the end of the worker's log (removed with its folder)."""
        try:
            self._proc.stdin.close()
        except OSError:   # the worker is gone: what it left unread does not matter
            pass
        code = self._proc.wait()
        with open(os.path.join(self._folder, "worker.log"), encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip() and not ln.startswith(("I0000", "W0000", "WARNING"))]
        last = lines[-1] if lines else "(no output)"
        self.release()
        if code == 2:
            return ValueError(last.removeprefix("error: "))
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            why = (" (out of memory? the kernel's OOM killer sends it: a smaller --batch-size or --seq-len, or "
                   "more free memory)") if -code == signal.SIGKILL else ""
            return WorkerKilled(f"the TF worker was killed by {name}{why}")
        tail = "\n".join(lines[-20:]) or "(no output)"
        return RuntimeError(f"the TF worker exited {code}; the end of its log:\n{tail}")

    def stream(self, inputs: Inputs, consume: Callable[[str, object], None],
               inject: Optional[Mapping[str, np.ndarray]] = None, computed: bool = False) -> None:
        if computed:
            raise ValueError(TF_NO_COMPUTED)
        if self._proc is None:
            self._start()
        run = os.path.join(self._folder, f"run{self._runs:03d}")
        self._runs += 1
        os.mkdir(run)
        try:
            np.savez(os.path.join(run, "inputs.npz"), input_ids=inputs.input_ids,
                     token_type_ids=inputs.token_type_ids, input_mask=inputs.input_mask)
            feeds = [(name, self._feed_file(inject, name, os.path.join(run, f"inject{k:05d}.npy")))
                     for k, name in enumerate(inject or ())]
            try:
                self._proc.stdin.write(json.dumps({"out": run, "inject": feeds}) + "\n")
                self._proc.stdin.flush()
                reply = self._proc.stdout.readline()
            except BrokenPipeError:
                reply = ""
            if not reply:
                raise self._failure()
            answer = json.loads(reply)
            if "error" in answer:   # the worker carries on; the run is bad input (or a full disk), one line
                raise (OSError if answer.get("os") else ValueError)(answer["error"])
            with open(os.path.join(run, MANIFEST), encoding="utf-8") as f:
                meta = json.load(f)
            self.tap_names = list(meta["tap_names"])
            self.description, self.precision = meta["description"], meta["precision"]
            for name, file in meta["files"]:
                consume(name, SpilledArray(os.path.join(run, file)))
        finally:
            shutil.rmtree(run, ignore_errors=True)
            if not self.keep_alive:
                self.release()

    @staticmethod
    def _feed_file(inject: Mapping[str, np.ndarray], name: str, spare: str) -> str:
        """A float32 ``.npy`` file of the fed tap for the worker: the one it already lies in (a spilled run's,
        ``LazyTaps.file``), else ``spare``, written from the value (one fed tap in memory at a time)."""
        file = inject.file(name) if isinstance(inject, LazyTaps) else None
        if file is not None and np.load(file, mmap_mode="r", allow_pickle=False).dtype == np.float32:
            return file
        np.save(spare, np.asarray(inject[name], np.float32), allow_pickle=False)
        return spare

    def run(self, inputs: Inputs, fetch=None, inject=None, computed=None) -> dict[str, np.ndarray]:
        if computed is not None:
            raise ValueError(TF_NO_COMPUTED)
        out: dict[str, np.ndarray] = {}
        self.stream(inputs, lambda name, value: out.__setitem__(name, np.asarray(value)), inject=inject)
        return out if fetch is None else {k: v for k, v in out.items() if k in fetch}

    def release(self) -> None:
        """Ends the worker (its TF runtime and weights go with it); a later run starts another."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.stdin.close()
                proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            forget_on_signal(self._folder)
            self._folder = None

    def close(self) -> None:
        self.release()


def work(spec_path: str) -> int:
    """The worker: builds ``TFSide``, then for each request line ``TFSide.stream`` into the request's folder,
    one ``.npy`` per tap, then the manifest and a reply line; exits when its stdin closes."""
    replies = os.fdopen(os.dup(1), "w")   # the protocol's own channel: anything printed goes to the log
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from parity.sides.base import TFSide
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    try:
        side = TFSide(spec["checkpoint_prefix"], BertConfig.from_dict(spec["config"]), head=spec["head"],
                      num_labels=spec["num_labels"], intra_op_threads=spec["intra_op_threads"])
    except ValueError as e:   # ReferenceError, CheckpointError: bad input, one line
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    try:
        for line in sys.stdin:
            request = json.loads(line)
            out = request["out"]
            with np.load(os.path.join(out, "inputs.npz"), allow_pickle=False) as z:
                inputs = Inputs(z["input_ids"], z["token_type_ids"], z["input_mask"], meta={})
            files = []

            def save(name: str, value) -> None:
                file = f"{len(files):05d}.npy"
                np.save(os.path.join(out, file), np.asarray(value), allow_pickle=False)
                files.append((name, file))

            try:
                fed = dict(request["inject"])   # tap name -> the .npy file the parent wrote, read when reached
                side.stream(inputs, save, inject=LazyTaps(fed, lambda n: np.load(fed[n], allow_pickle=False))
                            if fed else None)
            except (ValueError, OSError) as e:   # a fed tap of the wrong name or shape, a full disk: one line
                replies.write(json.dumps({"error": str(e).splitlines()[0] if str(e) else type(e).__name__,
                                          "os": isinstance(e, OSError)}) + "\n")
                replies.flush()
                continue
            write_json(os.path.join(out, MANIFEST), {"tap_names": side.tap_names, "description": side.description,
                                                     "precision": side.precision, "files": files}, "tf worker manifest")
            replies.write(json.dumps({"done": len(files)}) + "\n")
            replies.flush()
    finally:
        side.close()
    return 0


if __name__ == "__main__":
    sys.exit(work(sys.argv[1]))
