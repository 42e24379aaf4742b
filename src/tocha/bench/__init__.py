"""`tocha bench`: the tutorial loop, a raw loop, tocha and Lightning on the same workload, side by side."""
