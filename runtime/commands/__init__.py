"""CLI subcommands: thin wrappers that build a config and call one library function."""
