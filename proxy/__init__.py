"""partner-proxy: an Envoy-style sidecar for partner APIs."""

__version__ = "0.1.0"
