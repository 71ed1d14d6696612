"""One module per ``isoflop`` subcommand. Each defines ``add_arguments(parser)``
and ``run(args) -> int`` and imports heavy libraries only inside ``run``."""
