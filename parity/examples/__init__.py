"""Example candidates for ``--candidate module:...`` (README, "Candidates")."""
