"""Families of ``routers.csv`` rows that every layer names (no torch here, so the reports may
use them too)."""

# routers that see only the image and can be deployed, in the order tables and figures list them
DEPLOYABLE_FAMILIES = ("cascade", "learned", "dispatcher")
