"""The line-side daemon's internals (`lineside run`): ingress, queues, judging, the teacher cascade, publishing,
the journal, control and config. Only the daemon and the tools that drive it import these."""
