"""The conditional diffusion generator: its attributes, network, DP training and sampling."""
