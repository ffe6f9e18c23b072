"""lineside's edge runtime, torch-free (`pip install lineside[runtime]`). Where a module lives says its role:

    contracts/   what peers and stages agree on: wire protocol, verdicts, manifests, feature spec, dataset, formats
    daemon/      the internals of `lineside run` (ingress, queues, judge, cascade, publisher, journal, control, config)
    cli/         one module per `lineside <command>`, and the dispatcher every console script shares
    tools/       `lineside bench` and `lineside demo`: they drive teacher/ and distill/ as subprocesses
    (top level)  the libraries the edge and the toolchain share: scoring, bank_index, engine + backends/, metrics,
                 quality, report, client, curve, telemetry, progress, timing, sdnotify

docs/ARCHITECTURE.md maps every command to its file; tests/test_layering.py checks the layer order.
"""
