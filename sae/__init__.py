"""emosae, producing side: models and hook points, batching, harvesting, SAEs and their training."""

__version__ = "0.1.0"
