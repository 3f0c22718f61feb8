"""The one thing pyproject.toml cannot say: two optional C extensions.

``encap._gso`` cuts and joins TCP super-packets (encap/gso.py is its reference),
``tunnelrouter.io._mmsg`` gives Python sendmmsg and recvmmsg (io/underlay.py sends
one datagram per call without it). ``optional=True``: where they do not build (no
compiler), the install goes on and the Python paths serve.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(ext_modules=[
    Extension("encap._gso", ["encap/_gso.c"], optional=True, extra_compile_args=FLAGS),
    Extension("tunnelrouter.io._mmsg", ["tunnelrouter/io/_mmsg.c"], optional=True,
              extra_compile_args=FLAGS),
])
