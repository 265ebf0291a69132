"""Prefect flows: thin wrappers that schedule the stages in hiercaps_gen (which never import Prefect)."""

import os

# Prefect's ephemeral server phones home unless told not to (and logs errors where it cannot).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
