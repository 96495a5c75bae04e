"""The sans-IO SIP core: no sockets, no clock reads (DESIGN §2).

`scripts/build_core.py` may compile these modules with mypyc (stale builds are
dropped by ``sipyard/__init__.py`` before anything is imported).
"""
