"""NetworkPolicy (networking.k8s.io/v1): selectors, rules, and the compiled form the dataplane
asks for a connection's verdict. Pure: no I/O, no clock."""
