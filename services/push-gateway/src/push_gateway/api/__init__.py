"""HTTP surface: the SSE hand-off protocol and the FastAPI routes for everything else."""
