"""Builds the ingest consumer's record-batch decoder (``push_gateway.adapters._batches``).

Everything else about the package is in pyproject.toml. The extension is optional: where
no C compiler is at hand the install still succeeds, and the gateway decodes with the
pure-Python twin ``push_gateway.adapters.batches`` (same records, ~10x the CPU per
record) and says so in its start-up log.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension(
                "push_gateway.adapters._batches",
                ["src/push_gateway/adapters/_batches.pyx"],
                depends=["src/push_gateway/adapters/_crc32c.h"],
                include_dirs=["src/push_gateway/adapters"],
                extra_compile_args=["-O2"],
                optional=True,
            )
        ],
        compiler_directives={"language_level": 3},
    )
)
