"""Packaging: ship the repository's devices/, circuits/, chips/ and data/ inside the package.

The folders stay at the repository's top level, where users and the README find them; the build
maps each onto a data-only package, `analog_ep.library.<kind>` (setuptools `package_dir`), so an
installed wheel holds `analog_ep/library/<kind>/*.yaml`, where `analog_ep.config.library` looks
first. A source checkout or an editable install reads the top-level folders themselves. Everything
else about the project is in pyproject.toml.
"""
from setuptools import find_packages, setup

LIBRARY = {f"analog_ep.library.{kind}": kind for kind in ("devices", "circuits", "chips", "data")}
#: What each library folder ships: the YAML files, and data/'s measurements with their README.
FILES = {"data": ["*.csv", "README.md"]}

setup(packages=[*find_packages(include=["analog_ep", "analog_ep.*"]), *LIBRARY],
      package_dir=LIBRARY, package_data={package: FILES.get(kind, ["*.yaml"]) for package, kind in LIBRARY.items()})
