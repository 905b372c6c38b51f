"""mesh: a service mesh and networking data plane."""
