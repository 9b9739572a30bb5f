"""wsl.models: learnable things that read or write weights — encoders, generators, augmentations."""
