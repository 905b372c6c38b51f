"""Cluster DNS per the Kubernetes DNS specification."""
