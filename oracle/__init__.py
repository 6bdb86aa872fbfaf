"""Oracle: tables, label-to-model policies under a sacrifice budget, overlap, metrics (numpy only)."""
