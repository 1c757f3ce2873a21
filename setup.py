"""Only what pyproject.toml cannot say: the wheel leaves out the gate's test modules.

``pytest parity/`` (the contract's release gate) collects ``parity/test_*.py`` beside the harness, so
they live in the package directory; setuptools has no option to leave modules of a package out of a
wheel, hence this ``build_py``. Everything else is in pyproject.toml.
"""
from setuptools import setup
from setuptools.command.build_py import build_py


def is_test_module(module: str) -> bool:
    return module.startswith("test_") or module == "conftest"


class BuildPyWithoutTests(build_py):
    def find_package_modules(self, package, package_dir):
        return [(pkg, mod, path) for pkg, mod, path in super().find_package_modules(package, package_dir)
                if not is_test_module(mod)]


setup(cmdclass={"build_py": BuildPyWithoutTests})
