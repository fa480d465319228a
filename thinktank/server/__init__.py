"""thinktank over HTTP: an ASGI app (FastAPI) and what it is built from.

``pip install "thinktank[server]"`` brings FastAPI and uvicorn; ``import thinktank``
never imports this package. :func:`thinktank.server.app.create_app` returns the ASGI
app for any ASGI server; ``thinktank serve`` runs it with uvicorn.
"""
