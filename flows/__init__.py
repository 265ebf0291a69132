"""Prefect flows: thin wrappers that schedule the stages in hiercaps_gen (which never import Prefect)."""
