"""Console entry points: thin Hydra apps over the package."""
