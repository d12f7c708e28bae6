"""How well a detector does: metrics, disentanglement, figures and the report."""
