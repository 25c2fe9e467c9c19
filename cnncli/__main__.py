"""`python -m cnncli` runs the same Click CLI as the `cnn` script (for environments where the
script is not on PATH); nothing else lives here."""

from cnncli.cli import main

if __name__ == "__main__":
    main()
