"""Only the optional C extension lives here; everything else is in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds and the per-token int8
linear and the GGUF block quantizers fall back to torch ops (slower, same numbers), see
docs/decisions.md.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "lowbit.kernels._rowquant",
            sources=["src/lowbit/kernels/_rowquant.c"],
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno"],
            optional=True,
        ),
        Extension(
            "lowbit.formats.blocks._ggml_ref",
            sources=["src/lowbit/formats/blocks/_ggml_ref.c"],
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno", "-std=gnu11"],
            optional=True,
        ),
    ]
)
