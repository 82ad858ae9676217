"""Import the ``envs`` package before any test module of this folder.

This folder is named like the package it tests. Under pytest's default ``prepend`` import mode a
test file directly in ``tests/`` puts ``tests/`` on ``sys.path``; if the repository root is not on
``sys.path`` too (plain ``pytest`` rather than ``python -m pytest``), ``import envs`` would then find
this folder as an empty namespace package. Importing the real package here, when pytest first
enters this folder, avoids that in the usual collection order, and fails clearly otherwise.
"""

from __future__ import annotations

import envs

if getattr(envs, "__file__", None) is None:
    raise ImportError(
        "`import envs` found the tests/envs folder instead of the envs package. Run `python -m pytest` "
        'from the repository root, or add `pythonpath = ["."]` to [tool.pytest.ini_options].'
    )
