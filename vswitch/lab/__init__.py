"""Tools for labs on one host: a local etcd, a multi-node cluster started with one command, and
a node built from kernel parts only (as flannel builds one) to compare and interoperate with."""
