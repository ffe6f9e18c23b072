"""Hot paths around the network: frame preprocessing, memory-bank kNN scoring, anomaly-map
post-processing. Call them through ``kernels.dispatch``; see kernels/README.md."""
