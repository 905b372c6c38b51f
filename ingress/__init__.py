"""The L7 ingress gateway."""
