"""Example candidates for ``--candidate module:...`` (docs/candidates.md)."""
