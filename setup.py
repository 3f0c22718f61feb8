"""The one thing pyproject.toml cannot say: encap's optional C accelerator.

``optional=True``: where it does not build (no compiler), the install goes on and
encap/gso.py serves in pure Python.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("encap._gso", ["encap/_gso.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"])])
