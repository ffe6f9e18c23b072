"""The defaults of `teacher bank` (teacher/bank.py builds the bank, teacher/commands/bank.py takes its flags): written
once, here, in a module without torch, so the command's --help states them without importing the bank."""
from __future__ import annotations

BUDGET_FRACTION = 0.1  # PatchCore keeps 1-10 % of the patch vectors
BUDGET_MIN, BUDGET_MAX = 1024, 16384  # default budget = clip(10 % of N, 1024, 16384)
MERGES = ("features", "coresets")  # how rank 0 merges the ranks' patch vectors under torchrun (fit_bank)
DEFAULT_MERGE = "features"  # the one-process bank
DEFAULT_BATCH_SIZE = 8  # images embedded per teacher forward pass
