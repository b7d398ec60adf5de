"""jobs: what the API and the worker share (settings, database models, the job store, task names).

Imports neither Flask views, Celery tasks nor torch.
"""
