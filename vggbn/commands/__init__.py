"""The `vggbn` command's subcommands, one module each; `vggbn.cli` parses the command line and calls them."""
