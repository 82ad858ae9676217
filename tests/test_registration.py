"""``import ebmm_rl`` registers the ``ebmm/...`` gymnasium ids; ``gym.make("ebmm_rl:<id>")`` needs no import at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import envs

ROOT = Path(__file__).resolve().parents[1]


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter (nothing registered yet) with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


def test_import_ebmm_rl_registers_every_id():
    done = _fresh_python(
        "import gymnasium as gym\n"
        "assert 'ebmm/BinaryRecall-v0' not in gym.registry\n"
        "import ebmm_rl\n"
        "print('\\n'.join(i for i in gym.registry if i.startswith('ebmm/')))\n"
        "env = gym.make('ebmm/KeyValueRecall-Easy-v0')\n"
        "print(type(env.unwrapped).__name__)\n"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[:-1] == [*envs.ENV_IDS, *envs.POMDP_IDS]
    assert lines[-1] == "KeyValueRecallEnv"


def test_module_prefix_makes_the_env_in_a_fresh_process():
    done = _fresh_python(
        "import sys\n"
        "import gymnasium as gym\n"
        "env = gym.make('ebmm_rl:ebmm/BinaryRecall-v0')\n"
        "obs, _ = env.reset(seed=0)\n"
        "print(env.spec.id, type(env.unwrapped).__name__, sorted(obs), 'ebmm_rl' in sys.modules)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ebmm/BinaryRecall-v0", "BinaryRecallEnv", "['pattern',", "'phase',", "'step']",
                                   "True"]  # fmt: skip


def test_envs_alone_imports_numpy_and_gymnasium_only():
    done = _fresh_python("import sys, envs\nprint(*(m in sys.modules for m in ('torch', 'ebmm_rl', 'PIL')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "False"]
