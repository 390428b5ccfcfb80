"""Helpers shared by lowbit's tests, under one name no installed package can own.

Test files import them as `lowbit_testkit.<module>` (pytest puts tests/ on sys.path); test
folders are named `test_<layer>` so none of them can shadow, or be shadowed by, an installed
top-level module (transformers 5 installs a package called `kernels`).
tests/test_environment.py enforces both rules.
"""
