"""Subnet leases in etcd: raw keys (registry), lease policy (manager) and subnet.env."""
