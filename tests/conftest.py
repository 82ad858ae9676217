"""Shared test settings."""

import torch

# Tests run many small ops; on a 2-core machine shared with other work, torch's default thread pool
# oversubscribes the cores and some steps get an order of magnitude slower. One thread is fast and predictable.
torch.set_num_threads(1)
