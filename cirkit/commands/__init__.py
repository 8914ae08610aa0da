"""One module per command group; cirkit.cli assembles them."""
