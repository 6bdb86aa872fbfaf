"""Common: the neutral lowest layer (atomic file I/O, the numpy table types), no torch."""
