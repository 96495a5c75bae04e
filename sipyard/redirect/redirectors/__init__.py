"""The built-in redirectors, one module each (see ``sipyard.redirect.loader.BUILTIN``).

Modules starting with ``_`` hold machinery shared by several of them (rule compilation,
the dialog-event search used by the pick-up and join features).
"""
