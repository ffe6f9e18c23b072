"""The separately asked-for benchmarks (`lineside bench daemon|edge|quality|scale|soak`), one file each."""
