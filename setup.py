"""Packaging: every package under the source roots, found rather than listed by hand.

The distribution maps top-level folders onto `agentflow.*` (`compiler/` imports as
`agentflow.compiler`, and so on), which setuptools' own `find` cannot express: it would
install top-level `compiler` and `runtime` packages. Metadata lives in pyproject.toml.
"""
from setuptools import find_packages, setup

SOURCE_ROOTS = {"agentflow": "agentflow", "agentflow.compiler": "compiler",
                "agentflow.runtime": "runtime", "agentflow.grammar": "grammar"}


def packages_under(package: str, folder: str) -> list[str]:
    """`package` and every package below `folder`, named under `package`."""
    return [package, *(f"{package}.{sub}" for sub in find_packages(where=folder))]


setup(package_dir=SOURCE_ROOTS,
      packages=[p for package, folder in SOURCE_ROOTS.items() for p in packages_under(package, folder)])
