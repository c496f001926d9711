"""Tools to see what training did: plots (and, later, collapse/token/agreement analyses)."""
