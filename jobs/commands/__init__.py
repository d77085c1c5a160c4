"""One module per `maskdex` command group; each adds its subparsers and runs its command."""
