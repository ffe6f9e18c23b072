"""`lineside bench` and `lineside demo`: they drive teacher/ and distill/ as subprocesses; the edge never
imports them."""
