"""sipyard: a small SIP registrar, redirect server and PBX control plane."""

from __future__ import annotations

__version__ = "0.1.0"


def core_kind() -> str:
    """``"compiled"`` when the SIP core runs as mypyc extension modules, else ``"pure Python"``.

    Why it looks at ``sipyard.sip.message``: the core is compiled as a whole or not at all
    (setup.py, scripts/build_core.py), and a stale build is dropped at import of
    ``sipyard.sip``; so the loader of one hot module after that import tells the truth about
    what is running, which a flag written at build time would not.
    """
    from importlib.machinery import ExtensionFileLoader

    from .sip import message

    compiled = isinstance(getattr(message, "__loader__", None), ExtensionFileLoader)
    return "compiled" if compiled else "pure Python"


def version_line() -> str:
    """What ``sipyard --version`` prints: ``sipyard 0.1.0 (core: compiled)``."""
    return f"sipyard {__version__} (core: {core_kind()})"
