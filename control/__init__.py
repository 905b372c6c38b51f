"""The control plane: store, sources, controllers, translators, config stream."""
