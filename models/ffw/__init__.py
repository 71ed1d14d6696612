"""Feed-forward layer families: one ``<family>_config.py`` (torch-free config
and FLOP/parameter formulas) beside one ``<family>.py`` (the nn.Module)."""
