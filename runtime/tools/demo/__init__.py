"""The demo's machinery (`lineside demo`, runtime/cli/demo.py): its recipes (settings.py), the steps it runs as
commands (steps.py, pipeline.py), the camera stream against the live daemon (stream.py), what it reads off the
results (analysis.py) and its report (report.py). No torch: the teacher and distill stacks run only as commands."""
