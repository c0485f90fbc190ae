"""Mapping Distortion based Protection (MDP, AugMDP): Li et al., ICASSP 2021 (ALGORITHMS.md §2)."""
