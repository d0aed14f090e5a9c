"""meshgate: a federated Arrow Flight SQL gateway over domain-owned data products."""

__version__ = "0.1.0"
