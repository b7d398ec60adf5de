"""worker: Celery entry point, thin tasks and the per-process model runtime."""
