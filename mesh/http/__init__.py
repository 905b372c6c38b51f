"""The shared L7 engine: pure routing and policy cores, thin trio shells."""
