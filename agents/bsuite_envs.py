"""bsuite's memory experiments at fixed settings, as gymnasium ids (through shimmy: ``pip install -e ".[bsuite]"``).

``bsuite/memory_len-L{L}-v0`` is bsuite's ``memory_chain`` with ``memory_length=L`` and one bit (its ``memory_len``
sweep): the first observation shows a context bit, every step shows the time left, and after ``L`` steps the agent
must name the bit (reward +1 or -1, 0 before; chance 0). ``bsuite/memory_size-B{N}-v0`` is the same with
``num_bits=N`` and ``memory_length=2`` (its ``memory_size`` sweep; the query names which bit). Importing this module
registers them for every setting of bsuite's two sweeps; ``agents.train --env bsuite/memory_len-L30-v0`` imports it
(also in SubprocVecEnv workers).
"""

from __future__ import annotations

import gymnasium as gym

MEMORY_LENGTHS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 17, 20, 25, 30, 40, 50, 60, 70, 80, 90, 100)
"""bsuite's ``memory_len`` sweep."""
MEMORY_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 17, 20, 25, 30, 40)
"""bsuite's ``memory_size`` sweep."""


def make_memory_chain(memory_length: int, num_bits: int = 1) -> gym.Env:
    """Bsuite's ``MemoryChain`` as a gymnasium env (shimmy's compatibility wrapper).

    Raises:
        ImportError: bsuite or shimmy is not installed (the message names the extra).
    """
    try:
        from bsuite.environments.memory_chain import MemoryChain
        from shimmy.bsuite_compatibility import BSuiteCompatibilityV0
    except ImportError as error:
        raise ImportError(f"bsuite ids need bsuite and shimmy: pip install -e '.[bsuite]' ({error})") from None
    return BSuiteCompatibilityV0(MemoryChain(memory_length=memory_length, num_bits=num_bits))


for _length in MEMORY_LENGTHS:
    gym.register(f"bsuite/memory_len-L{_length}-v0", make_memory_chain, kwargs=dict(memory_length=_length))
for _bits in MEMORY_BITS:
    gym.register(f"bsuite/memory_size-B{_bits}-v0", make_memory_chain, kwargs=dict(memory_length=2, num_bits=_bits))
