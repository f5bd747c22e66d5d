"""`python -m unetr_cli` runs the same CLI as the `unetr` console script."""

from unetr_cli.cli import main

if __name__ == "__main__":
    main()
