"""Request handlers: one small class per kind of request, over typed parts.

Each handler receives the parts it uses and a :class:`~sipyard.handlers.base.Responder`
(the app implements it); none imports the app. ``app.py`` puts their
``handle`` methods in its dispatch table.
"""
