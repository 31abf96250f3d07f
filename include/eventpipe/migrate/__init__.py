"""Moving the pipeline's state to another cluster: what must be identical on both sides, and the check."""
