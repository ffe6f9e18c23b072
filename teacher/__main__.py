"""`python -m teacher …`, the form torchrun launches: `torchrun --nproc-per-node 8 -m teacher train …`."""
import sys

from teacher.cli import main

sys.exit(main())
