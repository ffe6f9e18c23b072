"""The `distill` commands: `distill <name>` is defined in ``distill/commands/<name>.py`` as ``configure(parser)``
(its flags) and ``run(args) -> int`` (the thin call into the library, and its ``--json`` line); the table is
distill/cli.py's, the dispatcher runtime/cli/dispatch.py."""
