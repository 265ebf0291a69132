"""hierarcaps-gen: build HierarCaps-style caption hierarchies with LLMs, offline or on GPU nodes."""

__version__ = "0.1.0"
