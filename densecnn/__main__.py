"""``python -m densecnn`` / ``densecnn``: the LightningCLI (fit, validate, test, predict), plus
``summary <backbone>`` (layer table, parameters, multiply-adds; see ``densecnn.summary``) and ``export`` (a
checkpoint as ONNX or an ExportedProgram, verified against PyTorch; see ``tasks.export``) and ``explain``
(pictures of what a checkpoint looks at; see ``tasks.explain``)."""
import sys


def main() -> None:
    """Entry point of ``python -m densecnn`` and the ``densecnn`` script: ``summary``, ``export`` and
    ``explain`` go to their own parsers, every other subcommand (fit, validate, test, predict) to the LightningCLI.
    """
    if len(sys.argv) > 1 and sys.argv[1] == "summary":  # plain PyTorch: no Lightning needed
        from densecnn.summary import main as summary_main

        sys.exit(summary_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "export":
        from tasks.export import run as export_run

        sys.exit(export_run(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "explain":
        from tasks.explain import run as explain_run

        sys.exit(explain_run(sys.argv[2:]))

    from tasks.cli import run

    sys.exit(run())


if __name__ == "__main__":
    main()
