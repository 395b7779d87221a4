"""Jobs: the command-line interface. One module per subcommand; ``cli.main`` is the entry point."""
