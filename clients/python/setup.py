"""Build hook: generates the gRPC stubs (the `agentd` package) before setuptools
collects the package, on every build (wheel, editable install, sdist).

The static metadata is in pyproject.toml; only what depends on the generated
code is here: the package list (one per proto directory) and the commands
that run generate.py first.
"""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.egg_info import egg_info
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent


def _load_generator():
    # setup.py's directory is not necessarily on sys.path under PEP 517 builds.
    spec = importlib.util.spec_from_file_location("agentd_client_generate", HERE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _load_generator()


def _generating(command):
    """A setuptools command class that generates the stubs before it runs."""

    class Command(command):
        def run(self):
            generator.generate()
            super().run()

    Command.__name__ = command.__name__
    return Command


setup(
    package_dir={"": "src"},
    packages=["autogpt_client", *generator.packages()],
    package_data={"": ["*.pyi", "py.typed", generator.STAMP]},
    cmdclass={name: _generating(cls) for name, cls in (("build_py", build_py), ("egg_info", egg_info), ("sdist", sdist))},
)
