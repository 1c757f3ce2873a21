"""Python source that makes TensorFlow, tf_keras and the official bert package unimportable, as in an install
without the ``tf`` extra (importing one raises ModuleNotFoundError, like a missing package). Run before the code
under test: ``python -c NO_TF + ...`` (tests/test_frontdoor.py) or as a module loaded by a .pth file
(tests/test_wheel.py)."""

def blocking(*packages: str) -> str:
    """Python source that makes ``packages`` (top-level names) unimportable, as if not installed."""
    return f"""import importlib.machinery, sys
class _Absent:
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {{spec.name!r}}", name=spec.name)
    def exec_module(self, module):
        pass
class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {packages!r}:
            return importlib.machinery.ModuleSpec(name, _Absent(), origin=None)
        return None
sys.meta_path.insert(0, _NoTensorFlow())
"""


NO_TF = blocking("tensorflow", "tf_keras", "bert")
