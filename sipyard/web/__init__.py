"""The status page, its JSON API and ``/metrics`` on ``[web] listen``.

Modules (imports go down this list only; this file imports none of them, so
:mod:`sipyard.metrics` can use :mod:`.http` without pulling the page in):
  ``server`` -- routes: the page, ``/api/*``, ``/metrics``, the write actions;
  ``history`` -- the per-minute ring of samples behind the 24 h chart;
  ``access`` -- who may read and who may act (loopback, token, cookie, Host);
  ``http`` -- a small HTTP/1.1 server on ``asyncio.start_server`` with hard limits.
Static files (``index.html``, ``app.js``, ``style.css``) are package data in ``static/``.
"""
