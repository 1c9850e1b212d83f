"""Builds the ingest consumer's record-batch decoder (``push_gateway.adapters._batches``)
and the streams' socket writer (``push_gateway.adapters._sockets``).

Everything else about the package is in pyproject.toml. The extensions are optional: where
no C compiler is at hand the install still succeeds (with a warning), and the gateway
decodes with the pure-Python twin ``push_gateway.adapters.batches`` (same records, ~10x
the CPU per record) and writes with ``transport.write``, and says so in its start-up log
(``decoder=python``, ``stream_writes=transport``).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = cythonize(
    [
        Extension(
            "push_gateway.adapters._batches",
            ["src/push_gateway/adapters/_batches.pyx"],
            depends=["src/push_gateway/adapters/_crc32c.h"],
            include_dirs=["src/push_gateway/adapters"],
        ),
        Extension("push_gateway.adapters._sockets", ["src/push_gateway/adapters/_sockets.pyx"]),
    ],
    compiler_directives={"language_level": 3},
)
for extension in extensions:
    extension.optional = True  # cythonize does not carry it over

setup(ext_modules=extensions)
