"""Attribute-level anonymization with the DP generator: the intensity knob, the privatized attributes and
what each image costs."""
