"""Build the one C extension (the replication hot path); everything else is in pyproject.toml.

The extension is optional at build time: without a C compiler Pulse installs
and runs on the pure-Python reader (`pulse doctor` and the log say so).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pulse.source._wire",
            sources=["src/pulse/source/_wire.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
            optional=True,
        )
    ]
)
