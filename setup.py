"""Install the four top-level folders as one import package, ``wharfd``.

All metadata lives in pyproject.toml; this file only computes the folder
mapping so it cannot drift from the tree.
"""

from setuptools import find_packages, setup

ROOTS = ("cri", "runtime", "cni", "api")

setup(
    package_dir={f"wharfd.{root}": root for root in ROOTS},
    # ``wharfd`` itself is an implicit namespace package: it holds no code.
    packages=[f"wharfd.{pkg}" for pkg in find_packages(include=[f"{root}*" for root in ROOTS])],
)
