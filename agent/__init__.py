"""flow-agent: a self-hosted runtime agent for flow/v1 flows."""

__version__ = "0.1.0"
