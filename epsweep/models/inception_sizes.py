"""The input sizes Inception-v3 takes. No JAX here: the command line checks them before it
imports JAX (an argument error must not wait for it)."""

MIN_INPUT_SIZE = 75
"""Smallest height/width the main path accepts (as torchvision)."""

AUX_MIN_INPUT_SIZE = 299
"""Smallest height/width for which the auxiliary classifier can run (its 5x5 conv needs a
17x17 Mixed_6e map); PyTorch fails below it too."""
