"""sipyard: a small SIP registrar, redirect server and PBX control plane."""

__version__ = "0.1.0"
