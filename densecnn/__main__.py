"""``python -m densecnn`` / ``densecnn``: the LightningCLI (fit, validate, test, predict)."""


def main() -> None:
    from tasks.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
