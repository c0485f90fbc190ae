"""Classifiers for the training service: architectures, data, and the (DP-)SGD loop. Plain modules:
no gRPC or protobuf types in here."""
