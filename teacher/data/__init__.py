"""Line datasets: synthetic surfaces with planted defects, and importers for MVTec AD, VisA and plain folders.

The format itself (manifest.jsonl, Record, load_dataset) lives in runtime/contracts/dataset.py so the edge can read it.
"""
