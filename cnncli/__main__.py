"""`python -m cnncli` runs the same Click CLI as the `cnn` script; nothing else lives here."""

from cnncli.cli import main

if __name__ == "__main__":
    main()
