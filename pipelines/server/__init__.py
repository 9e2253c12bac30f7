"""``atlas serve``: one run's pages and the questions it answers, over HTTP, safely.

One ASGI app (:func:`~pipelines.server.app.create_app`, FastAPI) serves the viewer's files and the
compute endpoints; the same app runs on uvicorn on this machine (:mod:`pipelines.server.runner`)
and under Ray Serve on a cluster (:mod:`pipelines.server.ray_serve`, the package's one module that
imports Ray). Which files a page may read: :mod:`~pipelines.server.files`; the checks on every
request (host, origin, token, body size, security headers): :mod:`~pipelines.server.guards`;
uploads: :mod:`~pipelines.server.uploads`; the compute queue: :mod:`~pipelines.server.jobs`; the
backend that answers (the Python API over a run, or a test's fake):
:mod:`~pipelines.server.backend`; every limit: :class:`~pipelines.server.settings.ServerSettings`.
"""
