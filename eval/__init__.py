"""wsl.eval: numbers and pictures — generated-network evaluation, LMC, merging, probe reports."""
