"""Federated governance: who is asking (principals) and, later, what they may see."""

from policies.principal import ANONYMOUS, Principal

__all__ = ["ANONYMOUS", "Principal"]
