"""What peers and stages agree on: the wire protocol, verdicts, artifact manifests and their signatures, the
feature spec and the dataset manifest. teacher/ and distill/ import these; nothing here imports the daemon,
the commands or the tools."""
