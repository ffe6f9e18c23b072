"""`teacher <name>` is defined in ``teacher/commands/<name>.py`` (``train-vae`` in ``train_vae.py``, ``eval`` in
``eval.py``, ``baselines`` in ``baselines.py``): the flags (``configure(parser)``) and the thin call into the
library (``run(args) -> int``), imported only when that command runs (runtime/cli/dispatch.py). The library
modules of teacher/ carry no CLI code.
"""
