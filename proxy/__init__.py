"""The per-node L4 proxy: service table, userspace proxy, nftables mode."""
